//! Accounts and clients: the Argon2id cost and how its hashing shares the cores, who becomes an
//! admin (docs/hardening.md, "Admins"), and the file of static OAuth clients.

use std::fmt;
use std::path::PathBuf;

use super::env::Reader;
use super::stores::Secret;
use super::values::parse_in;
use super::vars::{self, Var};

/// The settings of this concern, validated.
pub(super) struct Accounts {
    pub(super) argon2: Argon2Cost,
    pub(super) argon2_concurrency: usize,
    pub(super) argon2_nice: i32,
    pub(super) clients_file: Option<PathBuf>,
    pub(super) admin_emails: Vec<String>,
    pub(super) bootstrap_admin: Option<BootstrapAdmin>,
}

pub(super) fn read(r: &mut Reader<'_>) -> Option<Accounts> {
    let argon2 = r.value(&vars::ARGON2, str::parse);
    let argon2_concurrency = r.optional(&vars::ARGON2_CONCURRENCY, |v| {
        parse_in(v, 1..=1024, "expected 1..1024")
    });
    let argon2_nice = r.value(&vars::ARGON2_NICE, |v| {
        parse_in(v, 0..=19, "expected 0..19")
    });
    let clients_file = r.trimmed(&vars::CLIENTS_FILE).map(PathBuf::from);
    let admin_emails = r.optional(&vars::ADMIN_EMAILS, parse_admin_emails);
    let bootstrap_admin = read_bootstrap_admin(r);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Some(Accounts {
        argon2: argon2?,
        argon2_concurrency: argon2_concurrency?.unwrap_or(cores),
        argon2_nice: argon2_nice?,
        clients_file,
        admin_emails: admin_emails?.unwrap_or_default(),
        bootstrap_admin: bootstrap_admin?,
    })
}

/// A comma list of email addresses, lower-cased, and normalised as accounts' addresses are
/// where they have that shape (the domain in ASCII); blank items are skipped.
fn parse_admin_emails(v: &str) -> Result<Vec<String>, String> {
    let emails: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| match crate::domain::input::Email::parse(e) {
            Ok(email) => email.as_str().to_string(),
            Err(_) => e.to_lowercase(),
        })
        .collect();
    match emails.iter().find(|e| !e.contains('@')) {
        Some(bad) => Err(format!("{bad:?} is not an email address")),
        None => Ok(emails),
    }
}

/// `TOKEND_BOOTSTRAP_ADMIN_EMAIL` and `TOKEND_BOOTSTRAP_ADMIN_PASSWORD`: both or neither.
fn read_bootstrap_admin(r: &mut Reader<'_>) -> Option<Option<BootstrapAdmin>> {
    let (email_var, password_var): (&'static Var, &'static Var) = (
        &vars::BOOTSTRAP_ADMIN_EMAIL,
        &vars::BOOTSTRAP_ADMIN_PASSWORD,
    );
    match (r.trimmed(email_var), r.verbatim(password_var)) {
        (None, None) => Some(None),
        (Some(_), None) => {
            r.fail(password_var, format!("must be set with {}", email_var.name));
            None
        }
        (None, Some(_)) => {
            r.fail(email_var, format!("must be set with {}", password_var.name));
            None
        }
        (Some(email), Some(password)) => {
            let email = email.to_lowercase();
            let (local, domain) = email.split_once('@').unwrap_or_default();
            let email_ok =
                !local.is_empty() && !domain.is_empty() && !email.chars().any(char::is_whitespace);
            if !email_ok {
                r.fail(email_var, "expected an email address");
            }
            let password_ok = (8..=128).contains(&password.chars().count());
            if !password_ok {
                r.fail(password_var, "must be 8-128 characters");
            }
            (email_ok && password_ok).then_some(Some(BootstrapAdmin {
                email,
                password: Secret(password),
            }))
        }
    }
}

/// The first admin account (`TOKEND_BOOTSTRAP_ADMIN_EMAIL`, `TOKEND_BOOTSTRAP_ADMIN_PASSWORD`).
#[derive(Debug, Clone)]
pub struct BootstrapAdmin {
    /// Lower-cased.
    pub(crate) email: String,
    /// Never logged (`Debug` prints `<redacted>`).
    pub(crate) password: Secret<String>,
}

/// Argon2id cost parameters (`m` KiB, `t` passes, `p` lanes; RFC 9106 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Cost {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes over the memory.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl std::str::FromStr for Argon2Cost {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut m, mut t, mut p) = (None, None, None);
        for part in s.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("expected m=..,t=..,p=.., got {part:?}"))?;
            let n: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("{k} must be a positive integer"))?;
            match k.trim() {
                "m" => m = Some(n),
                "t" => t = Some(n),
                "p" => p = Some(n),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        let cost = Argon2Cost {
            m_kib: m.ok_or("missing m")?,
            t: t.ok_or("missing t")?,
            p: p.ok_or("missing p")?,
        };
        if cost.p == 0 || cost.p > 16 {
            return Err("p must be between 1 and 16".into());
        }
        if cost.t == 0 || cost.t > 100 {
            return Err("t must be between 1 and 100".into());
        }
        if cost.m_kib < 8 * cost.p || cost.m_kib > 4 * 1024 * 1024 {
            return Err("m must be at least 8*p KiB and at most 4 GiB".into());
        }
        Ok(cost)
    }
}

impl fmt::Display for Argon2Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={},t={},p={}", self.m_kib, self.t, self.p)
    }
}
