//! Every page renders, escapes what it is given, labels its inputs and carries the CSRF token;
//! the page headers. `write_preview` (ignored) renders every page to files for a browser.

use super::*;

const NASTY: &str = "<script>\"'&";
const ESCAPED: &str = "&#60;script&#62;&#34;&#39;&#38;";

fn branding() -> Branding {
    Branding {
        display_name: "Acme ID".into(),
        logo_url: None,
    }
}

fn scopes() -> Vec<ScopeView> {
    vec![
        ScopeView {
            name: "openid".into(),
            description: "Know who you are".into(),
        },
        ScopeView {
            name: "email".into(),
            description: "See your email address".into(),
        },
        ScopeView {
            name: "invoices:read".into(),
            description: "Read your invoices".into(),
        },
    ]
}

/// Every page, rendered from sample data, by file name.
fn samples(b: &Branding) -> Vec<(&'static str, String)> {
    vec![
        (
            "sign-in",
            sign_in(
                b,
                &SignInView {
                    csrf_token: "csrf-1".into(),
                    request_id: Some("req-1".into()),
                    username: String::new(),
                    error: None,
                    client_name: Some("Billing Portal".into()),
                    user_code: None,
                    forgot_password: true,
                },
            ),
        ),
        (
            "sign-in-error",
            sign_in(
                b,
                &SignInView {
                    csrf_token: "csrf-1".into(),
                    request_id: None,
                    username: "alice".into(),
                    error: Some("The username or password is not right.".into()),
                    client_name: None,
                    user_code: None,
                    forgot_password: false,
                },
            ),
        ),
        (
            "consent",
            consent(
                b,
                &ConsentView {
                    csrf_token: "csrf-1".into(),
                    request_id: "req-1".into(),
                    client_name: "Billing Portal".into(),
                    client_id: "billing-portal".into(),
                    user_name: "alice".into(),
                    scopes: scopes(),
                },
            ),
        ),
        (
            "error",
            error(
                b,
                &ErrorView {
                    title: "This sign-in link is not valid".into(),
                    message: "The application sent you here with a return address it has not \
                              registered, so you cannot be sent back to it."
                        .into(),
                    error_code: Some("invalid_request".into()),
                },
            ),
        ),
        (
            "logged-out",
            logged_out(
                b,
                &LoggedOutView {
                    message: "You have been signed out of Acme ID.".into(),
                },
            ),
        ),
        (
            "message",
            message(
                b,
                &MessageView {
                    title: "You are signed in".into(),
                    message: "Signed in as alice.".into(),
                },
            ),
        ),
        (
            "logout-confirm",
            logout_confirm(
                b,
                &LogoutConfirmView {
                    csrf_token: "csrf-1".into(),
                    hidden: vec![
                        ("client_id".into(), "billing-portal".into()),
                        ("state".into(), "xyz".into()),
                    ],
                    client_name: Some("Billing Portal".into()),
                },
            ),
        ),
        (
            "form-post",
            form_post(
                b,
                &FormPostView {
                    action: "https://billing.example.com/callback".into(),
                    fields: vec![
                        ("code".into(), "SplxlOBeZQQYbYS6WxSbIA".into()),
                        ("state".into(), "af0ifjsldkj".into()),
                    ],
                },
            ),
        ),
        ("device", device_entry(b, &DeviceEntryView::default())),
        (
            "device-error",
            device_entry(
                b,
                &DeviceEntryView {
                    code: "BCDF-GHJX".into(),
                    error: Some(
                        "That code is not right. Check the code on your device and try again."
                            .into(),
                    ),
                },
            ),
        ),
        (
            "device-confirm",
            device_confirm(
                b,
                &DeviceConfirmView {
                    csrf_token: "csrf-1".into(),
                    user_code: "BCDF-GHJK".into(),
                    client_name: "Acme TV".into(),
                    client_id: "acme-tv".into(),
                    user_name: "alice".into(),
                    scopes: scopes(),
                },
            ),
        ),
        (
            "device-approved",
            device_done(
                b,
                &DeviceDoneView {
                    approved: true,
                    client_name: "Acme TV".into(),
                },
            ),
        ),
        (
            "device-denied",
            device_done(
                b,
                &DeviceDoneView {
                    approved: false,
                    client_name: "Acme TV".into(),
                },
            ),
        ),
        (
            "sign-in-device",
            sign_in(
                b,
                &SignInView {
                    csrf_token: "csrf-1".into(),
                    request_id: None,
                    username: String::new(),
                    error: None,
                    client_name: None,
                    user_code: Some("BCDF-GHJK".into()),
                    forgot_password: true,
                },
            ),
        ),
        (
            "forgot-password",
            forgot_password(
                b,
                &ForgotPasswordView {
                    csrf_token: "csrf-1".into(),
                    email: String::new(),
                    error: None,
                },
            ),
        ),
        (
            "forgot-password-error",
            forgot_password(
                b,
                &ForgotPasswordView {
                    csrf_token: "csrf-1".into(),
                    email: "alice".into(),
                    error: Some("Enter an email address, like name@example.com.".into()),
                },
            ),
        ),
    ]
}

