//! Mail leaving tokend (docs/mail.md): the message builder, the mail templates and the two
//! transports, SMTP (`lettre` on tokio with rustls) and a directory of `.eml` files. The outbox
//! and its retries are the domain's (`domain::mail`); this module knows how one message is
//! made and handed over, nothing of when.

mod templates;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

pub(crate) use templates::{ConfirmEmailChange, EmailChanged, ResetPassword, VerifyEmail};

use crate::config::{MailTransport, SmtpSecurity, SmtpSettings};
use crate::store::OutgoingMail;

/// How long the SMTP client waits for the connection and for each reply of the server. The
/// outbox cuts a whole attempt off later (`domain::mail`), and its lease is longer still, so
/// that no other worker takes a message while it is being sent.
pub(crate) const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a message could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ComposeError {
    /// The recipient's address is not one a mail can be sent to (RFC 5321 §4.1.2).
    #[error("the recipient cannot receive mail: {0}")]
    Recipient(String),
    #[error("{0}")]
    Message(String),
}

/// Why a message was not handed over (safe to log: it never holds the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SendError(pub(crate) String);

/// Where a message goes when the outbox lets it go.
#[async_trait]
pub(crate) trait Transport: Send + Sync {
    /// Hands one message over; `Ok` once the server accepted it (or the file is in place).
    async fn send(&self, mail: &OutgoingMail) -> Result<(), SendError>;
}

/// The transport of the configuration; `None` when mail is off.
pub(crate) fn transport(
    transport: &MailTransport,
    hello_name: &str,
) -> Result<Option<Arc<dyn Transport>>, String> {
    Ok(match transport {
        MailTransport::Smtp(s) => Some(Arc::new(Smtp::new(s, hello_name)?)),
        MailTransport::Dir(dir) => Some(Arc::new(EmlDir { dir: dir.clone() })),
        MailTransport::Off => None,
    })
}

/// An SMTP server (RFC 5321), with TLS per `TOKEND_SMTP_URL` (RFC 8314, RFC 3207).
struct Smtp {
    client: AsyncSmtpTransport<Tokio1Executor>,
}

impl Smtp {
    fn new(s: &SmtpSettings, hello_name: &str) -> Result<Smtp, String> {
        let tls = |host: &str| {
            TlsParameters::new(host.to_string()).map_err(|e| format!("TLS for {host}: {e}"))
        };
        let tls = match s.security {
            SmtpSecurity::Tls => Tls::Wrapper(tls(&s.host)?),
            SmtpSecurity::StartTlsRequired => Tls::Required(tls(&s.host)?),
            SmtpSecurity::StartTlsOpportunistic => Tls::Opportunistic(tls(&s.host)?),
            SmtpSecurity::None => Tls::None,
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.clone())
            .port(s.port)
            .tls(tls)
            .timeout(Some(SMTP_TIMEOUT))
            .hello_name(ClientId::Domain(hello_name.to_string()));
        if let Some((user, password)) = &s.credentials {
            b = b.credentials(Credentials::new(user.clone(), password.0.clone()));
        }
        Ok(Smtp { client: b.build() })
    }
}

#[async_trait]
impl Transport for Smtp {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), SendError> {
        let address = |a: &str| {
            Address::from_str(a).map_err(|e| SendError(format!("bad envelope address: {e}")))
        };
        let envelope =
            lettre::address::Envelope::new(Some(address(&mail.from)?), vec![address(&mail.to)?])
                .map_err(|e| SendError(format!("envelope: {e}")))?;
        self.client
            .send_raw(&envelope, mail.raw.as_bytes())
            .await
            .map(|_| ())
            .map_err(|e| SendError(format!("smtp: {e}")))
    }
}

/// A directory of `.eml` files (`TOKEND_MAIL_DIR`), one per message, named by its
/// `Message-ID`: a message sent twice is the same file. Each is written whole (a temporary file
/// renamed into place) and readable by its owner only, since it carries a link.
struct EmlDir {
    dir: PathBuf,
}

