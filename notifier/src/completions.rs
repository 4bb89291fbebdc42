//! Group commit of finished attempts: every worker hands its completion to one
//! writer, which records whatever has queued up meanwhile in one transaction
//! (`DeliveryQueue::complete_attempts`). Alone, a completion is written at once; under
//! load, many share a write instead of each paying for its own.

use std::sync::Arc;

use piaojia_store::{Completion, Store};
use tokio::sync::{mpsc, oneshot};

/// Most completions written in one transaction.
const MAX_BATCH: usize = 256;

struct Pending {
    completion: Completion,
    done: oneshot::Sender<Result<bool, String>>,
}

#[derive(Clone)]
pub(crate) struct Completions {
    queue: mpsc::Sender<Pending>,
}

impl Completions {
    /// Starts the writer for `owner`'s leases; it stops when the last handle is
    /// dropped. Needs a Tokio runtime.
    pub(crate) fn start(store: Arc<dyn Store>, owner: String) -> Self {
        let (queue, pending) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(write(store, owner, pending));
        Self { queue }
    }

    /// Records the attempt and moves the delivery on; `Ok(false)` when the lease
    /// was lost (fenced, nothing written).
    pub(crate) async fn complete(&self, completion: Completion) -> Result<bool, String> {
        let (done, result) = oneshot::channel();
        self.queue
            .send(Pending { completion, done })
            .await
            .map_err(|_| "the completion writer has stopped".to_owned())?;
        result
            .await
            .unwrap_or_else(|_| Err("the completion writer has stopped".to_owned()))
    }
}

async fn write(store: Arc<dyn Store>, owner: String, mut pending: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (completions, waiting): (Vec<Completion>, Vec<_>) = batch.drain(..).map(|p| (p.completion, p.done)).unzip();
        match store.complete_attempts(&owner, &completions).await {
            Ok(done) => {
                for (waiter, done) in waiting.into_iter().zip(done) {
                    let _ = waiter.send(Ok(done));
                }
            }
            Err(e) if completions.len() > 1 => {
                // One bad row must not cost the others their record: one at a time.
                tracing::warn!(error = %e, n = completions.len(), "recording attempts together failed; one at a time");
                for (waiter, c) in waiting.into_iter().zip(completions) {
                    let done = store
                        .complete_attempts(&owner, std::slice::from_ref(&c))
                        .await
                        .map(|done| done.first().copied().unwrap_or(false))
                        .map_err(|e| e.to_string());
                    let _ = waiter.send(done);
                }
            }
            Err(e) => {
                for waiter in waiting {
                    let _ = waiter.send(Err(e.to_string()));
                }
            }
        }
    }
}