/// The start tags named `tag` (`<input ...>`), as written.
fn tags<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        if after.starts_with([' ', '>']) {
            let end = after.find('>').map_or(after.len(), |e| e + 1);
            out.push(&rest[i..i + open.len() + end]);
        }
        rest = after;
    }
    out
}

/// The value of attribute `name` in a start tag (the pages always quote with `"`, and escape
/// `"` inside values).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

fn has_attr(tag: &str, name: &str) -> bool {
    tag.contains(&format!(" {name}=\""))
        || tag.contains(&format!(" {name} "))
        || tag.contains(&format!(" {name}>"))
}

/// The forms of a page: (start tag, the text up to `</form>`).
fn forms(html: &str) -> Vec<(&str, &str)> {
    tags(html, "form")
        .into_iter()
        .map(|tag| {
            let start = html.find(tag).unwrap_or_default();
            let end = html[start..].find("</form>").unwrap() + start;
            (tag, &html[start..end])
        })
        .collect()
}

#[test]
fn every_page_renders_in_the_layout() {
    let b = Branding {
        display_name: "Acme ID".into(),
        logo_url: Some("https://acme.example/logo.svg".into()),
    };
    for (name, html) in samples(&b) {
        assert!(html.starts_with("<!doctype html>"), "{name}");
        assert!(html.contains("<html lang=\"en\">"), "{name}");
        assert!(html.contains(" · Acme ID</title>"), "{name}");
        assert!(html.contains("<span>Acme ID</span>"), "{name}");
        assert!(
            html.contains("<img src=\"https://acme.example/logo.svg\" alt=\"\">"),
            "{name}"
        );
        assert_eq!(tags(&html, "h1").len(), 1, "{name}");
        let css = format!(
            "<link rel=\"stylesheet\" href=\"{}\">",
            assets::stylesheet_path()
        );
        assert!(html.contains(&css), "{name}");
        assert!(html.trim_end().ends_with("</html>"), "{name}");
    }
    let html = sign_in(&branding(), &SignInView::default());
    assert!(!html.contains("<img"), "no logo without a logo URL");
}

#[test]
fn the_titles_name_the_page_then_the_product() {
    let titles: Vec<_> = samples(&branding())
        .into_iter()
        .map(|(_, html)| {
            let start = html.find("<title>").unwrap() + "<title>".len();
            let end = html.find("</title>").unwrap();
            html[start..end].to_string()
        })
        .collect();
    assert_eq!(
        titles,
        [
            "Sign in · Acme ID",
            "Sign in · Acme ID",
            "Allow access · Acme ID",
            "This sign-in link is not valid · Acme ID",
            "Signed out · Acme ID",
            "You are signed in · Acme ID",
            "Sign out · Acme ID",
            "Continue · Acme ID",
            "Connect a device · Acme ID",
            "Connect a device · Acme ID",
            "Connect a device · Acme ID",
            "Device connected · Acme ID",
            "Request denied · Acme ID",
            "Sign in · Acme ID",
            "Reset your password · Acme ID",
            "Reset your password · Acme ID",
        ]
    );
}

