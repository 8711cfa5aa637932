//! The names an X.509 certificate gives its subject, read from its DER for the one rule
//! webpki leaves to us: the subject CN as a fallback name (RFC 6125 §6.4.4).
//!
//! webpki matches SAN dNSNames and never reads the CN. A careful operator expects the CN to
//! count only for a certificate with no DNS or URI SAN at all — a certificate that names
//! itself in its SAN means what its SAN says — so [`CertNames`] reports both facts: whether
//! such a SAN exists, and the subject's CN. The reader is a bounded DER walker (lengths of at
//! most four bytes, never past its input, single-byte tags only): it runs on certificates the
//! chain check has already accepted, but it would refuse, not panic on, anything else.

/// OID 2.5.29.17, subjectAltName, as its DER content.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// OID 2.5.4.3, commonName, as its DER content.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const INTEGER: u8 = 0x02;
/// `[0] EXPLICIT Version`.
const VERSION: u8 = 0xa0;
/// `[3] EXPLICIT Extensions`.
const EXTENSIONS: u8 = 0xa3;
/// GeneralName `dNSName [2] IA5String`.
const SAN_DNS: u8 = 0x82;
/// GeneralName `uniformResourceIdentifier [6] IA5String`.
const SAN_URI: u8 = 0x86;
/// The directory string types a CN may be in that are ASCII-compatible: UTF8String,
/// PrintableString, IA5String.
const CN_STRINGS: [u8; 3] = [0x0c, 0x13, 0x16];

/// The subject names of one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertNames {
    /// The certificate has a SAN extension with at least one dNSName or URI.
    pub dns_or_uri_san: bool,
    /// The subject's commonName values, in order (UTF-8; other string types are left out).
    pub common_names: Vec<String>,
}

impl CertNames {
    /// Read them from a DER certificate; `None` if it is not one.
    pub fn parse(der: &[u8]) -> Option<Self> {
        let (cert, rest) = expect(der, SEQUENCE)?;
        if !rest.is_empty() {
            return None;
        }
        let (tbs, _) = expect(cert, SEQUENCE)?;
        let mut tbs = tbs;
        if peek_tag(tbs) == Some(VERSION) {
            tbs = tlv(tbs)?.2;
        }
        let (_serial, tbs) = expect(tbs, INTEGER)?;
        let (_signature, tbs) = expect(tbs, SEQUENCE)?;
        let (_issuer, tbs) = expect(tbs, SEQUENCE)?;
        let (_validity, tbs) = expect(tbs, SEQUENCE)?;
        let (subject, tbs) = expect(tbs, SEQUENCE)?;
        let (_spki, mut tbs) = expect(tbs, SEQUENCE)?;
        let mut names = Self {
            dns_or_uri_san: false,
            common_names: common_names(subject)?,
        };
        // issuerUniqueID [1], subjectUniqueID [2], then extensions [3].
        while let Some((tag, content, rest)) = tlv(tbs) {
            if tag == EXTENSIONS {
                names.dns_or_uri_san = has_dns_or_uri_san(content)?;
            }
            tbs = rest;
        }
        if !tbs.is_empty() {
            return None;
        }
        Some(names)
    }

    /// Does the certificate name `service`: by a SAN (`san_names`, webpki's dNSName match)
    /// when it has a DNS or URI SAN, otherwise by its one CN, compared without regard to
    /// ASCII case? Several CNs are ambiguous and name nothing.
    pub fn names(&self, service: &str, san_names: impl FnOnce() -> bool) -> bool {
        if self.dns_or_uri_san {
            return san_names();
        }
        matches!(self.common_names.as_slice(), [cn] if cn.eq_ignore_ascii_case(service))
    }
}

/// The CN values of a Name (`RDNSequence`); `None` if it is malformed.
fn common_names(mut name: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !name.is_empty() {
        let (mut rdn, rest) = expect(name, SET)?;
        while !rdn.is_empty() {
            let (atv, more) = expect(rdn, SEQUENCE)?;
            let (oid, value) = expect(atv, OID)?;
            let (tag, value, tail) = tlv(value)?;
            if !tail.is_empty() {
                return None;
            }
            if oid == OID_CN && CN_STRINGS.contains(&tag) {
                out.push(std::str::from_utf8(value).ok()?.to_string());
            }
            rdn = more;
        }
        name = rest;
    }
    Some(out)
}

