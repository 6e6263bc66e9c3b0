//! The `Mail` service (docs/mail.md): mail goes through an outbox in the store. Whatever causes
//! a message writes it there (with the token it carries, in the same record); a worker in every
//! instance claims due messages with a lease, hands each to the transport (SMTP or `.eml`
//! files), and on failure gives the lease back with the next attempt 1 s later, doubling up to
//! 30 s. An SMTP outage delays mail and loses none; the `Message-ID` is the idempotency key.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use lettre::message::Mailbox;
use tokio::sync::Notify;

use super::{ids, Error};
use crate::clock::SharedClock;
use crate::mail::{compose, Compose, ComposeError, Transport};
use crate::metrics::Metrics;
use crate::store::{MailStore, MailToken, OutgoingMail};

/// How long a claimed message is this worker's. An attempt is cut off well before
/// ([`SEND_DEADLINE`]), so no other instance takes a message while it is being sent.
const LEASE_MS: i64 = 60_000;
/// The most one attempt may take, whatever the SMTP server does (each of its replies may
/// take [`crate::mail::SMTP_TIMEOUT`]); a third of the lease stays as margin for the store
/// write that ends the attempt and for clocks that differ between instances.
const SEND_DEADLINE: Duration = Duration::from_secs(40);
/// The first retry comes after this long…
const FIRST_RETRY_MS: i64 = 1_000;
/// …doubling with each failure up to this, so mail flows within 30 s of a server's return.
const MAX_RETRY_MS: i64 = 30_000;
/// How often an idle worker looks for due messages (other instances' and retries).
const POLL: Duration = Duration::from_secs(1);
/// The most messages one pass of the worker tries. A pass ends at the latest here, so that the
/// depth gauge is refreshed and shutdown is heard even while a backlog keeps failing (a retry
/// may come due again before a long pass would end).
const PASS_LIMIT: usize = 32;

/// The delay before the next attempt after `attempts` failed ones (1 s, 2 s, 4 s … 30 s).
pub(crate) fn retry_delay_ms(attempts: u32) -> i64 {
    let exp = attempts.saturating_sub(1).min(16);
    FIRST_RETRY_MS
        .saturating_mul(1_i64 << exp)
        .min(MAX_RETRY_MS)
}

/// What a message says, before it becomes one.
pub(crate) struct Letter {
    pub(crate) to: String,
    pub(crate) subject: String,
    pub(crate) text: String,
    pub(crate) html: String,
}

/// The `Mail` service: queues messages and delivers them.
pub(crate) struct Mail {
    store: Arc<dyn MailStore>,
    /// `None`: mail is off (production mode without SMTP or a directory); nothing is queued.
    transport: Option<Arc<dyn Transport>>,
    /// The `Date` of messages, the expiry of their tokens, leases and retries: one clock, so
    /// that a message whose token expired is not sent and a test moves retries by moving time.
    clock: SharedClock,
    metrics: Arc<Metrics>,
    sender: Mailbox,
    /// The right part of every `Message-ID`: the issuer's host.
    id_domain: String,
    /// This instance, as lease holder.
    holder: String,
    /// Wakes the worker when this instance queued a message.
    wake: Notify,
}

impl Mail {
    pub(crate) fn new(
        store: Arc<dyn MailStore>,
        transport: Option<Arc<dyn Transport>>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        sender: Mailbox,
        id_domain: String,
    ) -> Result<Mail, Error> {
        Ok(Mail {
            store,
            transport,
            clock,
            metrics,
            sender,
            id_domain,
            holder: ids::random_id()?,
            wake: Notify::new(),
        })
    }

    /// Whether mail leaves this instance at all.
    pub(crate) fn enabled(&self) -> bool {
        self.transport.is_some()
    }

    /// The service clock's time, Unix milliseconds.
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Builds the message of a letter, with a new `Message-ID`. [`Error::Invalid`] when the
    /// recipient's address is not one mail can be sent to.
    pub(crate) fn compose(&self, letter: Letter) -> Result<OutgoingMail, Error> {
        let id = uuid::Uuid::now_v7().to_string();
        compose(Compose {
            id: &id,
            id_domain: &self.id_domain,
            from: &self.sender,
            to: &letter.to,
            subject: &letter.subject,
            text: letter.text,
            html: letter.html,
            now_ms: self.clock.now_ms(),
        })
        .map_err(|e| match e {
            ComposeError::Recipient(_) => {
                Error::Invalid("email cannot receive mail: check the address".into())
            }
            ComposeError::Message(m) => Error::Internal(m),
        })
    }

