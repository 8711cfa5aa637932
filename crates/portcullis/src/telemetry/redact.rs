//! The one redaction layer every log line passes through, whatever code wrote it.
//!
//! Call sites never log headers or credentials, but a guarantee cannot rest on every call site
//! being careful: this writer sits between the formatter and the output and masks anything
//! shaped like a credential — API keys (`pcs_…`), bearer and basic credentials, JWTs, and the
//! values of fields named like secrets (`authorization`, `cookie`, `token`, `password`,
//! `secret`, `nonce`, `api_key`, `pepper`).

use std::io::{self, Write};
use tracing_subscriber::fmt::MakeWriter;

/// Field names whose values are always masked.
const SECRET_FIELDS: [&str; 11] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "token",
    "password",
    "secret",
    "nonce",
    "api_key",
    "pepper",
    "credential",
];

const MASK: &str = "***";

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~' | b'+' | b'/' | b'=')
}

/// A URL as the configuration is shown (`config show`): scheme, host, port and path kept,
/// the user information and the query masked, since that is where credentials ride
/// (`https://user:token@collector/v1/traces?api-key=…`).
pub fn url_for_display(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return MASK.into();
    };
    let (authority, tail) = rest
        .find(['/', '?', '#'])
        .map_or((rest, ""), |i| rest.split_at(i));
    let host = match authority.rsplit_once('@') {
        Some((_, h)) => format!("***@{h}"),
        None => authority.to_string(),
    };
    let tail = tail.split('#').next().unwrap_or("");
    match tail.split_once('?') {
        Some((path, _)) => format!("{scheme}://{host}{path}?***"),
        None => format!("{scheme}://{host}{tail}"),
    }
}

/// A webhook URL as the configuration shows it: only scheme and host, since webhook
/// services put their credential in the path itself (`https://hooks.example/services/T0/B0/XXXX`)
/// as well as in the user information or query.
pub fn webhook_url_for_display(url: &str) -> String {
    let shown = url_for_display(url);
    let Some((scheme, rest)) = shown.split_once("://") else {
        return shown;
    };
    let host = rest.find(['/', '?']).map_or(rest, |i| &rest[..i]);
    if host.len() == rest.len() {
        shown
    } else {
        format!("{scheme}://{host}/{MASK}")
    }
}

/// Serialise a webhook URL as [`webhook_url_for_display`] shows it (serde `serialize_with`).
pub fn serialize_webhook_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&webhook_url_for_display(url))
}

/// Serialise an optional URL as [`url_for_display`] shows it (serde `serialize_with`).
pub fn serialize_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_some(&url_for_display(u)),
        None => s.serialize_none(),
    }
}

/// Mask credentials in one formatted log line.
pub fn redact(line: &str) -> String {
    // Most lines hold nothing secret-shaped: one lowercase copy and a few searches decide that,
    // instead of a rewrite pass (and a copy) per pattern.
    let lower = line.to_ascii_lowercase();
    let suspicious = SECRET_FIELDS.iter().any(|f| lower.contains(f))
        || lower.contains("pcs_")
        || lower.contains("bearer ")
        || lower.contains("basic ")
        || line.contains("eyJ");
    if !suspicious {
        return line.to_string();
    }
    let mut out = line.to_string();
    // Values of secret-named fields: `name=value`, `"name":"value"`, `name: value`.
    for field in SECRET_FIELDS {
        out = mask_after_key(&out, field);
    }
    // Shapes of credentials anywhere in the line.
    out = mask_prefixed(&out, "pcs_", 0);
    out = mask_prefixed_ci(&out, "bearer ");
    out = mask_prefixed_ci(&out, "basic ");
    out = mask_jwts(&out);
    out
}

