//! Fuzz the worker protocol's frame codec (`portcullis_link::worker`): arbitrary bytes — what
//! a hostile worker could write to its socket — must split into envelopes or fail cleanly,
//! never panic, never allocate past the limit; a frame that decodes re-encodes to one that
//! decodes to the same value. The input is tried raw (length prefix checks) and behind a
//! well-formed prefix, so the fuzzer spends its time in the JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_link::worker::{self, FromWorker, ToWorker, MAX_WORKER_FRAME_LEN};

fn round_trip<B>(bytes: &[u8])
where
    B: serde::de::DeserializeOwned + serde::Serialize + worker::Bounded + PartialEq + std::fmt::Debug,
{
    if let Ok(Some((env, used))) = worker::split::<B>(bytes, MAX_WORKER_FRAME_LEN) {
        assert!(used <= bytes.len());
        let Ok(again) = worker::encode(&env, MAX_WORKER_FRAME_LEN) else { return };
        let (back, _) = worker::split::<B>(&again, MAX_WORKER_FRAME_LEN)
            .expect("a re-encoded frame decodes")
            .expect("whole");
        assert_eq!(back, env);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<FromWorker>(data);
    round_trip::<ToWorker>(data);
    let mut framed = Vec::with_capacity(data.len() + 4);
    framed.extend_from_slice(&(data.len() as u32).to_be_bytes());
    framed.extend_from_slice(data);
    round_trip::<FromWorker>(&framed);
    round_trip::<ToWorker>(&framed);
});
