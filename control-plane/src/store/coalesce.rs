//! Request coalescing: concurrent reads of one kind share one statement.
//!
//! Under load a Postgres round trip costs more than the row it fetches: both processes
//! wake up, the protocol is parsed and an executor started, per statement. A
//! [`Coalescer`] queues each read and runs at most `max_running` batch tasks; each takes
//! everything queued (up to [`MAX_BATCH`]) and answers it with one statement.
//!
//! Freshness is unchanged. A read queued while a batch runs is not added to it: it goes
//! into a later batch, whose statement starts after the read was asked. So every answer
//! reflects at least every write committed before the read arrived, as a statement of
//! its own would. With nothing running, a read starts a batch (of one) at once.
//!
//! Failure. Batches run in their own tasks, so a caller that goes away (its client hung
//! up) strands nobody. When a batch fails, or its task panics, each of its reads is told
//! to run alone ([`Batched::RunAlone`]) and so gets its own error, or its answer.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::StoreError;

/// Reads answered by one statement at most.
pub const MAX_BATCH: usize = 64;

/// The batch statement: answers for `keys`, one per key and in their order.
type BatchFn<K, V> = dyn Fn(Vec<K>) -> BoxFuture<'static, Result<Vec<V>, StoreError>> + Send + Sync;

/// What a queued read gets back.
#[derive(Debug)]
pub enum Batched<V> {
    Answer(V),
    /// Its batch failed: run the read alone.
    RunAlone,
}

pub struct Coalescer<K, V> {
    shared: Arc<Shared<K, V>>,
}

struct Shared<K, V> {
    run: Box<BatchFn<K, V>>,
    max_running: usize,
    state: Mutex<State<K, V>>,
}

struct State<K, V> {
    queue: Vec<(K, oneshot::Sender<V>)>,
    /// Batch tasks alive; at most `max_running`.
    running: usize,
}

impl<K, V> std::fmt::Debug for Coalescer<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("Coalescer")
            .field("queued", &state.queue.len())
            .field("running", &state.running)
            .finish()
    }
}

impl<K: Send + 'static, V: Send + 'static> Coalescer<K, V> {
    /// A coalescer whose batches run `run`, at most `max_running` at a time.
    pub fn new<F, Fut>(max_running: usize, run: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<V>, StoreError>> + Send + 'static,
    {
        Coalescer {
            shared: Arc::new(Shared {
                run: Box::new(move |keys| Box::pin(run(keys))),
                max_running: max_running.max(1),
                state: Mutex::new(State {
                    queue: Vec::new(),
                    running: 0,
                }),
            }),
        }
    }

    /// Queues a read of `key` and waits for its batch. Must be called on a Tokio runtime.
    pub async fn read(&self, key: K) -> Batched<V> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.shared.state.lock();
            state.queue.push((key, tx));
            let start = state.running < self.shared.max_running;
            if start {
                state.running += 1;
            }
            start
        };
        if start {
            tokio::spawn(drain(Arc::clone(&self.shared)));
        }
        match rx.await {
            Ok(v) => Batched::Answer(v),
            // The batch failed or its task panicked: the sender was dropped unanswered.
            Err(_) => Batched::RunAlone,
        }
    }
}

