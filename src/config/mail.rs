//! Mail (docs/mail.md): how mail leaves tokend (SMTP, or `.eml` files in a directory), who it
//! comes from, and whether registration asks the owner to confirm the address.

use std::path::PathBuf;
use std::str::FromStr;

use super::env::Reader;
use super::stores::Secret;
use super::vars;

/// The settings of this concern, validated.
pub(super) struct Mail {
    pub(super) mail: MailSettings,
}

/// Where mail goes, who sends it, and email verification.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// `TOKEND_SMTP_URL`, else `TOKEND_MAIL_DIR` (default `mail` in embedded mode), else off.
    pub(crate) transport: MailTransport,
    /// `TOKEND_MAIL_FROM`: `address` or `Name <address>`; without a name the display name of
    /// the hosted pages (`TOKEND_DISPLAY_NAME`) is used.
    pub(crate) from: String,
    /// `TOKEND_EMAIL_VERIFICATION`.
    pub(crate) verification: EmailVerification,
}

/// How mail leaves tokend.
#[derive(Debug, Clone)]
pub(crate) enum MailTransport {
    /// An SMTP server.
    Smtp(SmtpSettings),
    /// Each message a `.eml` file in this directory.
    Dir(PathBuf),
    /// No way out (production mode with neither variable): nothing is queued.
    Off,
}

/// `TOKEND_SMTP_URL`, taken apart.
#[derive(Debug, Clone)]
pub(crate) struct SmtpSettings {
    /// The URL as set (shown by `check-config` with its password redacted).
    pub(crate) url: Secret<String>,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) security: SmtpSecurity,
    /// User name and password (percent-decoded), when the URL has them.
    pub(crate) credentials: Option<(String, Secret<String>)>,
}

/// How the SMTP connection is protected (RFC 8314, RFC 3207).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SmtpSecurity {
    /// `smtps://`: TLS from the first byte (RFC 8314 §3.3), port 465 by default.
    Tls,
    /// `smtp://…?tls=required`, and `smtp://` with a user and password: STARTTLS (RFC 3207)
    /// or no mail.
    StartTlsRequired,
    /// `smtp://` without credentials (the default): STARTTLS when the server offers it.
    StartTlsOpportunistic,
    /// `smtp://…?tls=none`: plain text (a relay on the same host).
    None,
}

/// `TOKEND_EMAIL_VERIFICATION` (docs/mail.md, "Email verification").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailVerification {
    /// No verification mail; `email_verified` only by the operator.
    Off,
    /// Registration sends a verification mail; unverified accounts sign in all the same.
    Optional,
    /// As optional, and sign-in refuses unverified accounts (403 `email_not_verified`).
    Required,
}

impl EmailVerification {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EmailVerification::Off => "off",
            EmailVerification::Optional => "optional",
            EmailVerification::Required => "required",
        }
    }
}

impl FromStr for EmailVerification {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        match v.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(EmailVerification::Off),
            "optional" => Ok(EmailVerification::Optional),
            "required" => Ok(EmailVerification::Required),
            _ => Err("expected off, optional or required".into()),
        }
    }
}

impl MailTransport {
    /// What `check-config` shows for `TOKEND_MAIL_DIR`.
    pub(crate) fn dir(&self) -> Option<&PathBuf> {
        match self {
            MailTransport::Dir(d) => Some(d),
            _ => None,
        }
    }

    pub(crate) fn smtp(&self) -> Option<&SmtpSettings> {
        match self {
            MailTransport::Smtp(s) => Some(s),
            _ => None,
        }
    }
}

/// Reads the mail settings. `embedded` says whether the mode is embedded (`None` when the mode
/// itself was refused), `issuer` gives the default sender's domain.
pub(super) fn read(
    r: &mut Reader<'_>,
    embedded: Option<bool>,
    issuer: Option<&str>,
) -> Option<Mail> {
    let smtp = r.optional(&vars::SMTP_URL, parse_smtp_url);
    let dir = r.trimmed(&vars::MAIL_DIR).map(PathBuf::from);
    let from = match r.trimmed(&vars::MAIL_FROM) {
        Some(v) => r.check(&vars::MAIL_FROM, parse_from(&v)),
        None => Some(default_from(issuer)),
    };
    let verification = r.value(&vars::EMAIL_VERIFICATION, str::parse);
    let transport = match (smtp?, dir) {
        (Some(_), Some(_)) => {
            r.fail(
                &vars::MAIL_DIR,
                format!("set {} or this, not both", vars::SMTP_URL.name),
            );
            return None;
        }
        (Some(s), None) => MailTransport::Smtp(s),
        (None, Some(d)) => MailTransport::Dir(d),
        (None, None) if embedded.unwrap_or(true) => MailTransport::Dir(PathBuf::from("mail")),
        (None, None) => MailTransport::Off,
    };
    let verification = verification?;
    if verification == EmailVerification::Required && matches!(transport, MailTransport::Off) {
        r.fail(
            &vars::EMAIL_VERIFICATION,
            format!(
                "required needs a way to send mail: set {} or {}",
                vars::SMTP_URL.name,
                vars::MAIL_DIR.name
            ),
        );
        return None;
    }
    Some(Mail {
        mail: MailSettings {
            transport,
            from: from?,
            verification,
        },
    })
}

