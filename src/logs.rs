//! Log output that never shows a secret: the external id (and any other value registered with
//! [`redact`]) is replaced by `***` in every line, at every level — the AWS SDK's trace logs
//! print request inputs and bodies, the STS AssumeRole input with its `ExternalId` among them.

use std::io::Write;
use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// The replacement shown instead of a secret.
pub const REDACTED: &str = "***";

/// Hides `secret` from every later log line, as written and as URL-encoded (the form an STS
/// query body carries). Values shorter than 2 characters are not registered.
pub fn redact(secret: &str) {
    if secret.len() < 2 {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    for form in [secret.to_owned(), form_encoded(secret)] {
        if !secrets.contains(&form) {
            secrets.push(form);
        }
    }
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

fn form_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `line` with every registered secret replaced.
pub fn scrub(line: &str) -> std::borrow::Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    if !secrets.iter().any(|s| line.contains(s.as_str())) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = line.to_owned();
    for secret in secrets.iter() {
        out = out.replace(secret.as_str(), REDACTED);
    }
    std::borrow::Cow::Owned(out)
}

/// Standard error through [`scrub`]: a `tracing_subscriber` writer.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScrubbedStderr;

impl Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ScrubbedStderr {
    type Writer = ScrubbedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_as_written_and_as_url_encoded() {
        redact("ext-id/with+chars=1");
        assert_eq!(
            scrub("ExternalId=ext-id%2Fwith%2Bchars%3D1&Version=2011"),
            "ExternalId=***&Version=2011"
        );
        assert_eq!(
            scrub(r#"external_id: Some("ext-id/with+chars=1")"#),
            r#"external_id: Some("***")"#
        );
        assert_eq!(scrub("nothing secret"), "nothing secret");
    }
}
