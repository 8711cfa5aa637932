//! The token and assertion parser: arbitrary bytes as a compact JWS. Nothing may panic; nothing
//! but a token signed by the one known key may verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_link::jws::{self, AssertionClaims, TokenClaims};

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    // A fixed public key whose private key nobody has: nothing can verify.
    let key = [7u8; 32];
    let _ = jws::peek_kid(token);
    let t: Result<(jws::Header, TokenClaims), _> =
        jws::verify(token, jws::TYP_ACCESS_TOKEN, |_| Some(key));
    assert!(t.is_err(), "forged access token verified");
    let a: Result<(jws::Header, AssertionClaims), _> =
        jws::verify(token, jws::TYP_ASSERTION, |_| Some(key));
    assert!(a.is_err(), "forged assertion verified");
});