#[test]
fn the_sign_in_form() {
    let pages = samples(&branding());
    let html = &pages[0].1;
    let [(form, body)] = forms(html)[..] else {
        panic!("one form: {html}")
    };
    assert_eq!(attr(form, "method"), Some("post"));
    assert_eq!(attr(form, "action"), Some("/login"));
    let inputs = tags(body, "input");
    let by_name = |n: &str| {
        inputs
            .iter()
            .find(|t| attr(t, "name") == Some(n))
            .unwrap_or_else(|| panic!("no input {n}"))
    };
    assert_eq!(attr(by_name("csrf_token"), "value"), Some("csrf-1"));
    assert_eq!(attr(by_name("req"), "type"), Some("hidden"));
    assert_eq!(attr(by_name("req"), "value"), Some("req-1"));
    let username = by_name("username");
    assert_eq!(attr(username, "autocomplete"), Some("username"));
    assert!(has_attr(username, "autofocus"));
    let password = by_name("password");
    assert_eq!(attr(password, "type"), Some("password"));
    assert_eq!(attr(password, "autocomplete"), Some("current-password"));
    assert!(html.contains("<label for=\"username\">Username or email</label>"));
    assert!(html.contains("to continue to <strong>Billing Portal</strong>"));
    let buttons = tags(body, "button");
    assert_eq!(buttons.len(), 1);
    assert_eq!(attr(buttons[0], "type"), Some("submit"));
    assert!(body.contains(">Sign in</button>"));
    assert!(!html.contains("role=\"alert\""), "no error, no alert");
    assert!(
        html.contains("<a href=\"/auth/password/forgot\">Forgot your password?</a>"),
        "a way out for a forgotten password, outside the form"
    );
    assert!(!body.contains("/auth/password/forgot"));

    // After an error: one alert, no `req` without a request, the username kept and the cursor
    // in the password field.
    let html = &pages[1].1;
    assert_eq!(html.matches("role=\"alert\"").count(), 1);
    assert!(html.contains("The username or password is not right.</p>"));
    assert!(!html.contains("name=\"req\""));
    assert!(!html.contains("to continue to"));
    let inputs = tags(html, "input");
    let username = inputs.iter().find(|t| attr(t, "name") == Some("username"));
    let password = inputs.iter().find(|t| attr(t, "name") == Some("password"));
    assert_eq!(username.and_then(|t| attr(t, "value")), Some("alice"));
    assert!(!username.is_some_and(|t| has_attr(t, "autofocus")));
    assert!(password.is_some_and(|t| has_attr(t, "autofocus")));
    assert_eq!(
        password.and_then(|t| attr(t, "aria-describedby")),
        Some("error")
    );
    // Without a mail transport there is no reset to offer.
    assert!(!html.contains("Forgot your password?"));
}

#[test]
fn the_forgot_password_form() {
    let pages = samples(&branding());
    let page = |name: &str| &pages.iter().find(|(n, _)| *n == name).unwrap().1;
    let html = page("forgot-password");
    let [(form, body)] = forms(html)[..] else {
        panic!("one form: {html}")
    };
    assert_eq!(attr(form, "method"), Some("post"));
    assert_eq!(attr(form, "action"), Some("/auth/password/forgot/send"));
    let inputs = tags(body, "input");
    let email = inputs
        .iter()
        .find(|t| attr(t, "name") == Some("email"))
        .expect("an email field");
    assert_eq!(attr(email, "type"), Some("email"));
    assert_eq!(attr(email, "autocomplete"), Some("email"));
    assert!(has_attr(email, "required"));
    assert!(body.contains(">Send reset link</button>"));
    assert!(html.contains("<a href=\"/login\">Back to sign in</a>"));
    assert!(!html.contains("role=\"alert\""));

    let html = page("forgot-password-error");
    assert_eq!(html.matches("role=\"alert\"").count(), 1);
    assert!(html.contains("Enter an email address, like name@example.com.</p>"));
    let email = tags(html, "input")
        .into_iter()
        .find(|t| attr(t, "name") == Some("email"))
        .unwrap();
    assert_eq!(
        attr(email, "value"),
        Some("alice"),
        "what was typed is kept"
    );
    assert_eq!(attr(email, "aria-describedby"), Some("error"));
}

