//! The SDK's check of identity assertions, on every call before the handler: a cache hit
//! (what nearly every call costs: the gateway reuses an assertion for ~45 s), a miss
//! (signature and claims, once per assertion per thread), and a forged assertion.
//!
//! `cargo bench -p portcullis-sdk --bench verify`

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_link::jws::{self, AssertedVia, AssertionClaims, Jwk, Jwks};
use portcullis_sdk::Verifier;
use ring::signature::Ed25519KeyPair;
use std::hint::black_box;

fn key() -> Ed25519KeyPair {
    let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
}

fn assertion(key: &Ed25519KeyPair, sub: &str, now: i64) -> String {
    let claims = AssertionClaims {
        iss: "portcullis".into(),
        sub: sub.into(),
        ws: "ws_0123456789".into(),
        wsn: "default".into(),
        via: AssertedVia {
            kind: "api_key".into(),
            id: "k0123456789abcdef".into(),
        },
        aud: "echo".into(),
        iat: now,
        exp: now + 60,
    };
    jws::sign(&claims, "kid-0123456789ab", jws::TYP_ASSERTION, key).unwrap()
}

fn bench(c: &mut Criterion) {
    let k = key();
    let jwks = Jwks {
        keys: vec![Jwk::ed25519("kid-0123456789ab", &jws::public_key_of(&k))],
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let a = assertion(&k, "key:k0123456789abcdef", now);
    let b = assertion(&k, "key:another", now);
    let mut forged = assertion(&key(), "key:k0123456789abcdef", now);
    forged.replace_range(..forged.find('.').unwrap(), &a[..a.find('.').unwrap()]);

    let mut g = c.benchmark_group("sdk_verify");
    let v = Verifier::new("echo", "portcullis", &jwks);
    v.verify_at(&a, now).unwrap();
    g.bench_function("cache hit", |bench| {
        bench.iter(|| v.verify_at(black_box(&a), now).unwrap())
    });
    let mut headers = http::HeaderMap::new();
    headers.insert("x-portcullis-identity", a.parse().unwrap());
    g.bench_function("cache hit, from the request headers", |bench| {
        bench.iter(|| v.verify_headers(black_box(&headers)).unwrap())
    });
    // One slot per shard: two assertions in turn always miss.
    let small = Verifier::with_capacity("echo", "portcullis", &jwks, 1);
    let mut flip = false;
    g.bench_function("cache miss (signature + claims)", |bench| {
        bench.iter(|| {
            flip = !flip;
            small
                .verify_at(black_box(if flip { &a } else { &b }), now)
                .unwrap()
        })
    });
    g.bench_function("forged signature (refused)", |bench| {
        bench.iter(|| v.verify_at(black_box(&forged), now).unwrap_err())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
