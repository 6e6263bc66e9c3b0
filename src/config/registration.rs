//! Dynamic client registration (RFC 7591, RFC 7592; docs/registration.md): who may register
//! clients at `POST /oauth/register`, and how fast one address may register them.

use super::env::Reader;
use super::limits::Rate;
use super::vars;

/// The settings of this concern, validated.
pub(super) struct Registration {
    pub(super) client_registration: RegistrationMode,
    pub(super) rate_limit_registration: Rate,
}

pub(super) fn read(r: &mut Reader<'_>) -> Option<Registration> {
    let client_registration = r.value(&vars::CLIENT_REGISTRATION, str::parse);
    let rate_limit_registration = r.value(&vars::RATE_LIMIT_REGISTRATION, str::parse);
    Some(Registration {
        client_registration: client_registration?,
        rate_limit_registration: rate_limit_registration?,
    })
}

/// `TOKEND_CLIENT_REGISTRATION`: who may register clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationMode {
    /// No registration endpoint (404) and no `registration_endpoint` in discovery.
    Off,
    /// Only with an initial access token (RFC 7591 §3) from
    /// `tokend clients registration-token`.
    Token,
    /// Anyone may register a public client, rate limited per client address; an initial
    /// access token, when sent, still grants what it grants in `token` mode.
    Open,
}

impl RegistrationMode {
    /// `off`, `token` or `open`, as configured and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationMode::Off => "off",
            RegistrationMode::Token => "token",
            RegistrationMode::Open => "open",
        }
    }
}

impl std::str::FromStr for RegistrationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(RegistrationMode::Off),
            "token" => Ok(RegistrationMode::Token),
            "open" => Ok(RegistrationMode::Open),
            _ => Err("expected off, token or open".into()),
        }
    }
}