#[test]
fn the_consent_form() {
    let html = &samples(&branding())[2].1;
    let [(form, body)] = forms(html)[..] else {
        panic!("one form: {html}")
    };
    assert_eq!(attr(form, "method"), Some("post"));
    assert_eq!(attr(form, "action"), Some("/consent"));
    assert!(body.contains("<input type=\"hidden\" name=\"req\" value=\"req-1\">"));
    let buttons: Vec<_> = tags(body, "button")
        .into_iter()
        .map(|b| (attr(b, "name"), attr(b, "value"), attr(b, "class")))
        .collect();
    assert_eq!(
        buttons,
        [
            (Some("decision"), Some("deny"), Some("button")),
            (Some("decision"), Some("allow"), Some("button primary")),
        ]
    );
    assert!(body.contains(">Allow</button>") && body.contains(">Deny</button>"));
    assert!(html.contains("<strong>Billing Portal</strong> wants to access your account"));
    assert!(html.contains("Signed in as <strong>alice</strong>"));
    assert!(html.contains("<code>billing-portal</code>"));
    for s in scopes() {
        assert!(html.contains(&format!(
            "<li>{}<code class=\"scope-name\">{}</code></li>",
            s.description, s.name
        )));
    }
    let none = consent(
        &branding(),
        &ConsentView {
            csrf_token: "c".into(),
            request_id: "r".into(),
            client_name: "App".into(),
            client_id: "app".into(),
            user_name: "bob".into(),
            scopes: Vec::new(),
        },
    );
    assert!(!none.contains("<ul"));
    assert!(none.contains("It will learn only who you are."));
}

#[test]
fn the_error_page_reads_clearly_and_links_nowhere() {
    let html = &samples(&branding())[3].1;
    assert_eq!(html.matches("role=\"alert\"").count(), 1);
    assert!(html.contains("<h1>This sign-in link is not valid</h1>"));
    assert!(html.contains("<code>invalid_request</code>"));
    assert!(html.contains("You can close this page."));
    assert!(!html.contains("<a "), "no link back to the client");
    assert!(forms(html).is_empty());
    let bare = error(
        &branding(),
        &ErrorView {
            title: "Not found".into(),
            message: "m".into(),
            error_code: None,
        },
    );
    assert!(!bare.contains("Error code"));
}

#[test]
fn the_sign_out_pages() {
    let pages = samples(&branding());
    let html = &pages[4].1;
    assert!(html.contains("<h1>Signed out</h1>"));
    assert!(html.contains("You have been signed out of Acme ID."));
    let html = &pages[5].1;
    assert!(html.contains("<h1>You are signed in</h1>") && html.contains("Signed in as alice."));

    let html = &pages[6].1;
    assert!(html.contains("<h1>Sign out of Acme ID?</h1>"));
    assert!(html.contains("<strong>Billing Portal</strong> asked to end your session."));
    let [(form, body)] = forms(html)[..] else {
        panic!("one form: {html}")
    };
    assert_eq!(attr(form, "method"), Some("post"));
    assert_eq!(attr(form, "action"), Some("/oauth/logout"));
    assert!(body.contains("<input type=\"hidden\" name=\"client_id\" value=\"billing-portal\">"));
    assert!(body.contains("<input type=\"hidden\" name=\"state\" value=\"xyz\">"));
    let buttons: Vec<_> = tags(body, "button")
        .into_iter()
        .map(|b| (attr(b, "name"), attr(b, "value")))
        .collect();
    assert_eq!(
        buttons,
        [
            (Some("decision"), Some("cancel")),
            (Some("decision"), Some("logout"))
        ]
    );
    assert!(body.contains(">Sign out</button>") && body.contains(">Cancel</button>"));
    let anonymous = logout_confirm(&branding(), &LogoutConfirmView::default());
    assert!(!anonymous.contains("asked to end"));
}

