//! The mail templates (`templates/mail/`): each mail a plain-text part and an HTML part from the
//! same data; askama escapes the HTML part and leaves the text part as written.

use askama::Template;

/// "Confirm your email address": the link of docs/mail.md, "Email verification".
#[derive(Debug, Clone)]
pub(crate) struct VerifyEmail {
    /// `TOKEND_DISPLAY_NAME`.
    pub(crate) display_name: String,
    pub(crate) username: String,
    /// `{issuer}/auth/verify-email?token=…`: the one secret of the mail.
    pub(crate) link: String,
    /// How long the link works.
    pub(crate) hours: u64,
}

#[derive(Template)]
#[template(path = "mail/verify_email.txt")]
struct VerifyEmailText<'a> {
    m: &'a VerifyEmail,
}

#[derive(Template)]
#[template(path = "mail/verify_email.html")]
struct VerifyEmailHtml<'a> {
    m: &'a VerifyEmail,
}

impl VerifyEmail {
    pub(crate) fn subject(&self) -> String {
        format!("Confirm your email address for {}", self.display_name)
    }

    /// The plain-text and HTML parts.
    pub(crate) fn render(&self) -> Result<(String, String), String> {
        let text = VerifyEmailText { m: self }
            .render()
            .map_err(|e| format!("mail template: {e}"))?;
        let html = VerifyEmailHtml { m: self }
            .render()
            .map_err(|e| format!("mail template: {e}"))?;
        Ok((text, html))
    }
}

/// Renders a pair of templates into the plain-text and HTML parts.
fn parts(text: impl Template, html: impl Template) -> Result<(String, String), String> {
    let text = text.render().map_err(|e| format!("mail template: {e}"))?;
    let html = html.render().map_err(|e| format!("mail template: {e}"))?;
    Ok((text, html))
}

/// "Reset your password": the link of docs/mail.md, "Password reset".
#[derive(Debug, Clone)]
pub(crate) struct ResetPassword {
    /// `TOKEND_DISPLAY_NAME`.
    pub(crate) display_name: String,
    pub(crate) username: String,
    /// `{issuer}/auth/password/reset?token=…`: the one secret of the mail.
    pub(crate) link: String,
    /// How long the link works.
    pub(crate) minutes: u64,
}

#[derive(Template)]
#[template(path = "mail/reset_password.txt")]
struct ResetPasswordText<'a> {
    m: &'a ResetPassword,
}

#[derive(Template)]
#[template(path = "mail/reset_password.html")]
struct ResetPasswordHtml<'a> {
    m: &'a ResetPassword,
}

impl ResetPassword {
    pub(crate) fn subject(&self) -> String {
        format!("Reset your password for {}", self.display_name)
    }

    /// The plain-text and HTML parts.
    pub(crate) fn render(&self) -> Result<(String, String), String> {
        parts(ResetPasswordText { m: self }, ResetPasswordHtml { m: self })
    }
}

/// "Confirm your new email address": the link of docs/mail.md, "Email change", sent to the
/// new address.
#[derive(Debug, Clone)]
pub(crate) struct ConfirmEmailChange {
    pub(crate) display_name: String,
    pub(crate) username: String,
    /// The address the account has until the change is confirmed.
    pub(crate) old_email: String,
    /// `{issuer}/auth/verify-email?token=…`: the one secret of the mail.
    pub(crate) link: String,
    pub(crate) hours: u64,
}

#[derive(Template)]
#[template(path = "mail/confirm_email_change.txt")]
struct ConfirmEmailChangeText<'a> {
    m: &'a ConfirmEmailChange,
}

#[derive(Template)]
#[template(path = "mail/confirm_email_change.html")]
struct ConfirmEmailChangeHtml<'a> {
    m: &'a ConfirmEmailChange,
}

impl ConfirmEmailChange {
    pub(crate) fn subject(&self) -> String {
        format!("Confirm your new email address for {}", self.display_name)
    }

    /// The plain-text and HTML parts.
    pub(crate) fn render(&self) -> Result<(String, String), String> {
        parts(
            ConfirmEmailChangeText { m: self },
            ConfirmEmailChangeHtml { m: self },
        )
    }
}

/// "Your email address was changed": the notice the old address gets once a change is
/// confirmed (docs/mail.md, "Email change"). It carries no link with a secret.
#[derive(Debug, Clone)]
pub(crate) struct EmailChanged {
    pub(crate) display_name: String,
    pub(crate) username: String,
    pub(crate) new_email: String,
}

#[derive(Template)]
#[template(path = "mail/email_changed.txt")]
struct EmailChangedText<'a> {
    m: &'a EmailChanged,
}

#[derive(Template)]
#[template(path = "mail/email_changed.html")]
struct EmailChangedHtml<'a> {
    m: &'a EmailChanged,
}

impl EmailChanged {
    pub(crate) fn subject(&self) -> String {
        format!("Your email address for {} was changed", self.display_name)
    }

    /// The plain-text and HTML parts.
    pub(crate) fn render(&self) -> Result<(String, String), String> {
        parts(EmailChangedText { m: self }, EmailChangedHtml { m: self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_parts_carry_the_link_and_the_html_one_is_escaped() {
        let m = VerifyEmail {
            display_name: "Acme <Login>".into(),
            username: "ada".into(),
            link: "https://id.example/auth/verify-email?token=abc_DEF-123".into(),
            hours: 24,
        };
        let (text, html) = m.render().unwrap();
        assert!(text.contains("https://id.example/auth/verify-email?token=abc_DEF-123"));
        assert!(text.contains("Acme <Login>"));
        assert!(html.contains("href=\"https://id.example/auth/verify-email?token=abc_DEF-123\""));
        assert!(
            html.contains("Acme &#60;Login&#62;") || html.contains("Acme &lt;Login&gt;"),
            "{html}"
        );
        assert!(text.contains("24 hours") && html.contains("24 hours"));
    }

    #[test]
    fn the_lifecycle_mails_carry_their_link_and_the_notice_none() {
        let reset = ResetPassword {
            display_name: "Acme".into(),
            username: "ada".into(),
            link: "https://id.example/auth/password/reset?token=abc_DEF-123".into(),
            minutes: 30,
        };
        let (text, html) = reset.render().unwrap();
        assert!(text.contains(&reset.link) && html.contains(&format!("href=\"{}\"", reset.link)));
        assert!(text.contains("30 minutes") && html.contains("30 minutes"));
        let change = ConfirmEmailChange {
            display_name: "Acme".into(),
            username: "ada".into(),
            old_email: "ada@old.example".into(),
            link: "https://id.example/auth/verify-email?token=abc_DEF-123".into(),
            hours: 24,
        };
        let (text, html) = change.render().unwrap();
        assert!(text.contains(&change.link) && html.contains(&change.link));
        assert!(text.contains("ada@old.example"));
        let notice = EmailChanged {
            display_name: "Acme".into(),
            username: "ada".into(),
            new_email: "ada@new.example".into(),
        };
        let (text, html) = notice.render().unwrap();
        for part in [&text, &html] {
            assert!(part.contains("ada@new.example"), "{part}");
            assert!(!part.contains("token="), "{part}");
        }
    }
}
