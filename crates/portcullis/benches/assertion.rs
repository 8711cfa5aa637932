//! The gateway's identity assertion, on every call forwarded to a service: a cache hit (what
//! nearly every call costs: an assertion is reused for ~45 s) and a miss (an Ed25519
//! signature, once per identity, service and thread every 45 s).
//!
//! `cargo bench -p portcullis --bench assertion`

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::auth::assertion::{AssertionSigner, DEFAULT_CAPACITY};
use portcullis::auth::keyring::{KeyRing, KeySet, SigningKey};
use portcullis::auth::{CredentialKind, Identity, Via, WorkspaceRef};
use portcullis::clock::Clock;
use std::hint::black_box;
use std::sync::Arc;

fn identity(key_id: &str) -> Identity {
    Identity {
        subject: format!("key:{key_id}").into(),
        workspace: WorkspaceRef {
            id: "ws_0123456789".into(),
            name: "default".into(),
        },
        via: Via {
            kind: CredentialKind::ApiKey,
            id: key_id.into(),
        },
        expires_at: None,
        binding: None,
    }
}

fn bench(c: &mut Criterion) {
    let now = portcullis::store::now_ms();
    let key = Arc::new(SigningKey::generate(now).unwrap().key);
    let ring = Arc::new(KeyRing::new(KeySet::new(vec![key]), 0));
    let signer = AssertionSigner::new(
        ring.clone(),
        "portcullis",
        Clock::system(),
        DEFAULT_CAPACITY,
    );
    let id = identity("k0123456789abcdef");
    signer.assertion(&id, &id.workspace, "echo").unwrap();

    let mut g = c.benchmark_group("assertion");
    g.bench_function("sign, cache hit", |b| {
        b.iter(|| {
            signer
                .assertion(black_box(&id), &id.workspace, black_box("echo"))
                .unwrap()
        })
    });
    // One slot per shard: two identities in turn always miss.
    let small = AssertionSigner::new(ring, "portcullis", Clock::system(), 1);
    let other = identity("kfedcba9876543210");
    let mut flip = false;
    g.bench_function("sign, cache miss (Ed25519 signature)", |b| {
        b.iter(|| {
            flip = !flip;
            let who = if flip { &id } else { &other };
            small
                .assertion(black_box(who), &who.workspace, "echo")
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
