//! Single-use keys in Redis: one `SET key 1 NX PX ttl` each (the key is in the table of the
//! parent module), atomic on the server, so of concurrent first uses exactly one is answered
//! `OK`, on one instance or many.

use async_trait::async_trait;

use super::{ttl_arg, RedisStore};
use crate::store::{ReplayStore, StoreError};

impl RedisStore {
    fn once_key(&self, key: &str) -> String {
        format!("{}once:{{{key}}}", self.prefix)
    }
}

#[async_trait]
impl ReplayStore for RedisStore {
    async fn first_use(&self, key: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        let key = self.once_key(key);
        let ttl = ttl_arg(ttl_ms);
        let reply: Option<String> = self
            .run(|mut c| {
                let key = key.clone();
                async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg("1")
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(reply.is_some())
    }
}
