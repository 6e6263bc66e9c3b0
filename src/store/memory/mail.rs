//! The mail outbox in memory (embedded mode), with the semantics of the MongoDB one: one lock
//! makes each step atomic.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::lock;
use crate::store::mail::{ClaimedMail, MailStore, MailToken, OutgoingMail};
use crate::store::StoreError;

/// A queued message and the token it carries; `mail` is dropped at delivery.
struct Entry {
    mail: Option<OutgoingMail>,
    token: Option<MailToken>,
    attempts: u32,
    next_attempt_at_ms: i64,
    lease_until_ms: i64,
    holder: String,
}

impl Entry {
    /// Whether the entry still matters at `now_ms`: a message waiting whose token (if any) has
    /// not expired, or a delivered token still live.
    fn alive(&self, now_ms: i64) -> bool {
        match (&self.mail, &self.token) {
            (_, Some(t)) => t.expires_at_ms > now_ms,
            (Some(_), None) => true,
            (None, None) => false,
        }
    }
}

/// The outbox of embedded mode.
#[derive(Default)]
pub struct MemoryMail {
    inner: Mutex<HashMap<String, Entry>>,
}

impl MemoryMail {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl MailStore for MemoryMail {
    async fn enqueue(
        &self,
        mail: &OutgoingMail,
        token: Option<&MailToken>,
    ) -> Result<(), StoreError> {
        let mut g = lock(&self.inner);
        g.retain(|_, e| e.alive(mail.created_at_ms));
        if g.contains_key(&mail.id) {
            return Err(StoreError::Duplicate("id"));
        }
        g.insert(
            mail.id.clone(),
            Entry {
                mail: Some(mail.clone()),
                token: token.cloned(),
                attempts: 0,
                next_attempt_at_ms: 0,
                lease_until_ms: 0,
                holder: String::new(),
            },
        );
        Ok(())
    }

    async fn claim(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedMail>, StoreError> {
        let mut g = lock(&self.inner);
        g.retain(|_, e| e.alive(now_ms));
        let due = g
            .iter()
            .filter(|(_, e)| {
                e.mail.is_some() && e.next_attempt_at_ms <= now_ms && e.lease_until_ms <= now_ms
            })
            .min_by(|(a_id, a), (b_id, b)| {
                (a.next_attempt_at_ms, a_id.as_str()).cmp(&(b.next_attempt_at_ms, b_id.as_str()))
            })
            .map(|(id, _)| id.clone());
        let Some(entry) = due.and_then(|id| g.get_mut(&id)) else {
            return Ok(None);
        };
        entry.lease_until_ms = now_ms.saturating_add(lease_ms);
        entry.holder = holder.to_string();
        entry.attempts = entry.attempts.saturating_add(1);
        Ok(entry.mail.clone().map(|mail| ClaimedMail {
            mail,
            attempts: entry.attempts,
        }))
    }

    async fn delivered(&self, id: &str, holder: &str) -> Result<(), StoreError> {
        let mut g = lock(&self.inner);
        let Some(entry) = g.get_mut(id).filter(|e| e.holder == holder) else {
            return Ok(());
        };
        if entry.token.is_some() {
            entry.mail = None;
            entry.holder.clear();
        } else {
            g.remove(id);
        }
        Ok(())
    }

    async fn retry_at(
        &self,
        id: &str,
        holder: &str,
        next_attempt_at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut g = lock(&self.inner);
        if let Some(entry) = g.get_mut(id).filter(|e| e.holder == holder) {
            entry.next_attempt_at_ms = next_attempt_at_ms;
            entry.lease_until_ms = 0;
            entry.holder.clear();
        }
        Ok(())
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        let g = lock(&self.inner);
        Ok(g.values().filter(|e| e.mail.is_some()).count() as u64)
    }

    async fn token(
        &self,
        hash: &str,
        purpose: &str,
        now_ms: i64,
    ) -> Result<Option<MailToken>, StoreError> {
        let g = lock(&self.inner);
        Ok(g.values()
            .filter_map(|e| e.token.as_ref())
            .find(|t| t.hash == hash && t.purpose == purpose && t.expires_at_ms > now_ms)
            .cloned())
    }

    async fn take_token(
        &self,
        hash: &str,
        purpose: &str,
        now_ms: i64,
    ) -> Result<Option<MailToken>, StoreError> {
        let mut g = lock(&self.inner);
        let id = g
            .iter()
            .find(|(_, e)| {
                e.token.as_ref().is_some_and(|t| {
                    t.hash == hash && t.purpose == purpose && t.expires_at_ms > now_ms
                })
            })
            .map(|(id, _)| id.clone());
        Ok(id.and_then(|id| g.remove(&id)).and_then(|e| e.token))
    }

    async fn forget_tokens(&self, user_id: &str, purpose: &str) -> Result<u64, StoreError> {
        let mut g = lock(&self.inner);
        let before = g.len();
        g.retain(|_, e| {
            !e.token
                .as_ref()
                .is_some_and(|t| t.user_id == user_id && t.purpose == purpose)
        });
        Ok((before - g.len()) as u64)
    }

    async fn forget_user_tokens(&self, user_id: &str) -> Result<u64, StoreError> {
        let mut g = lock(&self.inner);
        let before = g.len();
        g.retain(|_, e| e.token.as_ref().is_none_or(|t| t.user_id != user_id));
        Ok((before - g.len()) as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
