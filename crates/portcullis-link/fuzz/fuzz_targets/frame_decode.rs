//! Fuzz the frame decoder: arbitrary bytes must decode or fail cleanly, never panic, and a
//! frame that decodes and re-encodes (re-encoding may not fit: `1e5` becomes `100000.0`)
//! must decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_link::{Frame, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data, MAX_FRAME_LEN) {
        let Ok(bytes) = frame.encode() else { return };
        let again = Frame::decode(&bytes, MAX_FRAME_LEN).expect("a re-encoded frame decodes");
        assert_eq!(again, frame);
    }
});