/// Does an `Extensions` field hold a SAN with a dNSName or URI? `None` if malformed.
fn has_dns_or_uri_san(explicit: &[u8]) -> Option<bool> {
    let (mut exts, rest) = expect(explicit, SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let mut found = false;
    while !exts.is_empty() {
        let (ext, more) = expect(exts, SEQUENCE)?;
        let (oid, mut ext) = expect(ext, OID)?;
        if peek_tag(ext) == Some(BOOLEAN) {
            ext = tlv(ext)?.2;
        }
        let (value, _) = expect(ext, OCTET_STRING)?;
        if oid == OID_SAN {
            let (mut general_names, _) = expect(value, SEQUENCE)?;
            while let Some((tag, _, rest)) = tlv(general_names) {
                found |= tag == SAN_DNS || tag == SAN_URI;
                general_names = rest;
            }
            if !general_names.is_empty() {
                return None;
            }
        }
        exts = more;
    }
    Some(found)
}

fn peek_tag(input: &[u8]) -> Option<u8> {
    input.first().copied()
}

/// One element with tag `want`: (content, rest).
fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    match tlv(input)? {
        (tag, content, rest) if tag == want => Some((content, rest)),
        _ => None,
    }
}

/// One DER element: (tag, content, rest). Single-byte tags and definite lengths of at most
/// four bytes only; never reads past `input`.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers: nothing in a certificate's names uses them
    }
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let (bytes, rest) = input.split_at(n);
        input = rest;
        bytes.iter().fold(0usize, |l, b| (l << 8) | usize::from(*b))
    };
    if input.len() < len {
        return None;
    }
    let (content, rest) = input.split_at(len);
    Some((tag, content, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: Vec<rcgen::SanType>, cns: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (i, cn) in cns.iter().enumerate() {
            // rcgen keeps one value per type: a second CN goes in under the OID itself.
            let t = match i {
                0 => rcgen::DnType::CommonName,
                _ => rcgen::DnType::CustomDnType(vec![2, 5, 4, 3]),
            };
            p.distinguished_name.push(t, *cn);
        }
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn dns(n: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(n.try_into().unwrap())
    }

    #[test]
    fn a_certificate_without_san_is_named_by_its_one_cn() {
        let n = CertNames::parse(&cert(vec![], &["echo"])).unwrap();
        assert!(!n.dns_or_uri_san);
        assert_eq!(n.common_names, ["echo"]);
        assert!(n.names("echo", || unreachable!("no SAN to match")));
        assert!(!n.names("billing", || true));
        let n = CertNames::parse(&cert(vec![], &["Echo"])).unwrap();
        assert!(
            n.names("echo", || false),
            "DNS names compare without ASCII case"
        );
    }

    #[test]
    fn a_dns_or_uri_san_wins_over_the_cn() {
        for san in [
            dns("billing"),
            rcgen::SanType::URI("spiffe://example.org/billing".try_into().unwrap()),
        ] {
            let n = CertNames::parse(&cert(vec![san], &["echo"])).unwrap();
            assert!(n.dns_or_uri_san);
            assert!(!n.names("echo", || false), "the SAN decides");
        }
        // An IP address SAN is not a name a service could have: the CN still counts.
        let ip = rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap());
        let n = CertNames::parse(&cert(vec![ip], &["echo"])).unwrap();
        assert!(!n.dns_or_uri_san);
        assert!(n.names("echo", || false));
    }

    #[test]
    fn several_cns_or_none_name_nothing() {
        let n = CertNames::parse(&cert(vec![], &["echo", "billing"])).unwrap();
        assert_eq!(n.common_names.len(), 2);
        assert!(!n.names("echo", || true));
        let n = CertNames::parse(&cert(vec![], &[])).unwrap();
        assert!(!n.names("echo", || true));
    }

    #[test]
    fn truncated_or_trailing_input_is_refused_and_no_input_panics() {
        let der = cert(vec![dns("echo")], &["echo"]);
        for cut in 0..der.len() {
            assert_eq!(CertNames::parse(&der[..cut]), None, "cut at {cut}");
        }
        let mut long = der.clone();
        long.push(0);
        assert_eq!(CertNames::parse(&long), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = CertNames::parse(&bytes);
        }

        #[test]
        fn a_flipped_byte_never_panics(at in 0usize..400, bit in 0u8..8) {
            let mut der = cert(vec![dns("echo")], &["echo"]);
            let i = at % der.len();
            der[i] ^= 1 << bit;
            let _ = CertNames::parse(&der);
        }
    }
}