/// Mask the token that follows each occurrence of `prefix`, keeping `keep` bytes of it.
fn mask_prefixed(s: &str, prefix: &str, keep: usize) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(prefix) {
        let start = i + prefix.len();
        let len = rest[start..]
            .bytes()
            .take_while(|b| is_token_byte(*b))
            .count();
        out.push_str(&rest[..start.min(i + prefix.len())]);
        if len > keep {
            out.push_str(MASK);
        } else {
            out.push_str(&rest[start..start + len]);
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

fn mask_prefixed_ci(s: &str, prefix: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    while let Some(i) = lower[pos..].find(prefix) {
        let start = pos + i + prefix.len();
        let len = s[start..].bytes().take_while(|b| is_token_byte(*b)).count();
        out.push_str(&s[pos..start]);
        if len > 0 {
            out.push_str(MASK);
        }
        pos = start + len;
    }
    out.push_str(&s[pos..]);
    out
}

fn mask_after_key(s: &str, key: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    while let Some(i) = lower[pos..].find(key) {
        let kstart = pos + i;
        let kend = kstart + key.len();
        // The key must stand alone: not part of a longer identifier.
        let before_ok = kstart == 0 || !lower.as_bytes()[kstart - 1].is_ascii_alphanumeric();
        let after = &s[kend..];
        let sep_len = after
            .bytes()
            .take_while(|b| matches!(b, b'"' | b'=' | b':' | b' '))
            .count();
        let has_sep = after[..sep_len].contains(['=', ':']);
        if !before_ok || !has_sep {
            out.push_str(&s[pos..kend]);
            pos = kend;
            continue;
        }
        let vstart = kend + sep_len;
        let quoted = s[..vstart].ends_with('"');
        let vlen = if quoted {
            // Up to the closing quote, honouring backslash escapes.
            let b = &s.as_bytes()[vstart..];
            let mut j = 0;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            // An escape before a multi-byte character must not leave us inside it.
            let mut end = (vstart + j).min(s.len());
            while !s.is_char_boundary(end) {
                end += 1;
            }
            end - vstart
        } else {
            s[vstart..]
                .bytes()
                .take_while(|b| !matches!(b, b' ' | b',' | b'}' | b'\n'))
                .count()
        };
        out.push_str(&s[pos..vstart]);
        if vlen > 0 {
            out.push_str(MASK);
        }
        pos = vstart + vlen;
    }
    out.push_str(&s[pos..]);
    out
}

/// JWTs: three base64url parts separated by dots, the first starting with `eyJ`.
fn mask_jwts(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("eyJ") {
        let len = rest[i..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            .count();
        let cand = &rest[i..i + len];
        out.push_str(&rest[..i]);
        if cand.matches('.').count() >= 2 {
            out.push_str(MASK);
        } else {
            out.push_str(cand);
        }
        rest = &rest[i + len..];
    }
    out.push_str(rest);
    out
}

/// A writer that redacts each complete line before passing it on.
pub struct RedactingWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> RedactingWriter<W> {
    /// Redact what is written, line by line, into `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: Vec::new(),
        }
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // Bound the buffer: a line longer than 64 KiB is flushed in pieces.
        self.buf.extend_from_slice(data);
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            self.inner
                .write_all(redact(&String::from_utf8_lossy(&line)).as_bytes())?;
        }
        if self.buf.len() > 64 * 1024 {
            let line = std::mem::take(&mut self.buf);
            self.inner
                .write_all(redact(&String::from_utf8_lossy(&line)).as_bytes())?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.inner
                .write_all(redact(&String::from_utf8_lossy(&line)).as_bytes())?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// `MakeWriter` that wraps another in [`RedactingWriter`].
pub struct Redacting<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: self.0.make_writer(),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{redact, url_for_display, webhook_url_for_display};

    #[test]
    fn shown_webhook_urls_keep_only_scheme_and_host() {
        for (url, shown) in [
            (
                "https://hooks.example/services/T0/B0/XXXXSECRET",
                "https://hooks.example/***",
            ),
            (
                "https://u:p@hooks.example/x?k=SECRET",
                "https://***@hooks.example/***",
            ),
            ("http://127.0.0.1:9/", "http://127.0.0.1:9/***"),
            ("http://127.0.0.1:9", "http://127.0.0.1:9"),
            ("not a url SECRET", "***"),
        ] {
            assert_eq!(webhook_url_for_display(url), shown, "{url}");
        }
    }

    #[test]
    fn shown_urls_keep_where_they_point_and_lose_credentials() {
        for (url, shown) in [
            (
                "http://127.0.0.1:4318/v1/traces",
                "http://127.0.0.1:4318/v1/traces",
            ),
            (
                "https://user:s3cret@otel.example:443/v1/traces?api-key=abc#x",
                "https://***@otel.example:443/v1/traces?***",
            ),
            (
                "https://tok@otel.example?k=v",
                "https://***@otel.example?***",
            ),
            ("not a url s3cret", "***"),
        ] {
            assert_eq!(url_for_display(url), shown);
        }
    }

    #[test]
    fn masks_credentials() {
        let key = "pcs_abcd1234_0123456789ABCDEFabcdefXYZ123";
        for line in [
            format!("authorization=Bearer {key}"),
            format!(r#"{{"authorization":"Bearer {key}","x":1}}"#),
            format!("error: key {key} refused"),
            "cookie: session=abc123; other=1".to_string(),
            r#"{"password":"hunter2"}"#.to_string(),
            "token=s3cr3t-value next=1".to_string(),
            "jwt eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl done".to_string(),
            "Basic dXNlcjpwYXNz".to_string(),
        ] {
            let r = redact(&line);
            for secret in [
                key,
                "abc123",
                "hunter2",
                "s3cr3t",
                "c2lnbmF0dXJl",
                "dXNlcjpwYXNz",
            ] {
                assert!(!r.contains(secret), "{line} → {r}");
            }
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        for l in [
            r#"{"token":"\é"}"#,
            "token=",
            r#"{"token":"\"#,
            "pcs_",
            "bearer ",
            "eyJ",
        ] {
            let _ = redact(l);
        }
    }

    #[test]
    fn leaves_ordinary_lines() {
        let l = r#"{"level":"INFO","route":"/echo/{*rest}","status":200,"tokens_used":3}"#;
        assert_eq!(redact(l), l);
    }
}
