//! Wake-ups: the gateway signals after committing a receipt so workers start at
//! once instead of at their next poll. In-process in the embedded mode; Redis
//! pub/sub in scale-out. Only a hint: workers poll anyway, so a lost wake-up (or
//! a Redis restart) delays nothing by more than one poll interval and loses nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Least time between two Redis wake-ups from one process: under a stream of
/// receipts (one signal each) every listener would otherwise wake, and claim, once
/// per receipt. A lone signal goes out at once.
const PUBLISH_SPACING: Duration = Duration::from_millis(5);

#[derive(Clone)]
pub struct Wake {
    local: Arc<Notify>,
    redis: Option<RedisWake>,
}

#[derive(Clone)]
struct RedisWake {
    conn: redis::aio::ConnectionManager,
    client: redis::Client,
    channel: String,
    /// A publisher task is running.
    busy: Arc<AtomicBool>,
    /// A signal came after the publisher's last publish began.
    dirty: Arc<AtomicBool>,
}

impl Wake {
    pub fn local() -> Self {
        Self {
            local: Arc::new(Notify::new()),
            redis: None,
        }
    }

    pub fn redis(conn: redis::aio::ConnectionManager, client: redis::Client, prefix: &str) -> Self {
        Self {
            local: Arc::new(Notify::new()),
            redis: Some(RedisWake {
                conn,
                client,
                channel: format!("{prefix}wake"),
                busy: Arc::default(),
                dirty: Arc::default(),
            }),
        }
    }

    /// Signals that work is due (best effort). Never waits for Redis.
    pub async fn notify(&self) {
        // notify_one keeps a permit when the worker loop is not waiting right now
        // (it is claiming), so the signal is not lost until the next poll.
        self.local.notify_one();
        if let Some(redis) = &self.redis {
            redis.dirty.store(true, Ordering::SeqCst);
            if !redis.busy.swap(true, Ordering::SeqCst) {
                tokio::spawn(redis.clone().publish());
            }
        }
    }
    pub async fn notified(&self) {
        self.local.notified().await;
    }

    /// Relays Redis wake-ups to this process's workers, reconnecting after failures.
    pub fn spawn_listener(&self, shutdown: CancellationToken) {
        let Some(RedisWake { client, channel, .. }) = self.redis.clone() else {
            return;
        };
        let local = self.local.clone();
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                let listen = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        local.notify_one();
                    }
                    Ok::<(), redis::RedisError>(())
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    res = listen => {
                        if let Err(e) = res {
                            tracing::warn!(error = %e, "wake-up listener lost Redis; retrying");
                        }
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
}

impl RedisWake {
    /// Publishes while signals keep coming, at most once per PUBLISH_SPACING. A
    /// signal is only dropped when it came before a publish began: that publish,
    /// and the claims it prompts, come after the signal's commit.
    async fn publish(self) {
        loop {
            if !self.dirty.swap(false, Ordering::SeqCst) {
                self.busy.store(false, Ordering::SeqCst);
                // A signal between the check and the release found us busy: ours.
                if self.dirty.load(Ordering::SeqCst) && !self.busy.swap(true, Ordering::SeqCst) {
                    continue;
                }
                return;
            }
            let mut conn = self.conn.clone();
            let sent: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(&self.channel)
                .arg(1)
                .query_async(&mut conn)
                .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "wake-up not published; workers will poll");
            }
            tokio::time::sleep(PUBLISH_SPACING).await;
        }
    }
}
