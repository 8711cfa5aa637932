//! Reading the subject names of a certificate (`tls::cert_names`, the CN fallback of link
//! mTLS) from arbitrary bytes: never panics, and a certificate that parses names its service
//! only by the rule (a DNS/URI SAN wins; else exactly one CN).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::tls::cert_names::CertNames;

fuzz_target!(|data: &[u8]| {
    if let Some(names) = CertNames::parse(data) {
        // Parsing is a function of the bytes alone.
        assert_eq!(CertNames::parse(data), Some(names.clone()));
        for cn in &names.common_names {
            assert!(data.len() >= cn.len(), "a CN longer than its certificate");
        }
    }
});
