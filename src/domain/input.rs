//! Validated inputs, parsed once at the edge (docs/api.md): `Email`, `Username`, `Password`.

use super::Error;

/// A lower-cased email address that looks like one, its domain in ASCII.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Trims, lower-cases and checks the shape of an address (docs/api.md, "Input rules"). An
    /// internationalised domain is kept in its one ASCII form (IDNA, UTS #46: `bücher.example`
    /// and `xn--bcher-kva.example` are one domain, stored as the second), so that one mailbox
    /// is one address.
    pub fn parse(raw: &str) -> Result<Email, Error> {
        let e = raw.trim().to_lowercase();
        let bad = || Error::Invalid("email must look like name@example.com".into());
        if e.is_empty() || e.len() > 254 || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = e.rsplit_once('@').ok_or_else(bad)?;
        if local.is_empty()
            || local.len() > 64
            || local.contains('@')
            || domain.len() < 3
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
            || domain.contains(['(', ')', '<', '>', ',', ';', ':', '\\', '"', '[', ']'])
        {
            return Err(bad());
        }
        if domain.is_ascii() && !domain.split('.').any(|l| l.starts_with("xn--")) {
            return Ok(Email(e));
        }
        let ascii = idna::domain_to_ascii(domain).map_err(|_| bad())?;
        if ascii.is_empty() || local.len() + 1 + ascii.len() > 254 {
            return Err(bad());
        }
        Ok(Email(format!("{local}@{ascii}")))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address with its domain in Unicode, when that differs from [`Email::as_str`]: the
    /// form an account made before domains were normalised may be stored under.
    pub fn unicode_form(&self) -> Option<String> {
        let (local, domain) = self.0.rsplit_once('@')?;
        let (unicode, result) = idna::domain_to_unicode(domain);
        (result.is_ok() && unicode != domain).then(|| format!("{local}@{unicode}"))
    }
}

/// 3–32 characters of `[A-Za-z0-9_.-]`; unique ignoring case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Trims and checks length and characters (docs/api.md, "Input rules").
    pub fn parse(raw: &str) -> Result<Username, Error> {
        let n = raw.chars().count();
        if !(3..=32).contains(&n) {
            return Err(Error::Invalid("username must be 3 to 32 characters".into()));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(Error::Invalid(
                "username may only contain letters, digits, '_', '.' and '-'".into(),
            ));
        }
        Ok(Username(raw.to_string()))
    }

    /// The checked username.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 8–128 characters. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Password {
    /// Checks the password policy (length in characters and bytes; docs/api.md, "Input rules").
    pub fn parse(raw: &str) -> Result<Password, Error> {
        let n = raw.chars().count();
        if !(8..=128).contains(&n) {
            return Err(Error::Invalid(
                "password must be 8 to 128 characters".into(),
            ));
        }
        Ok(Password(raw.to_string()))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            Email::parse(" Ezra@Example.COM ").unwrap().as_str(),
            "ezra@example.com"
        );
        assert_eq!(
            Email::parse("ezra@example.com").unwrap().unicode_form(),
            None
        );
        // One mailbox, one address: an internationalised domain in its ASCII form.
        for same in [
            "Zed@Bücher.Example",
            "zed@xn--bcher-kva.example",
            "ZED@XN--BCHER-KVA.EXAMPLE",
        ] {
            let e = Email::parse(same).unwrap();
            assert_eq!(e.as_str(), "zed@xn--bcher-kva.example", "{same}");
            assert_eq!(e.unicode_form().as_deref(), Some("zed@bücher.example"));
        }
        assert_eq!(
            Email::parse("u@пример.com").unwrap().as_str(),
            Email::parse("u@xn--e1afmkfd.com").unwrap().as_str()
        );
        for bad in [
            "",
            "ezra",
            "ezra@",
            "@example.com",
            "ezra@example",
            "ez ra@example.com",
            "ezra@@example.com",
            "ezra@.example.com",
            "ezra@example..com",
            "ezra@xn--.example",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usernames_follow_the_rule() {
        for good in ["abc", "ezra_dev", "a.b-c", &"x".repeat(32)] {
            assert!(Username::parse(good).is_ok(), "{good}");
        }
        for bad in ["ab", &"x".repeat(33), "ezra dev", "ézra", "ezra!", ""] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_8_to_128_characters() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"p".repeat(128)).is_ok());
        assert!(Password::parse(&"p".repeat(129)).is_err());
        assert!(Password::parse("ééééééé").is_err());
        assert!(Password::parse("éééééééé").is_ok());
        assert!(!format!("{:?}", Password::parse("secret-pass").unwrap()).contains("secret"));
    }
}
