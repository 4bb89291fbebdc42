//! Wake-ups: the gateway signals after committing a receipt so workers start at
//! once instead of at their next poll. In-process in the embedded mode; Redis
//! pub/sub in scale-out. Only a hint: workers poll anyway, so a lost wake-up (or
//! a Redis restart) delays nothing by more than one poll interval and loses nothing.

use std::sync::Arc;

use futures_util::StreamExt as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Wake {
    local: Arc<Notify>,
    redis: Option<(redis::aio::ConnectionManager, redis::Client, String)>,
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
            redis: Some((conn, client, format!("{prefix}wake"))),
        }
    }

    /// Signals that work is due (best effort).
    pub async fn notify(&self) {
        // notify_one keeps a permit when the worker loop is not waiting right now
        // (it is claiming), so the signal is not lost until the next poll.
        self.local.notify_one();
        if let Some((conn, _, channel)) = &self.redis {
            let mut conn = conn.clone();
            let sent: Result<i64, _> = redis::cmd("PUBLISH").arg(channel).arg(1).query_async(&mut conn).await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "wake-up not published; workers will poll");
            }
        }
    }

    pub async fn notified(&self) {
        self.local.notified().await;
    }

    /// Relays Redis wake-ups to this process's workers, reconnecting after failures.
    pub fn spawn_listener(&self, shutdown: CancellationToken) {
        let Some((_, client, channel)) = self.redis.clone() else {
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