#[test]
fn the_form_post_page_posts_to_the_client_with_a_script_of_ours_and_a_button() {
    let html = &samples(&branding())[7].1;
    let [(form, body)] = forms(html)[..] else {
        panic!("one form: {html}")
    };
    assert_eq!(attr(form, "method"), Some("post"));
    assert_eq!(
        attr(form, "action"),
        Some("https://billing.example.com/callback")
    );
    assert_eq!(attr(form, "id"), Some("form-post"));
    let fields: Vec<_> = tags(body, "input")
        .into_iter()
        .map(|t| (attr(t, "type"), attr(t, "name"), attr(t, "value")))
        .collect();
    assert_eq!(
        fields,
        [
            (Some("hidden"), Some("code"), Some("SplxlOBeZQQYbYS6WxSbIA")),
            (Some("hidden"), Some("state"), Some("af0ifjsldkj")),
        ]
    );
    assert!(body.contains("<button type=\"submit\" class=\"button primary\">Continue</button>"));
    let scripts = tags(html, "script");
    assert_eq!(scripts.len(), 1);
    assert_eq!(
        attr(scripts[0], "src"),
        Some(assets::form_post_script_path())
    );
    assert!(has_attr(scripts[0], "defer"));
    let script = std::str::from_utf8(assets::FORM_POST_SCRIPT.body()).unwrap();
    assert!(script.contains("getElementById(\"form-post\")"));
}

#[test]
fn the_device_pages() {
    let pages = samples(&branding());
    let page = |name: &str| {
        pages
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, html)| html.as_str())
            .unwrap()
    };
    // Code entry: a GET form (the code travels in the query, as in verification_uri_complete),
    // one labelled field, no error until there is one.
    let html = page("device");
    let [(form, body)] = forms(html)[..] else {
        panic!("one form: {html}")
    };
    assert_eq!(attr(form, "method"), Some("get"));
    assert_eq!(attr(form, "action"), Some("/device"));
    let inputs = tags(body, "input");
    assert_eq!(inputs.len(), 1, "{body}");
    assert_eq!(attr(inputs[0], "name"), Some("user_code"));
    assert_eq!(attr(inputs[0], "autocomplete"), Some("off"));
    assert!(has_attr(inputs[0], "autofocus") && has_attr(inputs[0], "required"));
    assert!(html.contains("<label for=\"user_code\">Code</label>"));
    assert!(body.contains(">Continue</button>"));
    assert!(!html.contains("role=\"alert\""));
    // After a wrong code: one alert, the code kept.
    let html = page("device-error");
    assert_eq!(html.matches("role=\"alert\"").count(), 1);
    assert!(html.contains("value=\"BCDF-GHJX\""));
    assert!(html.contains("aria-describedby=\"error\""));

    // Approval: the code to compare, the client, who is signed in, the scopes, and a form
    // posting the decision with the CSRF token and the code.
    let html = page("device-confirm");
    assert!(html.contains("<h1>Connect <strong>Acme TV</strong>?</h1>"));
    assert!(html.contains("<p class=\"user-code\">BCDF-GHJK</p>"));
    assert!(html.contains("Signed in as <strong>alice</strong>"));
    assert!(html.contains("<code>acme-tv</code>"));
    for s in scopes() {
        assert!(html.contains(&format!(
            "<li>{}<code class=\"scope-name\">{}</code></li>",
            s.description, s.name
        )));
    }
    let [(form, body)] = forms(html)[..] else {
        panic!("one form: {html}")
    };
    assert_eq!(attr(form, "method"), Some("post"));
    assert_eq!(attr(form, "action"), Some("/device"));
    assert!(body.contains("<input type=\"hidden\" name=\"user_code\" value=\"BCDF-GHJK\">"));
    let buttons: Vec<_> = tags(body, "button")
        .into_iter()
        .map(|b| (attr(b, "name"), attr(b, "value"), attr(b, "class")))
        .collect();
    assert_eq!(
        buttons,
        [
            (Some("decision"), Some("deny"), Some("button")),
            (Some("decision"), Some("approve"), Some("button primary")),
        ]
    );
    assert!(body.contains(">Approve</button>") && body.contains(">Deny</button>"));

    // Done: what happened, and where to go.
    let html = page("device-approved");
    assert!(html.contains("<h1>Device connected</h1>"));
    assert!(html.contains("You can go back to your device."));
    assert!(forms(html).is_empty() && !html.contains("<a "));
    let html = page("device-denied");
    assert!(html.contains("<h1>Request denied</h1>"));
    assert!(html.contains("<strong>Acme TV</strong> was not given access"));

    // Signing in for a device carries the code back, and says why.
    let html = page("sign-in-device");
    assert!(html.contains("<input type=\"hidden\" name=\"user_code\" value=\"BCDF-GHJK\">"));
    assert!(html.contains("to connect your device"));
    assert!(!html.contains("name=\"req\""));
}

