//! The API key parser on arbitrary input: never panics, stays within its bounds, and whatever
//! it accepts re-assembles to exactly the input (so the checksum covers every byte).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::auth::key;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = key::parse(s) {
        assert!(s.len() <= key::MAX_KEY_LEN);
        assert!(key::valid_key_id(p.key_id));
        assert!(p.secret.len() >= key::MIN_SECRET_LEN);
        assert_eq!(key::format_key(p.key_id, p.secret), s);
    }
});
