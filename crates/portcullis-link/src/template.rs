//! Path templates: `/api/v1/scans/{id}` and `/files/{*rest}`.
//!
//! A template is a sequence of segments, each a literal, a named parameter matching exactly one
//! non-empty segment, or — last only — a catch-all matching the rest of the path (possibly
//! empty). Both sides parse templates with this code so a descriptor the SDK accepts is one the
//! gateway accepts.

use std::fmt;

/// Longest template accepted, in bytes.
pub const MAX_TEMPLATE_LEN: usize = 1024;
/// Most segments in a template.
pub const MAX_SEGMENTS: usize = 32;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Must equal the path segment exactly.
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param(String),
    /// `{*name}`: everything after, possibly nothing. Only as the last segment.
    CatchAll(String),
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathTemplate {
    raw: String,
    segments: Vec<Segment>,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Templates start with `/`.
    #[error("template must start with '/'")]
    NoLeadingSlash,
    /// Over [`MAX_TEMPLATE_LEN`] bytes or [`MAX_SEGMENTS`] segments.
    #[error("template too long")]
    TooLong,
    /// A segment that is empty (`//`) other than a lone trailing slash.
    #[error("empty segment")]
    EmptySegment,
    /// `{` without `}`, a brace inside a literal, or a bad parameter name.
    #[error("bad parameter segment {0:?}")]
    BadParam(String),
    /// `{*rest}` somewhere other than last.
    #[error("catch-all must be the last segment")]
    CatchAllNotLast,
    /// Characters outside the URL path alphabet.
    #[error("invalid character in template")]
    BadChar,
    /// The same parameter name twice.
    #[error("duplicate parameter {0:?}")]
    DuplicateParam(String),
}

fn valid_param_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn valid_literal_byte(b: u8) -> bool {
    // RFC 3986 pchar minus '%' (templates are matched against decoded-as-sent paths; a
    // literal never needs escaping in practice) and minus braces.
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

impl PathTemplate {
    /// Parse a template.
    pub fn parse(raw: &str) -> Result<Self, TemplateError> {
        if raw.len() > MAX_TEMPLATE_LEN {
            return Err(TemplateError::TooLong);
        }
        let rest = raw.strip_prefix('/').ok_or(TemplateError::NoLeadingSlash)?;
        let mut segments = Vec::new();
        if !rest.is_empty() {
            let parts: Vec<&str> = rest.split('/').collect();
            if parts.len() > MAX_SEGMENTS {
                return Err(TemplateError::TooLong);
            }
            let n = parts.len();
            for (i, part) in parts.into_iter().enumerate() {
                let last = i + 1 == n;
                if part.is_empty() {
                    // "/a/" is the literal "a" followed by a trailing slash; keep it as an
                    // empty literal so "/a" and "/a/" stay distinct routes.
                    if last {
                        segments.push(Segment::Literal(String::new()));
                        continue;
                    }
                    return Err(TemplateError::EmptySegment);
                }
                if let Some(inner) = part.strip_prefix('{') {
                    let inner = inner
                        .strip_suffix('}')
                        .ok_or_else(|| TemplateError::BadParam(part.into()))?;
                    if let Some(name) = inner.strip_prefix('*') {
                        if !valid_param_name(name) {
                            return Err(TemplateError::BadParam(part.into()));
                        }
                        if !last {
                            return Err(TemplateError::CatchAllNotLast);
                        }
                        segments.push(Segment::CatchAll(name.into()));
                    } else {
                        if !valid_param_name(inner) {
                            return Err(TemplateError::BadParam(part.into()));
                        }
                        segments.push(Segment::Param(inner.into()));
                    }
                } else if part.bytes().all(valid_literal_byte) {
                    segments.push(Segment::Literal(part.into()));
                } else if part.contains(['{', '}']) {
                    return Err(TemplateError::BadParam(part.into()));
                } else {
                    return Err(TemplateError::BadChar);
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for s in &segments {
            if let Segment::Param(n) | Segment::CatchAll(n) = s {
                if !seen.insert(n.as_str()) {
                    return Err(TemplateError::DuplicateParam(n.clone()));
                }
            }
        }
        Ok(Self {
            raw: raw.into(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Its segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The template with parameter names erased: two templates with the same shape match the
    /// same paths (`/a/{x}` and `/a/{y}`), which is what a route conflict is.
    pub fn shape(&self) -> String {
        let mut s = String::new();
        for seg in &self.segments {
            s.push('/');
            match seg {
                Segment::Literal(l) => s.push_str(l),
                Segment::Param(_) => s.push_str("{}"),
                Segment::CatchAll(_) => s.push_str("{*}"),
            }
        }
        if s.is_empty() {
            s.push('/');
        }
        s
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds() {
        let t = PathTemplate::parse("/api/v1/scans/{id}/{*rest}").unwrap();
        assert_eq!(
            t.segments(),
            &[
                Segment::Literal("api".into()),
                Segment::Literal("v1".into()),
                Segment::Literal("scans".into()),
                Segment::Param("id".into()),
                Segment::CatchAll("rest".into()),
            ]
        );
        assert_eq!(t.shape(), "/api/v1/scans/{}/{*}");
        assert_eq!(PathTemplate::parse("/").unwrap().shape(), "/");
    }

    #[test]
    fn refuses_bad_templates() {
        for bad in [
            "api", "/a//b", "/{", "/{}", "/{*}", "/{*a}/b", "/a{b}", "/{a}/{a}", "/a b", "/%20",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
        assert!(PathTemplate::parse(&format!("/{}", "a/".repeat(40))).is_err());
    }
}