#[async_trait]
impl Transport for EmlDir {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), SendError> {
        let (dir, id, raw) = (self.dir.clone(), mail.id.clone(), mail.raw.clone());
        tokio::task::spawn_blocking(move || write_eml(&dir, &id, raw.as_bytes()))
            .await
            .map_err(|e| SendError(format!("writing a mail file: {e}")))?
            .map_err(|e| {
                SendError(format!(
                    "writing a mail file in {}: {e}",
                    self.dir.display()
                ))
            })
    }
}

/// Writes `{dir}/{id}.eml` through a temporary file and a rename (POSIX rename is atomic), so a
/// reader never sees half a message.
fn write_eml(dir: &std::path::Path, id: &str, raw: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{id}.eml.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(raw)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(format!("{id}.eml")))
}

/// One message to build: who it is from and to, and its parts.
pub(crate) struct Compose<'a> {
    pub(crate) id: &'a str,
    /// The right part of the `Message-ID` (the issuer's host).
    pub(crate) id_domain: &'a str,
    pub(crate) from: &'a Mailbox,
    pub(crate) to: &'a str,
    pub(crate) subject: &'a str,
    pub(crate) text: String,
    pub(crate) html: String,
    /// Unix milliseconds: the `Date` header.
    pub(crate) now_ms: i64,
}

/// The sender's mailbox: `TOKEND_MAIL_FROM`, named with the display name when it has no name.
pub(crate) fn sender(from: &str, display_name: &str) -> Result<Mailbox, String> {
    let mut mailbox = Mailbox::from_str(from).map_err(|e| format!("TOKEND_MAIL_FROM: {e}"))?;
    if mailbox.name.is_none() {
        mailbox.name = Some(display_name.to_string());
    }
    Ok(mailbox)
}

/// The longest line RFC 5322 §2.1.1 allows, without its CRLF.
const MAX_LINE: usize = 998;

/// A part's body. ASCII text whose lines all fit RFC 5322 §2.1.1 goes as it is (`7bit`, RFC
/// 2045 §2.7), so that a link stays whole for whoever reads the message or the `.eml` file
/// (docs/mail.md); anything else is quoted-printable (RFC 2045 §6.7), never base64, so that
/// every message of tokend has one of two predictable shapes.
fn part_body(text: String) -> Result<Body, ComposeError> {
    let crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
    let seven_bit = crlf.is_ascii()
        && crlf
            .split("\r\n")
            .all(|l| l.len() <= MAX_LINE && !l.contains(['\r', '\0']));
    if seven_bit {
        return Ok(Body::dangerous_pre_encoded(
            crlf.into_bytes(),
            ContentTransferEncoding::SevenBit,
        ));
    }
    Body::new_with_encoding(text, ContentTransferEncoding::QuotedPrintable)
        .map_err(|_| ComposeError::Message("a part cannot be quoted-printable".into()))
}

/// Whether a message can be addressed to `to` (RFC 5321 §4.1.2, as `lettre` parses it).
pub(crate) fn recipient(to: &str) -> Result<Mailbox, ComposeError> {
    Mailbox::from_str(to).map_err(|e| ComposeError::Recipient(e.to_string()))
}

