//! Resource indicators (RFC 8707; docs/token_exchange.md, "Resource indicators"): which
//! resources a request may name, and what the access token's `aud` and the family's grant
//! become. A client may name only the resources of its `resources` metadata (exact match); a
//! code or a family granted for some resources gives access tokens for those or a subset
//! (RFC 8707 §2.2). No resource named: today's behaviour, the configured audience.

/// The longest resource (or exchange audience) accepted, as for redirect URIs.
pub(crate) const MAX_RESOURCE_LEN: usize = 2048;
/// The most resources a client may list, and a request may name.
pub(crate) const MAX_RESOURCES: usize = 32;

/// What is wrong with a resource indicator (RFC 8707 §2): it must be an absolute URI
/// (RFC 3986 §4.3) without a fragment, and tokend wants it printable and bounded too.
pub(crate) fn resource_problem(uri: &str) -> Option<&'static str> {
    if uri.is_empty() || uri.len() > MAX_RESOURCE_LEN {
        return Some("must be 1 to 2048 characters");
    }
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Some("must be printable ASCII without spaces (percent-encode the rest)");
    }
    let Ok(u) = url::Url::parse(uri) else {
        return Some("is not an absolute URI");
    };
    if u.fragment().is_some() || uri.contains('#') {
        return Some("must not have a fragment (RFC 8707 §2)");
    }
    None
}

/// What is wrong with an audience a client may exchange tokens for
/// (`token_exchange_audiences`, RFC 8693 §2.1): any printable name, a URI or not.
pub(crate) fn audience_problem(aud: &str) -> Option<&'static str> {
    if aud.is_empty() || aud.len() > MAX_RESOURCE_LEN {
        return Some("must be 1 to 2048 characters");
    }
    if !aud.bytes().all(|b| b.is_ascii_graphic()) {
        return Some("must be printable ASCII without spaces");
    }
    None
}

/// The resources of one token: those its grant covers (kept in the family's refresh tokens)
/// and those it is for (its `aud`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Targets {
    /// What the authorization (the code, the password or device grant, the family) covers.
    pub(crate) granted: Vec<String>,
    /// What this access token is for; empty for the configured audience.
    pub(crate) audience: Vec<String>,
}

impl Targets {
    /// A grant with no prior authorization (password, device code, client credentials): the
    /// resources named, each one the client may ask for, cover the grant and the token.
    pub(crate) fn requested(requested: &[String], allowed: &[String]) -> Result<Targets, String> {
        let named = checked(requested)?;
        if let Some(r) = named.iter().find(|r| !allowed.contains(r)) {
            return Err(format!(
                "resource {r:?} is not one this client may ask for (its registered resources)"
            ));
        }
        Ok(Targets {
            granted: named.clone(),
            audience: named,
        })
    }

    /// A token from an earlier grant (a code, a family) for `granted`: the resources named
    /// must be among those, and the token is for them; none named, for all of `granted`
    /// (RFC 8707 §2.2). The grant stays what it was.
    pub(crate) fn narrowed(requested: &[String], granted: &[String]) -> Result<Targets, String> {
        let named = checked(requested)?;
        if let Some(r) = named.iter().find(|r| !granted.contains(r)) {
            return Err(if granted.is_empty() {
                format!("resource {r:?} was not granted: the authorization named no resource")
            } else {
                format!("resource {r:?} is not one the authorization was granted for")
            });
        }
        let audience = if named.is_empty() {
            granted.to_vec()
        } else {
            named
        };
        Ok(Targets {
            granted: granted.to_vec(),
            audience,
        })
    }
}

/// The resources of a request, each a valid indicator, duplicates dropped, in order.
pub(crate) fn checked(requested: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for r in requested {
        if let Some(problem) = resource_problem(r) {
            return Err(format!("resource {r:?} {problem}"));
        }
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    if out.len() > MAX_RESOURCES {
        return Err(format!("more than {MAX_RESOURCES} resources"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_resource_is_an_absolute_uri_without_a_fragment() {
        for ok in [
            "https://api.example/orders",
            "https://api.example/",
            "urn:example:orders",
            "https://api.example/x?tenant=1",
        ] {
            assert_eq!(resource_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "orders",
            "/orders",
            "https://api.example/#top",
            "https://api.example/#",
            "https://api.example/a b",
            "https://api.example/\u{e9}",
        ] {
            assert!(resource_problem(bad).is_some(), "{bad:?}");
        }
        assert!(resource_problem(&format!("https://a.example/{}", "x".repeat(2048))).is_some());
    }

    #[test]
    fn a_client_names_only_its_own_resources() {
        let allowed = v(&["https://a.example", "https://b.example"]);
        let t =
            Targets::requested(&v(&["https://b.example", "https://b.example"]), &allowed).unwrap();
        assert_eq!(t.audience, v(&["https://b.example"]));
        assert_eq!(t.granted, t.audience);
        assert_eq!(
            Targets::requested(&[], &allowed).unwrap(),
            Targets::default()
        );
        assert!(Targets::requested(&v(&["https://c.example"]), &allowed).is_err());
        assert!(Targets::requested(&v(&["https://a.example#x"]), &allowed).is_err());
    }

    #[test]
    fn a_grant_gives_tokens_for_its_resources_or_a_subset() {
        let granted = v(&["https://a.example", "https://b.example"]);
        let all = Targets::narrowed(&[], &granted).unwrap();
        assert_eq!(all.audience, granted);
        let one = Targets::narrowed(&v(&["https://a.example"]), &granted).unwrap();
        assert_eq!(one.audience, v(&["https://a.example"]));
        assert_eq!(one.granted, granted, "the grant stays whole");
        let e = Targets::narrowed(&v(&["https://c.example"]), &granted).unwrap_err();
        assert!(e.contains("not one the authorization"), "{e}");
        let e = Targets::narrowed(&v(&["https://a.example"]), &[]).unwrap_err();
        assert!(e.contains("named no resource"), "{e}");
        assert_eq!(Targets::narrowed(&[], &[]).unwrap(), Targets::default());
    }

    #[test]
    fn exchange_audiences_are_printable_names() {
        assert_eq!(audience_problem("orders-api"), None);
        assert_eq!(audience_problem("https://api.example"), None);
        assert!(audience_problem("").is_some());
        assert!(audience_problem("two words").is_some());
    }
}
