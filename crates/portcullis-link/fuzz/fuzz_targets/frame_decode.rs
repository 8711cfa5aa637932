//! Fuzz the frame decoder: arbitrary bytes must decode or fail cleanly, never panic, and a
//! frame that decodes and re-encodes (re-encoding may not fit: `1e5` becomes `100000.0`)
//! must decode to the same value. The input is tried twice: as raw bytes (header checks), and
//! as a type byte and a body behind a well-formed header, so the fuzzer spends its time in the
//! JSON bodies instead of rediscovering the magic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_link::{Frame, MAGIC, MAX_FRAME_LEN, VERSION};

fn round_trip(bytes: &[u8]) {
    if let Ok(frame) = Frame::decode(bytes, MAX_FRAME_LEN) {
        let Ok(bytes) = frame.encode() else { return };
        let again = Frame::decode(&bytes, MAX_FRAME_LEN).expect("a re-encoded frame decodes");
        assert_eq!(again, frame);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip(data);
    if let Some((&ty, body)) = data.split_first() {
        let mut framed = Vec::with_capacity(body.len() + 8);
        framed.extend_from_slice(&MAGIC);
        framed.push(VERSION);
        framed.push(1 + ty % 4);
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(body);
        round_trip(&framed);
    }
});
