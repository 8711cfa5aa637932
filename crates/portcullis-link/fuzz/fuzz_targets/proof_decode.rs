//! The signed-bytes decoder: never panics, and whatever it accepts re-encodes to exactly the
//! bytes it was given (the encoding is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_link::proof::Proof;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Proof::decode(data) {
        let again = p.encode().expect("a decoded proof encodes");
        assert_eq!(again, data);
        assert_eq!(Proof::decode(&again).as_ref(), Ok(&p));
    }
});
