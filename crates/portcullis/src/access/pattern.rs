//! Capability names and the patterns roles grant them with.
//!
//! # Capability names
//!
//! ```text
//! capability = segment *( "." segment )        ; at most 128 bytes in all
//! segment    = 1*( %x61-7A / DIGIT / "_" / ":" / "-" )   ; a-z 0-9 _ : -
//! ```
//!
//! `orders.read`, `echo.write`, `iam.users.write`. The first segment is the capability's
//! *namespace*: a gateway area (`iam`, `metrics`) or, by convention, the service that declares
//! it. Every capability name is a valid API key scope ([`crate::auth::valid_scope`] accepts
//! the same bytes), but not the reverse: empty segments (`a..b`, `.a`, `a.`) are not names, and
//! no pattern and no scope matches them.
//!
//! # Patterns
//!
//! A role grants the capabilities its patterns match. A pattern is exactly one of:
//!
//! ```text
//! pattern = "*"                  ; every capability
//!         / capability ".*"      ; every capability that starts with that capability and a dot
//!         / "*." segment         ; every capability whose last segment is that segment
//!         / capability           ; exactly that capability
//! ```
//!
//! at most 128 bytes. So `orders.*` matches `orders.read` and `orders.items.read` but not
//! `orders` itself; `*.read` matches `orders.read` and `iam.users.read` but not `read`. Any
//! other use of `*` — `orders.*.read`, `*.*`, `or*`, `*.orders.*`, `**` — and any byte outside
//! the name alphabet is refused when the configuration is loaded, with the key path of the
//! pattern: a pattern that would silently grant nothing (or everything) is worse than a
//! gateway that does not start.
//!
//! Matching is a comparison of bytes; it never allocates, and it is never true for a string
//! that is not a capability name.

use std::fmt;
use std::sync::Arc;

/// Longest capability name (and pattern), bytes: the bound API key scopes have too.
pub const MAX_CAPABILITY_LEN: usize = 128;

fn segment_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b':' | b'-')
}

/// Is `s` one segment (`[a-z0-9_:-]+`)?
fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(segment_byte)
}

/// Is `s` a capability name (see the module documentation)?
pub fn valid_capability(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_CAPABILITY_LEN || b[0] == b'.' || b[b.len() - 1] == b'.' {
        return false;
    }
    let mut prev_dot = false;
    for &c in b {
        if c == b'.' {
            if prev_dot {
                return false;
            }
            prev_dot = true;
        } else if segment_byte(c) {
            prev_dot = false;
        } else {
            return false;
        }
    }
    true
}

/// The namespace of a capability name: its first segment.
pub fn namespace(capability: &str) -> &str {
    capability.split('.').next().unwrap_or(capability)
}

/// Namespaces that administer the gateway itself (identities, roles, keys; the admin API). A
/// `*.segment` pattern never matches in them — `writer` (`*.read`, `*.write`) must not be able
/// to grant itself `admin` — so only `*` or a pattern naming the namespace (`iam.*`,
/// `iam.users.read`) grants them.
pub const ADMINISTRATIVE_NAMESPACES: &[&str] = &["iam", "admin"];

/// A parsed capability pattern (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `*`: every capability.
    All,
    /// `prefix.*`: every capability under `prefix.` (the prefix is held without the dot).
    Under(Arc<str>),
    /// `*.segment`: every capability whose last segment is `segment`.
    Last(Arc<str>),
    /// Exactly this capability.
    Exact(Arc<str>),
}

/// Why a pattern was refused; the message is shown with the pattern's key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Empty or longer than [`MAX_CAPABILITY_LEN`].
    #[error("a pattern is 1-128 bytes")]
    Length,
    /// A `*` somewhere other than the three places the grammar allows.
    #[error(
        "`*` may only be the whole pattern (`*`), the last segment (`orders.*`) or the first of two (`*.read`)"
    )]
    Wildcard,
    /// Not a capability name: a byte outside `[a-z0-9_:-.]` or an empty segment.
    #[error("capability names are dot-separated segments of [a-z0-9_:-]")]
    Name,
}

