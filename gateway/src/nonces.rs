//! Replay protection: a nonce is accepted once per app within its time to live.
//! In-process in the embedded mode; in Redis in scale-out, so a nonce replayed to
//! another gateway process is refused too.

use std::time::Duration;

use redis::aio::ConnectionManager;

pub enum NonceRegistry {
    Memory(moka::sync::Cache<String, ()>),
    Redis {
        conn: ConnectionManager,
        prefix: String,
        ttl: Duration,
    },
}

impl NonceRegistry {
    pub fn in_memory(ttl: Duration) -> Self {
        // Bounded so a flood of signed requests cannot exhaust memory; at 2,000
        // requests/s for the 600 s window this holds every nonce with room to spare.
        Self::Memory(
            moka::sync::Cache::builder()
                .max_capacity(4_000_000)
                .time_to_live(ttl)
                .build(),
        )
    }

    pub fn redis(conn: ConnectionManager, prefix: &str, ttl: Duration) -> Self {
        Self::Redis {
            conn,
            prefix: format!("{prefix}nonce:"),
            ttl,
        }
    }

    /// True when this is the first use of `nonce` by `app_id` within the window.
    pub async fn first_use(&self, app_id: &str, nonce: &str) -> Result<bool, redis::RedisError> {
        match self {
            NonceRegistry::Memory(cache) => Ok(cache.entry(format!("{app_id}:{nonce}")).or_insert(()).is_fresh()),
            NonceRegistry::Redis { conn, prefix, ttl } => {
                let mut conn = conn.clone();
                let set: Option<String> = redis::cmd("SET")
                    .arg(format!("{prefix}{app_id}:{nonce}"))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl.as_secs().max(1))
                    .query_async(&mut conn)
                    .await?;
                Ok(set.is_some())
            }
        }
    }
}
