//! Group commit: many actors ask for durability, few fsyncs happen.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use tokio::sync::Mutex;

/// Counts writes and flushes so that a flush is shared by every caller whose writes it
/// covers.
///
/// A caller notes the write generation it needs (`written` when it asks). If a flush
/// that *started* after that generation has completed, it is done. Otherwise it waits
/// for its turn (the flush running now may have started before its write), checks
/// again, and only then flushes itself, for everyone who wrote before that flush began.
/// With N concurrent callers this costs one or two fsyncs, not N.
#[derive(Debug, Default)]
pub(crate) struct FlushGroup {
    /// Writes applied to sled so far.
    written: AtomicU64,
    /// Writes covered by a completed flush.
    durable: AtomicU64,
    /// Flushes done.
    flushes: AtomicU64,
    /// One flush at a time; tokio's mutex is fair, so waiters queue in order.
    turn: Mutex<()>,
}

impl FlushGroup {
    /// Records a write; call after sled applied it.
    pub(crate) fn wrote(&self) {
        self.written.fetch_add(1, SeqCst);
    }

    /// Flushes performed so far.
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(SeqCst)
    }

    /// Returns once every write recorded before the call is covered by a completed
    /// `flush`, calling `flush` only if no one else did.
    pub(crate) async fn run<F, Fut, E>(&self, flush: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let needed = self.written.load(SeqCst);
        if self.durable.load(SeqCst) >= needed {
            return Ok(());
        }
        let _turn = self.turn.lock().await;
        if self.durable.load(SeqCst) >= needed {
            return Ok(());
        }
        // Read before the flush starts: everything counted here is covered by it.
        let covered = self.written.load(SeqCst);
        self.flushes.fetch_add(1, SeqCst);
        flush().await?;
        self.durable.fetch_max(covered, SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_a_flush() {
        let group = Arc::new(FlushGroup::default());
        // Nothing written: nothing to flush.
        group.run(|| async { Ok::<_, ()>(()) }).await.unwrap();
        assert_eq!(group.flushes(), 0);

        for _ in 0..50 {
            group.wrote();
        }
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let group = group.clone();
                tokio::spawn(async move {
                    group
                        .run(|| async {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            Ok::<_, ()>(())
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(group.flushes(), 1);

        // A write during a flush is not covered by it: its caller gets a second one.
        group.wrote();
        let g = group.clone();
        let first = tokio::spawn(async move {
            g.run(|| async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, ()>(())
            })
            .await
        });
        tokio::task::yield_now().await;
        group.wrote();
        group.run(|| async { Ok::<_, ()>(()) }).await.unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(group.flushes(), 3);
    }

    #[tokio::test]
    async fn a_failed_flush_covers_nothing() {
        let group = FlushGroup::default();
        group.wrote();
        assert_eq!(group.run(|| async { Err("disk") }).await, Err("disk"));
        group.run(|| async { Ok::<_, &str>(()) }).await.unwrap();
        assert_eq!(group.flushes(), 2);
    }
}
