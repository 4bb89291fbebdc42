//! Replay protection: a nonce is accepted once per app within its time to live.
//! In-process in the embedded mode; in Redis in scale-out, so a nonce replayed to
//! another gateway process is refused too.

use std::time::Duration;

use redis::aio::ConnectionManager;

pub enum NonceRegistry {
    Memory(moka::sync::Cache<String, String>),
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
        Ok(self.bind(app_id, nonce, "1").await? == Binding::First)
    }

    /// Binds `nonce` of `scope` to `value` (e.g. the hash of the body it came with)
    /// for the window: the first use, a repeat with the same value (a retry), or a
    /// repeat with another (a replay carrying something else).
    pub async fn bind(&self, scope: &str, nonce: &str, value: &str) -> Result<Binding, redis::RedisError> {
        let found = match self {
            NonceRegistry::Memory(cache) => {
                let entry = cache.entry(format!("{scope}:{nonce}")).or_insert(value.to_owned());
                if entry.is_fresh() {
                    return Ok(Binding::First);
                }
                entry.into_value()
            }
            NonceRegistry::Redis { conn, prefix, ttl } => {
                let mut conn = conn.clone();
                let key = format!("{prefix}{scope}:{nonce}");
                let set: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(value)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl.as_secs().max(1))
                    .query_async(&mut conn)
                    .await?;
                if set.is_some() {
                    return Ok(Binding::First);
                }
                let found: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
                match found {
                    Some(found) => found,
                    // Expired between the two commands: as good as new.
                    None => return Ok(Binding::First),
                }
            }
        };
        Ok(if found == value { Binding::Same } else { Binding::Other })
    }
}

/// What [`NonceRegistry::bind`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    First,
    Same,
    Other,
}