/// A batch task: runs batches while reads are queued.
async fn drain<K, V>(shared: Arc<Shared<K, V>>) {
    // Gives up this task's place if it unwinds, and drops the queued reads' senders so
    // that they run alone rather than wait for a task that will never come.
    struct Running<'a, K, V>(&'a Shared<K, V>, bool);
    impl<K, V> Drop for Running<'_, K, V> {
        fn drop(&mut self) {
            if self.1 {
                let mut state = self.0.state.lock();
                state.running -= 1;
                state.queue.clear();
            }
        }
    }
    let mut running = Running(&shared, true);
    loop {
        let batch: Vec<(K, oneshot::Sender<V>)> = {
            let mut state = shared.state.lock();
            if state.queue.is_empty() {
                // Under the lock that queues reads: a read queued after this starts a task.
                state.running -= 1;
                running.1 = false;
                return;
            }
            let n = state.queue.len().min(MAX_BATCH);
            state.queue.drain(..n).collect()
        };
        let (keys, senders): (Vec<K>, Vec<oneshot::Sender<V>>) = batch.into_iter().unzip();
        let wanted = keys.len();
        match (shared.run)(keys).await {
            Ok(values) if values.len() == wanted => {
                for (tx, v) in senders.into_iter().zip(values) {
                    // The reader may have gone away; nothing to do then.
                    let _ = tx.send(v);
                }
            }
            Ok(values) => {
                tracing::error!(
                    wanted,
                    got = values.len(),
                    "a batch answered the wrong number of reads"
                );
            }
            Err(e) => {
                tracing::warn!("a batched read failed; its reads run alone: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn doubling(
        max_running: usize,
        statements: Arc<AtomicUsize>,
        largest: Arc<AtomicUsize>,
    ) -> Coalescer<u32, u32> {
        Coalescer::new(max_running, move |keys: Vec<u32>| {
            statements.fetch_add(1, Ordering::SeqCst);
            largest.fetch_max(keys.len(), Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(keys.into_iter().map(|k| k * 2).collect())
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_share_statements_and_each_gets_its_own_answer() {
        let statements = Arc::new(AtomicUsize::new(0));
        let largest = Arc::new(AtomicUsize::new(0));
        let c = Arc::new(doubling(1, statements.clone(), largest.clone()));
        let reads: Vec<_> = (0..200u32)
            .map(|k| {
                let c = Arc::clone(&c);
                tokio::spawn(async move { (k, c.read(k).await) })
            })
            .collect();
        for r in reads {
            match r.await.expect("read task") {
                (k, Batched::Answer(v)) => assert_eq!(v, k * 2),
                (k, Batched::RunAlone) => panic!("read {k} was not answered"),
            }
        }
        let statements = statements.load(Ordering::SeqCst);
        assert!(
            statements < 200,
            "{statements} statements for 200 concurrent reads"
        );
        assert!(largest.load(Ordering::SeqCst) <= MAX_BATCH);
        // Everything drained: the next read starts a batch of its own, and the batch task
        // ends once the queue is empty (it answers before it looks again).
        assert!(matches!(c.read(7).await, Batched::Answer(14)));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while c.shared.state.lock().running != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a batch task never ended"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn a_lone_read_runs_at_once() {
        let statements = Arc::new(AtomicUsize::new(0));
        let c = doubling(2, statements.clone(), Arc::default());
        assert!(matches!(c.read(3).await, Batched::Answer(6)));
        assert!(matches!(c.read(4).await, Batched::Answer(8)));
        assert_eq!(statements.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_read_queued_during_a_batch_waits_for_the_next_one() {
        // The first batch is held until the second read is queued: that read must not be
        // answered by a statement that started before it was asked.
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let started = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let seen = Arc::clone(&started);
        let c = Arc::new(Coalescer::new(1, move |keys: Vec<u32>| {
            seen.lock().push(keys.clone());
            let mut release = release_rx.clone();
            async move {
                let _ = release.wait_for(|r| *r).await;
                Ok(keys)
            }
        }));
        let first = tokio::spawn({
            let c = Arc::clone(&c);
            async move { c.read(1).await }
        });
        while started.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn({
            let c = Arc::clone(&c);
            async move { c.read(2).await }
        });
        while c.shared.state.lock().queue.is_empty() {
            tokio::task::yield_now().await;
        }
        release_tx.send(true).expect("release");
        assert!(matches!(
            first.await.expect("first read"),
            Batched::Answer(1)
        ));
        assert!(matches!(
            second.await.expect("second read"),
            Batched::Answer(2)
        ));
        assert_eq!(*started.lock(), vec![vec![1], vec![2]]);
    }

    #[tokio::test]
    async fn a_failed_or_panicking_batch_sends_its_reads_to_run_alone() {
        let c = Coalescer::new(1, |keys: Vec<u32>| async move {
            match keys[0] {
                0 => Err(StoreError::NotFound("broker")),
                1 => panic!("batch statement panicked"),
                _ => Ok(keys),
            }
        });
        assert!(matches!(c.read(0).await, Batched::RunAlone));
        assert!(matches!(c.read(1).await, Batched::RunAlone));
        // The panicked task gave its place back.
        assert!(matches!(c.read(5).await, Batched::Answer(5)));
    }
}
