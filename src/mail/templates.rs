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
}