/// Whether a start tag of `html` has an event handler attribute (`onclick=`, `onload=`, ...).
fn has_event_handler(html: &str) -> bool {
    html.split('<')
        .skip(1)
        .filter_map(|t| t.split('>').next())
        .any(|tag| {
            tag.match_indices(" on").any(|(i, _)| {
                let rest = &tag[i + 3..];
                let name = rest.len()
                    - rest
                        .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                        .len();
                name > 0 && rest[name..].starts_with('=')
            })
        })
}

#[test]
fn event_handlers_are_found() {
    assert!(has_event_handler("<p>x</p><button onclick=\"x()\">"));
    assert!(has_event_handler("<body onload=\"x()\">"));
    assert!(!has_event_handler(
        "<p>Enter the code shown on your device.</p>"
    ));
    assert!(!has_event_handler("<input name=\"one\" value=\"on\">"));
}

#[test]
fn no_inline_script_or_style_anywhere() {
    for (name, html) in samples(&branding()) {
        for script in tags(&html, "script") {
            assert!(attr(script, "src").is_some(), "{name}: {script}");
        }
        assert!(!html.contains("</script>") || html.contains("defer></script>"));
        assert!(tags(&html, "style").is_empty(), "{name}");
        assert!(!html.contains(" style="), "{name}");
        assert!(
            !has_event_handler(&html),
            "{name}: an event handler attribute"
        );
        assert!(!html.contains("javascript:"), "{name}");
    }
}

