//! Fuzz the request-head checks of the early and resolve phases and the credential extraction:
//! whatever a client sends as path and headers, they answer without panicking, and what they
//! accept is what they promise (a path without dot segments, exactly one credential).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First line: the path; every further line: `name: value`.
    let mut lines = data.split(|&b| b == b'\n');
    let path = lines.next().unwrap_or_default();
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let _ = portcullis::pipeline::check_path(path);
    let mut req = http::Request::builder().version(if data.len() % 2 == 0 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_2
    });
    for line in lines.take(64) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        req = req.header(name, value);
    }
    let Ok(mut req) = req.uri("/").body(()) else {
        return;
    };
    let _ = portcullis::pipeline::check_head(&req);
    let _ = portcullis::pipeline::correlation_id(req.headers());
    let _ = portcullis::error::is_grpc(req.headers());
    if let Ok(c) = portcullis::auth::extract(
        req.headers(),
        None,
        portcullis::auth::CredentialKinds::API_KEY,
    ) {
        let _ = c.claimed_id();
    }
    portcullis::pipeline::strip_gateway_headers(req.headers_mut());
    assert!(!req
        .headers()
        .keys()
        .any(|k| k.as_str().starts_with("x-portcullis-")));
});
