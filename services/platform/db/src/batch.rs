//! Group commit: writes that many tasks ask for at about the same time go to Postgres as one
//! statement, and each task waits for the commit that carries its own.
//!
//! Written one by one, each write is a transaction and a WAL flush of its own, and on the
//! development machine those flushes and round trips made Postgres the most expensive part of
//! the comment pipeline. A [`Batcher`] queues the writes and a single task writes whatever is
//! queued whenever it is free: one write waits for no one, and under load the queue fills
//! while the previous batch commits, so batches grow with the load and never wait on a timer.
//! Nothing changes for a caller: [`Batcher::submit`] returns only after the statement holding
//! its write committed. A batch that fails is written again one item at a time, so an item the
//! database refuses fails alone instead of taking the items beside it with it.
//!
//! In traces, a batch's write hangs under the span of the first item it carries (the span
//! current when that item was submitted); the other items' traces show only their wait.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// An item waiting for its batch, and where its outcome goes.
struct Queued<I, O, E> {
    item: I,
    outcome: oneshot::Sender<Result<O, Arc<E>>>,
    /// The submitter's span, for the trace of the write.
    span: tracing::Span,
}

/// Why a queued item has no outcome.
#[derive(Debug, thiserror::Error)]
pub enum BatchError<E: std::error::Error + 'static> {
    /// The batch holding the item failed as a whole; nothing of it was written.
    #[error("the batch failed: {0}")]
    Failed(#[source] Arc<E>),
    /// The writing task is gone (the process is shutting down).
    #[error("the batch writer stopped")]
    Stopped,
}

/// Writes items of type `I` in batches of at most `max` with one call of `apply`, which
/// returns one outcome `O` per item, in order. Cheap to clone.
pub struct Batcher<I, O, E> {
    queue: mpsc::Sender<Queued<I, O, E>>,
}

impl<I, O, E> Clone for Batcher<I, O, E> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

/// Hands each submitter its outcome. Should `apply` break its promise of one outcome per
/// item, the submitters left without one see [`BatchError::Stopped`].
fn answer<O, E>(outcomes: Vec<oneshot::Sender<Result<O, Arc<E>>>>, results: Vec<O>) {
    if outcomes.len() != results.len() {
        tracing::error!(
            message = "A batch returned the wrong number of outcomes.",
            items = outcomes.len(),
            outcomes = results.len()
        );
    }
    for (outcome, result) in outcomes.into_iter().zip(results) {
        // A submitter that stopped waiting no longer wants its outcome; what was written stays.
        let _ = outcome.send(Ok(result));
    }
}

impl<I, O, E> Batcher<I, O, E>
where
    I: Clone + Send + 'static,
    O: Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    /// Starts the writing task; it ends when the last clone of the batcher is dropped.
    pub fn spawn<F, Fut>(max: usize, apply: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<O>, E>> + Send,
    {
        let max = max.max(1);
        let (queue, mut queued) = mpsc::channel::<Queued<I, O, E>>(max);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            // Takes what is queued, up to `max`, waiting only while nothing is.
            while queued.recv_many(&mut batch, max).await > 0 {
                let span = batch[0].span.clone();
                let (items, outcomes): (Vec<I>, Vec<_>) =
                    batch.drain(..).map(|q| (q.item, q.outcome)).unzip();
                let single = items.len() == 1;
                // Kept to write one by one should the batch fail.
                let retry = if single { Vec::new() } else { items.clone() };
                match apply(items).instrument(span.clone()).await {
                    Ok(results) => answer(outcomes, results),
                    Err(e) if single => {
                        let _ = outcomes
                            .into_iter()
                            .next()
                            .map(|o| o.send(Err(Arc::new(e))));
                    }
                    // One item the database refuses must not fail the others with it: each is
                    // tried on its own, and only the failing ones get their error.
                    Err(_) => {
                        for (item, outcome) in retry.into_iter().zip(outcomes) {
                            match apply(vec![item]).instrument(span.clone()).await {
                                Ok(results) => answer(vec![outcome], results),
                                Err(e) => {
                                    let _ = outcome.send(Err(Arc::new(e)));
                                }
                            }
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Queues `item` and waits until the batch holding it was written. `Stopped` also answers
    /// an item whose batch returned no outcome for it.
    pub async fn submit(&self, item: I) -> Result<O, BatchError<E>> {
        let (outcome, written) = oneshot::channel();
        self.queue
            .send(Queued {
                item,
                outcome,
                span: tracing::Span::current(),
            })
            .await
            .map_err(|_| BatchError::Stopped)?;
        match written.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(BatchError::Failed(e)),
            Err(_) => Err(BatchError::Stopped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refused;

    /// Effects queued while a batch is being written go out together in the next one, and each
    /// submitter gets its own outcome.
    #[tokio::test]
    async fn items_queued_meanwhile_share_the_next_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::spawn(16, {
            let sizes = sizes.clone();
            move |items: Vec<u32>| {
                sizes.lock().unwrap().push(items.len());
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, Refused>(items.into_iter().map(|i| i * 10).collect())
                }
            }
        });
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(1).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await; // the first batch is being written
        let rest: Vec<_> = (2..=5)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(i).await.unwrap() })
            })
            .collect();
        assert_eq!(first.await.unwrap(), 10);
        for (i, handle) in (2..=5).zip(rest) {
            assert_eq!(handle.await.unwrap(), i * 10);
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 4]);
    }

    /// An item that fails on its own fails, and the next batch is tried afresh.
    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_items() {
        let calls = Arc::new(Mutex::new(0));
        let batcher = Batcher::spawn(4, {
            let calls = calls.clone();
            move |items: Vec<u32>| {
                let call = {
                    let mut calls = calls.lock().unwrap();
                    *calls += 1;
                    *calls
                };
                async move { if call == 1 { Err(Refused) } else { Ok(items) } }
            }
        });
        assert!(matches!(
            batcher.submit(1).await,
            Err(BatchError::Failed(_))
        ));
        assert_eq!(batcher.submit(2).await.unwrap(), 2);
    }

    /// One item the database refuses fails alone: the others of its batch are written one by
    /// one and succeed.
    #[tokio::test]
    async fn one_refused_item_does_not_fail_the_rest_of_its_batch() {
        let batcher = Batcher::spawn(16, |items: Vec<u32>| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if items.contains(&13) {
                Err(Refused)
            } else {
                Ok(items)
            }
        });
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(1).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(5)).await; // the next three share a batch
        let handles: Vec<_> = [12, 13, 14]
            .into_iter()
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(i).await })
            })
            .collect();
        assert_eq!(first.await.unwrap(), 1);
        let mut results = Vec::new();
        for handle in handles {
            results.push(handle.await.unwrap().ok());
        }
        assert_eq!(results, vec![Some(12), None, Some(14)]);
    }
}