impl Pattern {
    /// Parse `s`, refusing everything the grammar does not produce.
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        if s.is_empty() || s.len() > MAX_CAPABILITY_LEN {
            return Err(PatternError::Length);
        }
        if s == "*" {
            return Ok(Self::All);
        }
        if let Some(prefix) = s.strip_suffix(".*") {
            if prefix.contains('*') {
                return Err(PatternError::Wildcard);
            }
            if !valid_capability(prefix) {
                return Err(PatternError::Name);
            }
            return Ok(Self::Under(prefix.into()));
        }
        if let Some(last) = s.strip_prefix("*.") {
            if last.contains('*') || last.contains('.') {
                return Err(PatternError::Wildcard);
            }
            if !valid_segment(last) {
                return Err(PatternError::Name);
            }
            return Ok(Self::Last(last.into()));
        }
        if s.contains('*') {
            return Err(PatternError::Wildcard);
        }
        if !valid_capability(s) {
            return Err(PatternError::Name);
        }
        Ok(Self::Exact(s.into()))
    }

    /// Does the pattern match `capability`? Never for a string that is not a capability name.
    pub fn matches(&self, capability: &str) -> bool {
        match self {
            Self::Exact(name) => **name == *capability,
            Self::All => valid_capability(capability),
            Self::Under(prefix) => {
                let p = prefix.len();
                capability.len() > p + 1
                    && capability.as_bytes()[p] == b'.'
                    && capability.starts_with(&**prefix)
                    && valid_capability(capability)
            }
            Self::Last(last) => {
                let (c, l) = (capability.len(), last.len());
                // `*.write` must not make a writer an administrator: identity and gateway
                // administration is granted only by `*` or a pattern that names it.
                !ADMINISTRATIVE_NAMESPACES.contains(&namespace(capability))
                    && c > l + 1
                    && capability.as_bytes()[c - l - 1] == b'.'
                    && capability.ends_with(&**last)
                    && valid_capability(capability)
            }
        }
    }

    /// The namespace the pattern is confined to (the first segment of `orders.*` and of
    /// `orders.read`); `None` for `*` and `*.read`, which span namespaces by design.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Self::All | Self::Last(_) => None,
            Self::Under(p) | Self::Exact(p) => Some(namespace(p)),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Under(p) => write!(f, "{p}.*"),
            Self::Last(l) => write!(f, "*.{l}"),
            Self::Exact(n) => f.write_str(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn names() {
        for ok in ["orders.read", "a", "iam.users.write", "x:y-z_1.r"] {
            assert!(valid_capability(ok), "{ok}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "Orders.read",
            "a b",
            "a/b",
            "*",
            "a.*",
        ] {
            assert!(!valid_capability(bad), "{bad}");
        }
        assert!(!valid_capability(&"a".repeat(129)));
        assert!(valid_capability(&"a".repeat(128)));
        assert_eq!(namespace("iam.users.read"), "iam");
        assert_eq!(namespace("metrics"), "metrics");
    }

    #[test]
    fn the_four_forms() {
        assert_eq!(p("*"), Pattern::All);
        assert_eq!(p("orders.*"), Pattern::Under("orders".into()));
        assert_eq!(p("iam.users.*"), Pattern::Under("iam.users".into()));
        assert_eq!(p("*.read"), Pattern::Last("read".into()));
        assert_eq!(p("orders.read"), Pattern::Exact("orders.read".into()));
    }

    #[test]
    fn everything_else_is_refused() {
        for (bad, why) in [
            ("", PatternError::Length),
            ("orders.*.read", PatternError::Wildcard),
            ("*.*", PatternError::Wildcard),
            ("or*", PatternError::Wildcard),
            ("*.orders.*", PatternError::Wildcard),
            ("**", PatternError::Wildcard),
            ("*.orders.read", PatternError::Wildcard),
            (".*", PatternError::Name),
            ("*.", PatternError::Name),
            ("Orders.read", PatternError::Name),
            ("orders..read", PatternError::Name),
            ("orders.", PatternError::Name),
            ("orders read", PatternError::Name),
        ] {
            assert_eq!(Pattern::parse(bad), Err(why), "{bad:?}");
        }
        assert_eq!(Pattern::parse(&"a".repeat(129)), Err(PatternError::Length));
    }

    #[test]
    fn matching() {
        assert!(p("orders.*").matches("orders.read"));
        assert!(p("orders.*").matches("orders.items.read"));
        assert!(!p("orders.*").matches("orders"));
        assert!(!p("orders.*").matches("ordersx.read"));
        assert!(p("*.read").matches("orders.items.read"));
        // Administration is granted only by `*` or by naming it.
        assert!(!p("*.read").matches("iam.users.read"));
        assert!(!p("*.write").matches("admin.config.write"));
        assert!(p("iam.*").matches("iam.users.read"));
        assert!(p("*").matches("iam.roles.write"));
        assert!(!p("*.read").matches("read"));
        assert!(!p("*.read").matches("orders.xread"));
        assert!(p("*").matches("anything.at.all"));
        assert!(!p("*").matches("a..b"));
        assert!(!p("orders.*").matches("orders..read"));
        assert!(p("orders.read").matches("orders.read"));
        assert!(!p("orders.read").matches("orders.read.x"));
    }

    #[test]
    fn namespaces() {
        assert_eq!(p("orders.*").namespace(), Some("orders"));
        assert_eq!(p("iam.users.read").namespace(), Some("iam"));
        assert_eq!(p("*").namespace(), None);
        assert_eq!(p("*.read").namespace(), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn segment() -> impl Strategy<Value = String> {
        "[a-z0-9_:-]{1,6}"
    }

    /// Valid capability names, often sharing segments so prefixes and suffixes collide.
    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                segment(),
                Just("read".to_string()),
                Just("orders".to_string())
            ],
            1..5,
        )
        .prop_map(|s| s.join("."))
    }

    /// Strings over the pattern alphabet and a few others, mostly invalid.
    fn junk() -> impl Strategy<Value = String> {
        "[a-z.*A_ -]{0,12}"
    }

    proptest! {
        #[test]
        fn a_literal_matches_exactly_itself(a in name(), b in name()) {
            let pat = Pattern::parse(&a).unwrap();
            prop_assert!(pat.matches(&a));
            prop_assert_eq!(pat.matches(&b), a == b);
        }

        #[test]
        fn star_matches_every_name(x in name()) {
            prop_assert!(Pattern::All.matches(&x));
        }

        #[test]
        fn under_matches_iff_the_name_starts_with_the_prefix_and_a_dot(p in name(), x in name()) {
            let pat = Pattern::parse(&format!("{p}.*")).unwrap();
            prop_assert_eq!(pat.matches(&x), x.starts_with(&format!("{p}.")));
            let below = format!("{p}.{x}");
            if below.len() <= MAX_CAPABILITY_LEN {
                prop_assert!(pat.matches(&below));
            }
            prop_assert!(!pat.matches(&p));
        }

        #[test]
        fn last_matches_iff_the_name_ends_with_a_dot_and_the_segment(s in segment(), x in name()) {
            let pat = Pattern::parse(&format!("*.{s}")).unwrap();
            prop_assert_eq!(pat.matches(&x), x.ends_with(&format!(".{s}")));
            prop_assert!(!pat.matches(&s));
        }

        #[test]
        fn nothing_matches_an_invalid_name(pat in prop_oneof![
            Just("*".to_string()),
            name().prop_map(|n| format!("{n}.*")),
            segment().prop_map(|s| format!("*.{s}")),
            name(),
        ], x in junk()) {
            prop_assume!(!valid_capability(&x));
            let pat = Pattern::parse(&pat).unwrap();
            prop_assert!(!pat.matches(&x));
        }

        #[test]
        fn parse_accepts_only_the_grammar_and_prints_back_what_it_read(s in junk()) {
            if let Ok(pat) = Pattern::parse(&s) {
                prop_assert_eq!(pat.to_string(), s.clone());
                let grammatical = s == "*"
                    || s.strip_suffix(".*").is_some_and(valid_capability)
                    || s.strip_prefix("*.").is_some_and(valid_segment)
                    || valid_capability(&s);
                prop_assert!(grammatical, "{:?} parsed as {:?}", s, pat);
            }
        }

        #[test]
        fn every_grammatical_pattern_parses(pat in prop_oneof![
            Just("*".to_string()),
            name().prop_map(|n| format!("{n}.*")),
            segment().prop_map(|s| format!("*.{s}")),
            name(),
        ]) {
            let parsed = Pattern::parse(&pat).unwrap();
            prop_assert_eq!(parsed.to_string(), pat);
        }

        #[test]
        fn a_match_is_a_valid_name(pat in prop_oneof![
            Just("*".to_string()),
            name().prop_map(|n| format!("{n}.*")),
            segment().prop_map(|s| format!("*.{s}")),
            name(),
        ], x in prop_oneof![name(), junk()]) {
            if Pattern::parse(&pat).unwrap().matches(&x) {
                prop_assert!(valid_capability(&x));
            }
        }
    }
}