/// `noreply@` the issuer's host, or `noreply@localhost` when that is not a mail domain.
fn default_from(issuer: Option<&str>) -> String {
    let host = issuer
        .and_then(|i| url::Url::parse(i).ok())
        .and_then(|u| u.domain().map(str::to_string))
        .unwrap_or_else(|| "localhost".into());
    let candidate = format!("noreply@{host}");
    if lettre::Address::from_str(&candidate).is_ok() {
        candidate
    } else {
        "noreply@localhost".into()
    }
}

/// `address` or `Name <address>` (RFC 5322 §3.4).
fn parse_from(v: &str) -> Result<String, String> {
    lettre::message::Mailbox::from_str(v)
        .map(|_| v.to_string())
        .map_err(|_| {
            "expected an address like noreply@example.com or Name <noreply@example.com>".into()
        })
}

/// Decodes `%XX` escapes (RFC 3986 §2.1) of a URL's user or password.
fn percent_decoded(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent-encoding in the user or password")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the user or password is not UTF-8".to_string())
}

/// `smtp://[user:password@]host[:port][?tls=opportunistic|required|none]` or
/// `smtps://[user:password@]host[:port]` (docs/mail.md, "SMTP").
fn parse_smtp_url(v: &str) -> Result<SmtpSettings, String> {
    let v = v.trim();
    let u = url::Url::parse(v).map_err(|_| "expected smtp://host[:port] or smtps://host[:port]")?;
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("the URL names no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if !matches!(u.path(), "" | "/") || u.fragment().is_some() {
        return Err("the URL must not have a path or fragment".into());
    }
    let mut tls: Option<String> = None;
    for (k, val) in u.query_pairs() {
        match k.as_ref() {
            "tls" if tls.is_none() => tls = Some(val.into_owned()),
            other => {
                return Err(format!(
                    "unknown or repeated URL option {other:?} (only tls)"
                ))
            }
        }
    }
    let credentials = match (u.username(), u.password()) {
        ("", None) => None,
        (user, Some(password)) if !user.is_empty() => {
            Some((percent_decoded(user)?, Secret(percent_decoded(password)?)))
        }
        _ => return Err("give both a user and a password, or neither".into()),
    };
    // A password goes only where STARTTLS cannot be stripped by someone on the path (RFC 3207
    // §6): with credentials, plain `smtp://` insists on STARTTLS.
    let security = match (u.scheme(), tls.as_deref(), credentials.is_some()) {
        ("smtps", None, _) => SmtpSecurity::Tls,
        ("smtps", Some(_), _) => return Err("smtps:// is always TLS: drop the tls option".into()),
        ("smtp", None, true) | ("smtp", Some("required"), _) => SmtpSecurity::StartTlsRequired,
        ("smtp", None, false) | ("smtp", Some("opportunistic"), false) => {
            SmtpSecurity::StartTlsOpportunistic
        }
        ("smtp", Some("opportunistic"), true) => {
            return Err(
                "with a user and password STARTTLS is required (an attacker could strip \
                        it and read the password): drop tls=opportunistic, or use smtps://"
                    .into(),
            )
        }
        ("smtp", Some("none"), _) => SmtpSecurity::None,
        ("smtp", Some(_), _) => return Err("tls must be opportunistic, required or none".into()),
        _ => return Err("expected an smtp:// or smtps:// URL".into()),
    };
    let port = u.port().unwrap_or(match security {
        SmtpSecurity::Tls => 465,
        SmtpSecurity::None => 25,
        _ => 587,
    });
    Ok(SmtpSettings {
        url: Secret(v.to_string()),
        host,
        port,
        security,
        credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_name_their_security_port_and_credentials() {
        let s = parse_smtp_url("smtp://mail.example.com").unwrap();
        assert_eq!(
            (s.security, s.port),
            (SmtpSecurity::StartTlsOpportunistic, 587)
        );
        assert!(s.credentials.is_none());
        let s = parse_smtp_url("smtps://ann%40x.io:p%2Bss@mail.example.com").unwrap();
        assert_eq!((s.security, s.port), (SmtpSecurity::Tls, 465));
        let (user, password) = s.credentials.unwrap();
        assert_eq!((user.as_str(), password.0.as_str()), ("ann@x.io", "p+ss"));
        let s = parse_smtp_url("smtp://127.0.0.1:2525?tls=none").unwrap();
        assert_eq!((s.security, s.port), (SmtpSecurity::None, 2525));
        let s = parse_smtp_url("smtp://h?tls=required").unwrap();
        assert_eq!(s.security, SmtpSecurity::StartTlsRequired);
        // A password is never sent where STARTTLS could be stripped.
        let s = parse_smtp_url("smtp://ann:secret@h").unwrap();
        assert_eq!((s.security, s.port), (SmtpSecurity::StartTlsRequired, 587));
        let s = parse_smtp_url("smtp://ann:secret@127.0.0.1:25?tls=none").unwrap();
        assert_eq!(s.security, SmtpSecurity::None);
        assert!(parse_smtp_url("smtp://ann:secret@h?tls=opportunistic").is_err());
        for bad in [
            "http://h",
            "smtp://",
            "smtps://h?tls=none",
            "smtp://h?tls=maybe",
            "smtp://h?x=1",
            "smtp://user@h",
            "smtp://h/path",
        ] {
            assert!(parse_smtp_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sender_defaults_to_noreply_at_the_issuers_host() {
        assert_eq!(
            default_from(Some("https://auth.example.com")),
            "noreply@auth.example.com"
        );
        assert_eq!(
            default_from(Some("http://127.0.0.1:5000")),
            "noreply@localhost"
        );
        assert!(parse_from("Example <noreply@example.com>").is_ok());
        assert!(parse_from("not an address").is_err());
    }
}
