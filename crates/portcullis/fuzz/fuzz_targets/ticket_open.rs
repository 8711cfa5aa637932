//! Opening a TLS session ticket a client brought, on arbitrary bytes: never panics, and opens
//! nothing but what the ticketer sealed. Each input is tried as it is and behind the name of
//! the live key, so the AEAD path runs, not only the name lookup.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::tls::tickets::RotatingTicketer;
use std::sync::LazyLock;

static TICKETER: LazyLock<(RotatingTicketer, Vec<u8>)> = LazyLock::new(|| {
    let t = RotatingTicketer::new(
        std::time::Duration::from_secs(3600),
        portcullis::clock::Clock::system(),
    )
    .unwrap();
    // A long sealed ticket, so the length bound lets long inputs through to the AEAD.
    let good = t.seal(&[7u8; 2048]).unwrap();
    (t, good)
});

fuzz_target!(|data: &[u8]| {
    let (t, good) = &*TICKETER;
    if t.open(data).is_some() {
        assert_eq!(data, good.as_slice(), "opened a ticket it never sealed");
    }
    let mut named = good[..16].to_vec();
    named.extend_from_slice(data);
    if let Some(plain) = t.open(&named) {
        // Only a ticket it sealed opens: the AEAD tag makes anything else fail.
        assert_eq!(named, *good, "opened a ticket it never sealed");
        assert_eq!(plain, vec![7u8; 2048]);
    }
});