/// Builds the RFC 5322 message: `multipart/alternative` with a plain-text and an HTML part
/// (RFC 2046 §5.1.4), a `Message-ID` (RFC 5322 §3.6.4) that is the outbox's idempotency key.
pub(crate) fn compose(c: Compose<'_>) -> Result<OutgoingMail, ComposeError> {
    let to = recipient(c.to)?;
    let date = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(c.now_ms).unwrap_or(0));
    let message = lettre::Message::builder()
        .from(c.from.clone())
        .to(to.clone())
        .subject(c.subject)
        .date(date)
        .message_id(Some(format!("<{}@{}>", c.id, c.id_domain)))
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(part_body(c.text)?),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(part_body(c.html)?),
                ),
        )
        .map_err(|e| ComposeError::Message(format!("building a message: {e}")))?;
    let raw = String::from_utf8(message.formatted())
        .map_err(|_| ComposeError::Message("a built message is not ASCII".into()))?;
    Ok(OutgoingMail {
        id: c.id.to_string(),
        from: c.from.email.to_string(),
        to: to.email.to_string(),
        raw,
        created_at_ms: c.now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OutgoingMail {
        let from = sender("noreply@tokend.test", "Example Co").unwrap();
        compose(Compose {
            id: "0193-abc",
            id_domain: "tokend.test",
            from: &from,
            to: "ada@example.com",
            subject: "Confirm your email address",
            text: "Open https://tokend.test/auth/verify-email?token=abc\n".into(),
            html: "<p>Open <a href=\"https://tokend.test/\">this</a></p>".into(),
            now_ms: 1_700_000_000_000,
        })
        .unwrap()
    }

    #[test]
    fn a_message_has_both_parts_its_id_and_the_display_name() {
        let m = sample();
        assert_eq!(
            (m.from.as_str(), m.to.as_str()),
            ("noreply@tokend.test", "ada@example.com")
        );
        assert!(
            m.raw.contains("Message-ID: <0193-abc@tokend.test>"),
            "{}",
            m.raw
        );
        assert!(m.raw.contains("multipart/alternative"));
        assert!(m.raw.contains("text/plain"));
        assert!(m.raw.contains("text/html"));
        assert!(
            m.raw.contains("\"Example Co\" <noreply@tokend.test>"),
            "{}",
            m.raw
        );
        assert!(m.raw.contains("Date: Tue, 14 Nov 2023"), "{}", m.raw);
    }

    #[test]
    fn an_ascii_link_stays_whole_and_anything_else_is_quoted_printable() {
        let m = sample();
        assert!(
            m.raw.contains("Content-Transfer-Encoding: 7bit"),
            "{}",
            m.raw
        );
        assert!(m
            .raw
            .contains("Open https://tokend.test/auth/verify-email?token=abc\r\n"));
        assert!(!m.raw.contains("quoted-printable") && !m.raw.contains("base64"));

        let from = sender("noreply@tokend.test", "Café Ünïcode").unwrap();
        let long = format!("https://tokend.test/?q={}\n", "x".repeat(1_200));
        let m = compose(Compose {
            id: "0193-def",
            id_domain: "tokend.test",
            from: &from,
            to: "ada@example.com",
            subject: "Grüße",
            text: "Grüße 📬\n".into(),
            html: long.clone(),
            now_ms: 1_700_000_000_000,
        })
        .unwrap();
        assert_eq!(
            m.raw
                .matches("Content-Transfer-Encoding: quoted-printable")
                .count(),
            2,
            "{}",
            m.raw
        );
        assert!(m.raw.lines().all(|l| l.len() <= 998));
        assert!(!m.raw.contains(&long[..100]), "a long line is folded");
    }

    #[test]
    fn a_recipient_no_mail_can_reach_is_named_as_such() {
        let from = sender("noreply@tokend.test", "Example Co").unwrap();
        for to in ["a<b@example.com", "no-at-sign", "ada@exa mple.com"] {
            let e = compose(Compose {
                id: "0193-abc",
                id_domain: "tokend.test",
                from: &from,
                to,
                subject: "s",
                text: "t".into(),
                html: "h".into(),
                now_ms: 0,
            })
            .unwrap_err();
            assert!(matches!(e, ComposeError::Recipient(_)), "{to}: {e:?}");
        }
    }

    #[test]
    fn an_eml_file_is_written_whole_under_its_message_id() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample();
        write_eml(dir.path(), &m.id, m.raw.as_bytes()).unwrap();
        write_eml(dir.path(), &m.id, m.raw.as_bytes()).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["0193-abc.eml"]);
        let written = std::fs::read_to_string(dir.path().join("0193-abc.eml")).unwrap();
        assert_eq!(written, m.raw);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("0193-abc.eml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