#[test]
fn everything_given_is_escaped() {
    let b = Branding {
        display_name: NASTY.into(),
        logo_url: Some(NASTY.into()),
    };
    let n = || NASTY.to_string();
    let pages = [
        sign_in(
            &b,
            &SignInView {
                csrf_token: n(),
                request_id: Some(n()),
                username: n(),
                error: Some(n()),
                client_name: Some(n()),
                user_code: Some(n()),
                forgot_password: true,
            },
        ),
        consent(
            &b,
            &ConsentView {
                csrf_token: n(),
                request_id: n(),
                client_name: n(),
                client_id: n(),
                user_name: n(),
                scopes: vec![ScopeView {
                    name: n(),
                    description: n(),
                }],
            },
        ),
        error(
            &b,
            &ErrorView {
                title: n(),
                message: n(),
                error_code: Some(n()),
            },
        ),
        logged_out(&b, &LoggedOutView { message: n() }),
        message(
            &b,
            &MessageView {
                title: n(),
                message: n(),
            },
        ),
        logout_confirm(
            &b,
            &LogoutConfirmView {
                csrf_token: n(),
                hidden: vec![(n(), n())],
                client_name: Some(n()),
            },
        ),
        form_post(
            &b,
            &FormPostView {
                action: n(),
                fields: vec![(n(), n())],
            },
        ),
        device_entry(
            &b,
            &DeviceEntryView {
                code: n(),
                error: Some(n()),
            },
        ),
        device_confirm(
            &b,
            &DeviceConfirmView {
                csrf_token: n(),
                user_code: n(),
                client_name: n(),
                client_id: n(),
                user_name: n(),
                scopes: vec![ScopeView {
                    name: n(),
                    description: n(),
                }],
            },
        ),
        device_done(
            &b,
            &DeviceDoneView {
                approved: true,
                client_name: n(),
            },
        ),
        forgot_password(
            &b,
            &ForgotPasswordView {
                csrf_token: n(),
                email: n(),
                error: Some(n()),
            },
        ),
    ];
    for html in &pages {
        assert!(!html.contains(NASTY), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        // The product name in the title, the heading and the logo's URL.
        assert!(html.matches(ESCAPED).count() >= 3, "{html}");
    }
    // Every field of each view shows up escaped: the product name (in the title and the
    // heading) and the logo, then the page's own fields (the client's name twice on the
    // consent and device pages, the error's and the message's title in the page title too,
    // the product name in the sign-out question, the user code shown and sent back).
    let counts: Vec<_> = pages.iter().map(|h| h.matches(ESCAPED).count()).collect();
    assert_eq!(
        counts,
        [
            3 + 6,
            3 + 8,
            3 + 4,
            3 + 1,
            3 + 3,
            3 + 5,
            3 + 3,
            3 + 2,
            3 + 9,
            3 + 1,
            3 + 3
        ]
    );
}

#[test]
fn every_form_of_ours_carries_the_csrf_token_and_every_input_has_a_label() {
    for (name, html) in samples(&branding()) {
        for (form, body) in forms(&html) {
            let posts_to_tokend = attr(form, "action").is_some_and(|a| a.starts_with('/'))
                && attr(form, "method") == Some("post");
            let csrf = tags(body, "input").into_iter().any(|t| {
                attr(t, "type") == Some("hidden")
                    && attr(t, "name") == Some("csrf_token")
                    && attr(t, "value") == Some("csrf-1")
            });
            // The form-post form goes to the client: tokend's token must not travel there; nor
            // into a URL, where a form sent with GET puts its fields (the device page's code
            // entry, which changes nothing).
            assert_eq!(csrf, posts_to_tokend, "{name}: {form}");
            let method = attr(form, "method");
            assert!(
                method == Some("post") || method == Some("get"),
                "{name}: {form}"
            );
        }
        for input in tags(&html, "input") {
            if attr(input, "type") == Some("hidden") {
                continue;
            }
            let id = attr(input, "id").unwrap_or_else(|| panic!("{name}: {input} has no id"));
            assert_eq!(
                html.matches(&format!("<label for=\"{id}\">")).count(),
                1,
                "{name}: {input}"
            );
        }
        for button in tags(&html, "button") {
            assert_eq!(attr(button, "type"), Some("submit"), "{name}: {button}");
        }
    }
}

#[test]
fn pages_carry_every_security_header() {
    let res = html_response(StatusCode::BAD_REQUEST, "<p>x</p>".into());
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let h = res.headers();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        h["content-security-policy"],
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' https: data:; \
         base-uri 'none'; frame-ancestors 'none'"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(!csp.contains("unsafe-inline") && !csp.contains("form-action"));
}

/// Renders every page with sample data into `target/pages-preview/` (or
/// `$TOKEND_PAGES_PREVIEW_DIR`), with the stylesheet beside them, for a browser:
///
/// ```sh
/// cargo test --lib pages::tests::write_preview -- --ignored
/// chromium --headless --no-sandbox --disable-gpu --window-size=1280,900 \
///   --screenshot=target/pages-preview/sign-in.png file://$PWD/target/pages-preview/sign-in.html
/// ```
#[test]
#[ignore = "writes files for a person to look at"]
fn write_preview() {
    let dir = std::env::var_os("TOKEND_PAGES_PREVIEW_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pages-preview"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokend.css"), assets::STYLESHEET.body()).unwrap();
    let with_logo = Branding {
        display_name: "Acme ID".into(),
        logo_url: Some(format!(
            "data:image/svg+xml,{}",
            "%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 40 40'%3E%3Crect width='40' \
             height='40' rx='10' fill='%231f4fd1'/%3E%3Cpath d='M12 28 20 11l8 17' stroke='white' \
             stroke-width='4' fill='none' stroke-linejoin='round'/%3E%3C/svg%3E"
        )),
    };
    let mut pages = samples(&branding());
    pages.push(("sign-in-logo", samples(&with_logo).swap_remove(0).1));
    for (name, html) in pages {
        // The form-post script is left out: it would submit the sample form.
        let html = html
            .replace(assets::stylesheet_path(), "tokend.css")
            .replace(assets::form_post_script_path(), "form-post-disabled.js");
        std::fs::write(dir.join(format!("{name}.html")), html).unwrap();
    }
}