    /// Writes a message, and the token it carries, to the outbox in one step; the worker sends
    /// it. Nothing is queued when mail is off.
    pub(crate) async fn queue(
        &self,
        mail: &OutgoingMail,
        token: Option<&MailToken>,
    ) -> Result<(), Error> {
        if !self.enabled() {
            return Ok(());
        }
        self.store.enqueue(mail, token).await?;
        tracing::info!(message_id = %mail.id, "mail queued");
        self.wake.notify_one();
        Ok(())
    }

    /// The live token with this hash and purpose, unspent.
    pub(crate) async fn token(
        &self,
        hash: &str,
        purpose: &str,
    ) -> Result<Option<MailToken>, Error> {
        Ok(self.store.token(hash, purpose, self.clock.now_ms()).await?)
    }

    /// Spends a token: of concurrent callers, one gets it.
    pub(crate) async fn take_token(
        &self,
        hash: &str,
        purpose: &str,
    ) -> Result<Option<MailToken>, Error> {
        Ok(self
            .store
            .take_token(hash, purpose, self.clock.now_ms())
            .await?)
    }

    /// Forgets the user's tokens for `purpose`.
    pub(crate) async fn forget_tokens(&self, user_id: &str, purpose: &str) -> Result<(), Error> {
        self.store.forget_tokens(user_id, purpose).await?;
        Ok(())
    }

    /// Sends due messages, one after the other, until there is none, [`PASS_LIMIT`] were tried,
    /// or `stop` says so (an attempt under way is finished first: cutting it off could send a
    /// message twice). Answers whether more may be due at once.
    pub(crate) async fn deliver_due(
        &self,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, Error> {
        let Some(transport) = &self.transport else {
            return Ok(false);
        };
        for _ in 0..PASS_LIMIT {
            if *stop.borrow() {
                return Ok(false);
            }
            let now = self.clock.now_ms();
            let Some(claimed) = self.store.claim(&self.holder, now, LEASE_MS).await? else {
                return Ok(false);
            };
            let id = claimed.mail.id.clone();
            let sent = tokio::time::timeout(SEND_DEADLINE, transport.send(&claimed.mail))
                .await
                .unwrap_or_else(|_| {
                    Err(crate::mail::SendError(format!(
                        "no answer within {} s",
                        SEND_DEADLINE.as_secs()
                    )))
                });
            match sent {
                Ok(()) => {
                    self.store.delivered(&id, &self.holder).await?;
                    self.metrics.mail_sent.inc();
                    tracing::info!(message_id = %id, attempts = claimed.attempts, "mail delivered");
                }
                Err(e) => {
                    self.metrics.mail_send_failures.inc();
                    let delay = retry_delay_ms(claimed.attempts);
                    let next = self.clock.now_ms().saturating_add(delay);
                    self.store.retry_at(&id, &self.holder, next).await?;
                    tracing::warn!(
                        message_id = %id,
                        attempts = claimed.attempts,
                        retry_in_ms = delay,
                        error = %e,
                        "mail not delivered; will retry"
                    );
                }
            }
        }
        Ok(true)
    }

    /// Refreshes `tokend_mail_outbox_depth`.
    async fn observe_depth(&self) {
        match self.store.depth().await {
            Ok(n) => self
                .metrics
                .mail_outbox_depth
                .set(i64::try_from(n).unwrap_or(i64::MAX)),
            Err(e) => tracing::debug!(error = %e, "outbox depth unavailable"),
        }
    }

    /// The delivery worker: runs until `shutdown` resolves, waking when this instance queues a
    /// message and at least every second. A store or transport that is down is retried. At
    /// shutdown the attempt under way is finished and the worker stops before the next one
    /// (bounded by the attempt's deadline).
    pub(crate) fn spawn_worker(
        self: &Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.transport.as_ref()?;
        let mail = self.clone();
        let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
        Some(tokio::spawn(async move {
            let stopper = tokio::spawn(async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            });
            while !*stop.borrow() {
                let pass = std::panic::AssertUnwindSafe(mail.deliver_due(&stop)).catch_unwind();
                let more = match pass.await {
                    Ok(Ok(more)) => more,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "mail outbox unavailable; will retry");
                        false
                    }
                    Err(_) => {
                        tracing::error!("mail delivery panicked; will retry");
                        false
                    }
                };
                mail.observe_depth().await;
                if more {
                    continue;
                }
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = mail.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            stopper.abort();
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_at_a_second_and_double_up_to_thirty() {
        let delays: Vec<i64> = (1..=8).map(retry_delay_ms).collect();
        assert_eq!(
            delays,
            [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(retry_delay_ms(u32::MAX), 30_000);
        assert_eq!(retry_delay_ms(0), 1_000);
    }
}
