//! Running an established, authenticated connection ("link") to one peer.
//!
//! Per link: one writer task per class drains that class's send queue into one unidirectional
//! stream, coalescing everything queued into ≈256 KiB writes; one task accepts the peer's
//! unidirectional streams and one reader task per stream decodes frames into its class's inbound
//! queue. The reader awaits when that queue is full, which stops reading the stream,
//! which (through QUIC flow control) stops the peer's writer, which fills the peer's send queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tracing::Instrument;

use crate::frame::{BatchEncoder, FrameDecoder};
use crate::inbox::InboundSender;
use crate::peer::{Peer, Shared};
use crate::stats::bump;
use crate::wire::{Class, CloseCode};
use crate::Inbound;

/// Frames a writer takes from its queue per wake-up.
const BATCH_FRAMES_MAX: usize = 1024;

/// Largest chunk a reader asks its stream for.
const READ_CHUNK_BYTES_MAX: usize = 64 * 1024;

/// What the transport's tasks share besides [`Shared`].
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub shared: Arc<Shared>,
    /// One queue per class, by [`Class::slot`].
    pub inbound: [InboundSender; 2],
}

/// Runs the link until the connection closes.
pub(crate) async fn run(ctx: Ctx, peer: Arc<Peer>, conn: quinn::Connection, link_id: u64) {
    tracing::info!(peer = peer.index, remote = %conn.remote_address(), "transport.link: up");
    for class in Class::ALL {
        tokio::spawn(
            write_class(ctx.shared.clone(), peer.clone(), conn.clone(), class).instrument(
                tracing::debug_span!("transport.write", peer = peer.index, ?class),
            ),
        );
    }
    tokio::spawn(
        accept_streams(ctx.clone(), peer.index, conn.clone())
            .instrument(tracing::debug_span!("transport.read", peer = peer.index)),
    );
    let reason = conn.closed().await;
    ctx.shared.uninstall(&peer, link_id);
    tracing::info!(peer = peer.index, %reason, "transport.link: down");
}

/// Drains one class's send queue into one stream until the connection or the stream fails.
/// Frames taken from the queue but not yet written when the connection fails are lost: the
/// transport delivers at most once, in order, per (peer, class) and connection.
async fn write_class(shared: Arc<Shared>, peer: Arc<Peer>, conn: quinn::Connection, class: Class) {
    // A writer of the previous connection may still hold the queue until it notices its end.
    let mut rx = tokio::select! {
        rx = peer.queue(class).rx.lock() => rx,
        _ = conn.closed() => return,
    };
    let mut stream = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "cannot open stream");
            return;
        }
    };
    if stream.set_priority(class.stream_priority()).is_err() {
        return;
    }
    let counters = shared.counters.class(class);
    let mut encoder = BatchEncoder::default();
    // The class tag goes out with the first batch.
    let mut header = Some(Bytes::copy_from_slice(&[class.tag()]));
    let mut batch: Vec<Bytes> = Vec::with_capacity(BATCH_FRAMES_MAX);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH_FRAMES_MAX) => n,
            _ = conn.closed() => return,
        };
        if received == 0 {
            return; // queue closed: the transport is gone
        }
        let mut frames = 0u64;
        let mut payload = 0u64;
        for frame in batch.drain(..) {
            frames += 1;
            payload += frame.len() as u64;
            encoder.push(frame);
            if encoder.is_full()
                && write_chunks(&mut stream, header.take(), encoder.take())
                    .await
                    .is_err()
            {
                return;
            }
        }
        if write_chunks(&mut stream, header.take(), encoder.take())
            .await
            .is_err()
        {
            return;
        }
        bump(&counters.frames_sent, frames);
        bump(&counters.bytes_sent, payload);
    }
}

async fn write_chunks(
    stream: &mut quinn::SendStream,
    header: Option<Bytes>,
    mut chunks: Vec<Bytes>,
) -> Result<(), quinn::WriteError> {
    if let Some(h) = header {
        chunks.insert(0, h);
    }
    if chunks.is_empty() {
        return Ok(());
    }
    stream.write_all_chunks(&mut chunks).await.inspect_err(|e| {
        tracing::debug!(error = %e, "write failed; connection is going away");
    })
}

/// Accepts the peer's unidirectional streams: at most one per class per connection.
async fn accept_streams(ctx: Ctx, from: u16, conn: quinn::Connection) {
    let seen: Arc<[AtomicBool; 2]> = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    while let Ok(stream) = conn.accept_uni().await {
        tokio::spawn(
            read_stream(ctx.clone(), from, conn.clone(), stream, seen.clone()).in_current_span(),
        );
    }
}

/// Reads one class stream of the peer and delivers its frames, in order.
async fn read_stream(
    ctx: Ctx,
    from: u16,
    conn: quinn::Connection,
    mut stream: quinn::RecvStream,
    seen: Arc<[AtomicBool; 2]>,
) {
    let mut tag = [0u8; 1];
    if stream.read_exact(&mut tag).await.is_err() {
        return;
    }
    let Some(class) = Class::from_tag(tag[0]) else {
        tracing::warn!(
            peer = from,
            tag = tag[0],
            "unknown stream class tag; closing connection"
        );
        bump(&ctx.shared.counters.frame_errors, 1);
        CloseCode::Protocol.close(&conn);
        return;
    };
    if seen[class.slot()].swap(true, Ordering::Relaxed) {
        tracing::warn!(
            peer = from,
            ?class,
            "second stream of one class; closing connection"
        );
        bump(&ctx.shared.counters.frame_errors, 1);
        CloseCode::Protocol.close(&conn);
        return;
    }
    let counters = ctx.shared.counters.class(class);
    let mut decoder = FrameDecoder::new(ctx.shared.max_frame_bytes);
    loop {
        let chunk = match stream.read_chunk(READ_CHUNK_BYTES_MAX, true).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) | Err(_) => {
                if decoder.is_mid_frame() {
                    tracing::warn!(peer = from, ?class, "stream ended inside a frame");
                    bump(&ctx.shared.counters.frame_errors, 1);
                }
                return;
            }
        };
        decoder.push(&chunk.bytes);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    bump(&counters.frames_received, 1);
                    bump(&counters.bytes_received, frame.len() as u64);
                    let inbound = Inbound { from, class, frame };
                    if ctx.inbound[class.slot()].send(inbound).await.is_err() {
                        return; // the node dropped its receiver
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(peer = from, ?class, error = %e, "closing connection");
                    bump(&ctx.shared.counters.frame_errors, 1);
                    CloseCode::FrameTooLarge.close(&conn);
                    return;
                }
            }
        }
    }
}
