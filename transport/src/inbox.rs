//! Received frames, one queue per [`Class`]: a frame on the consensus stream never waits behind
//! bulk frames on the receiving side either (the node reads each queue on its own thread), and
//! each queue is bounded in bytes as well as in frames, so a peer sending frames of the largest
//! size cannot make a queue hold `frames × max_frame_bytes`.
//!
//! A reader takes the frame's bytes from the queue's byte budget before queuing it (waiting while
//! the budget is spent, which stops reading the stream and, through QUIC flow control, the
//! peer); receiving the frame gives them back. A frame larger than the whole budget takes the
//! whole budget.

use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::sync::Semaphore;

use crate::{Class, Inbound};

/// Budget units a frame of `len` bytes takes from a budget of `budget_bytes` (at most
/// `u32::MAX`, checked with the configuration).
fn units(len: usize, budget_bytes: usize) -> u32 {
    u32::try_from(len.min(budget_bytes)).unwrap_or(u32::MAX)
}

/// The receiving end of one class's queue.
#[derive(Debug)]
pub struct InboundQueue {
    rx: mpsc::Receiver<Inbound>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

/// The sending end, held by the stream readers.
#[derive(Debug, Clone)]
pub(crate) struct InboundSender {
    tx: mpsc::Sender<Inbound>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

/// A queue of at most `frames` frames and `bytes` bytes.
pub(crate) fn queue(frames: usize, bytes: usize) -> (InboundSender, InboundQueue) {
    let (tx, rx) = mpsc::channel(frames);
    let budget = Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS)));
    (
        InboundSender {
            tx,
            budget: Arc::clone(&budget),
            budget_bytes: bytes,
        },
        InboundQueue {
            rx,
            budget,
            budget_bytes: bytes,
        },
    )
}

impl InboundSender {
    /// Queues `inbound`, waiting for room (frames and bytes). `Err` once the receiver is gone.
    pub(crate) async fn send(&self, inbound: Inbound) -> Result<(), ()> {
        let n = units(inbound.frame.len(), self.budget_bytes);
        // Closed only when the receiver is dropped.
        self.budget.acquire_many(n).await.map_err(|_| ())?.forget();
        if self.tx.send(inbound).await.is_err() {
            self.budget.add_permits(n as usize);
            return Err(());
        }
        Ok(())
    }
}

impl InboundQueue {
    fn release(&self, inbound: &Inbound) {
        self.budget
            .add_permits(units(inbound.frame.len(), self.budget_bytes) as usize);
    }

    /// The next frame, blocking the thread (not for use inside an async context). `None` once
    /// the transport has shut down.
    pub fn blocking_recv(&mut self) -> Option<Inbound> {
        let inbound = self.rx.blocking_recv()?;
        self.release(&inbound);
        Some(inbound)
    }

    /// The next frame. `None` once the transport has shut down.
    pub async fn recv(&mut self) -> Option<Inbound> {
        let inbound = self.rx.recv().await?;
        self.release(&inbound);
        Some(inbound)
    }

    /// The next frame if one is queued.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`], or [`TryRecvError::Disconnected`] once the transport has shut
    /// down.
    pub fn try_recv(&mut self) -> Result<Inbound, TryRecvError> {
        let inbound = self.rx.try_recv()?;
        self.release(&inbound);
        Ok(inbound)
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// No frame queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Bytes queued now (a frame above the budget counted as the budget).
    pub fn queued_bytes(&self) -> usize {
        self.budget_bytes
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(self.budget.available_permits())
    }
}

impl Drop for InboundQueue {
    fn drop(&mut self) {
        // Readers waiting for budget give up.
        self.budget.close();
    }
}

/// Every frame received from peers: one queue per class.
#[derive(Debug)]
pub struct Inbox {
    /// Frames of the consensus streams.
    pub consensus: InboundQueue,
    /// Frames of the bulk streams.
    pub bulk: InboundQueue,
}

impl Inbox {
    /// The queue of `class`.
    pub fn class(&mut self, class: Class) -> &mut InboundQueue {
        match class {
            Class::Consensus => &mut self.consensus,
            Class::Bulk => &mut self.bulk,
        }
    }

    /// The next queued frame, consensus before bulk.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when neither queue holds a frame, [`TryRecvError::Disconnected`]
    /// once both are closed and empty.
    pub fn try_recv(&mut self) -> Result<Inbound, TryRecvError> {
        match self.consensus.try_recv() {
            Ok(inbound) => Ok(inbound),
            Err(first) => match (first, self.bulk.try_recv()) {
                (_, Ok(inbound)) => Ok(inbound),
                (TryRecvError::Disconnected, Err(TryRecvError::Disconnected)) => {
                    Err(TryRecvError::Disconnected)
                }
                _ => Err(TryRecvError::Empty),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(class: Class, len: usize) -> Inbound {
        Inbound {
            from: 1,
            class,
            frame: bytes::Bytes::from(vec![7u8; len]),
        }
    }

    /// Bytes bound a queue as frames do: a reader waits once the bytes queued reach the budget,
    /// and receiving frees them; a frame over the whole budget still passes, alone.
    #[test]
    fn queued_bytes_are_bounded_and_freed_by_receiving() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, mut rx) = queue(100, 1000);
        rt.block_on(async {
            tx.send(frame(Class::Bulk, 600)).await.unwrap();
            assert_eq!(rx.queued_bytes(), 600);
            // 600 + 600 > 1000: waits.
            let blocked = tokio::time::timeout(
                std::time::Duration::from_millis(50),
                tx.send(frame(Class::Bulk, 600)),
            )
            .await;
            assert!(
                blocked.is_err(),
                "a second frame past the budget was queued"
            );
            assert_eq!(rx.try_recv().unwrap().frame.len(), 600);
            assert_eq!(rx.queued_bytes(), 0);
            tx.send(frame(Class::Bulk, 600)).await.unwrap();
            assert_eq!(rx.recv().await.unwrap().frame.len(), 600);
            // Larger than the budget: takes all of it.
            tx.send(frame(Class::Bulk, 5000)).await.unwrap();
            assert_eq!(rx.queued_bytes(), 1000);
            assert_eq!(rx.try_recv().unwrap().frame.len(), 5000);
            assert_eq!(rx.queued_bytes(), 0);
            // A reader waiting for budget gives up when the queue is dropped.
            tx.send(frame(Class::Bulk, 1000)).await.unwrap();
            let waiting = tokio::spawn({
                let tx = tx.clone();
                async move { tx.send(frame(Class::Bulk, 10)).await }
            });
            tokio::task::yield_now().await;
            drop(rx);
            assert_eq!(waiting.await.unwrap(), Err(()));
        });
    }

    #[test]
    fn the_inbox_serves_consensus_frames_first() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (ctx, consensus) = queue(10, 1 << 20);
        let (btx, bulk) = queue(10, 1 << 20);
        let mut inbox = Inbox { consensus, bulk };
        rt.block_on(async {
            btx.send(frame(Class::Bulk, 3)).await.unwrap();
            ctx.send(frame(Class::Consensus, 1)).await.unwrap();
        });
        assert_eq!(inbox.try_recv().unwrap().class, Class::Consensus);
        assert_eq!(inbox.try_recv().unwrap().class, Class::Bulk);
        assert_eq!(inbox.try_recv(), Err(TryRecvError::Empty));
        drop((ctx, btx));
        assert_eq!(inbox.try_recv(), Err(TryRecvError::Disconnected));
        assert_eq!(inbox.class(Class::Bulk).len(), 0);
    }
}
