//! Loopback throughput sanity check: validator 0 sends N frames of 512 bytes to validator 1
//! over one QUIC connection (consensus class); prints frames/s and MiB/s at the receiver.
//!
//! ```text
//! cargo run --release -p bpci-transport --example throughput -- [frames] [frame_bytes]
//! ```

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use bpci_transport::{
    public_key_from_seed, Class, PeerConfig, SendError, Transport, TransportConfig,
};
use bytes::Bytes;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let frames: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let frame_bytes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(512);

    let seeds = [[1u8; 32], [2u8; 32]];
    let sockets = [
        UdpSocket::bind("127.0.0.1:0")?,
        UdpSocket::bind("127.0.0.1:0")?,
    ];
    let peers: Vec<PeerConfig> = (0..2)
        .map(|i| {
            Ok(PeerConfig {
                index: i as u16,
                addr: sockets[i].local_addr()?,
                public_key: public_key_from_seed(&seeds[i]),
            })
        })
        .collect::<Result<_, std::io::Error>>()?;
    let [s0, s1] = sockets;
    let cfg = |i: usize| {
        let mut c = TransportConfig::new(i as u16, peers[i].addr, seeds[i], peers.clone());
        c.worker_threads = 1;
        c
    };
    let (t0, h0, _rx0) = Transport::start_with_socket(cfg(0), s0)?;
    let (t1, _h1, mut rx1) = Transport::start_with_socket(cfg(1), s1)?;
    while h0.connected_peers().is_empty() {
        std::thread::sleep(Duration::from_millis(5));
    }

    let receiver = std::thread::spawn(move || {
        let mut first: Option<Instant> = None;
        let mut got = 0u64;
        while got < frames {
            match rx1.consensus.blocking_recv() {
                Some(_) => {
                    first.get_or_insert_with(Instant::now);
                    got += 1;
                }
                None => break,
            }
        }
        (got, first, Instant::now())
    });

    let payload = Bytes::from(vec![0x5a; frame_bytes]);
    let start = Instant::now();
    let mut full = 0u64;
    for _ in 0..frames {
        loop {
            match h0.send(1, Class::Consensus, payload.clone()) {
                Ok(()) => break,
                Err(SendError::Full { .. }) => {
                    full += 1;
                    std::thread::yield_now();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let sent_in = start.elapsed();
    let (got, _first, end) = receiver.join().map_err(|_| "receiver panicked")?;
    let secs = (end - start).as_secs_f64();
    println!(
        "frames={got} frame_bytes={frame_bytes} elapsed={secs:.3}s frames_per_s={:.0} MiB_per_s={:.1} \
         (send loop {:.3}s, Full retries {full})",
        got as f64 / secs,
        got as f64 * frame_bytes as f64 / secs / (1024.0 * 1024.0),
        sent_in.as_secs_f64()
    );
    let stats = h0.stats();
    println!("sender stats: {stats:?}");
    t0.shutdown();
    t1.shutdown();
    Ok(())
}
