//! Users and tokens: a login (Argon2id with the default, OWASP, parameters, then a signed
//! token), the password check alone, and token verification — with the signature and the
//! subject's standing cached (a client re-sending its token: the per-call cost), and uncached
//! (Ed25519 verification plus one subject lookup, here in memory).
//!
//! `cargo bench -p portcullis --bench tokens`

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::audit::AuditSink;
use portcullis::auth::keyring::{KeyRing, KeySet, SigningKey};
use portcullis::auth::login::{Login, LoginRequest};
use portcullis::auth::password::{HashSettings, Password, PasswordHasher};
use portcullis::auth::throttle::LoginThrottle;
use portcullis::auth::token::{TokenAuthenticator, TokenSettings};
use portcullis::auth::users::{LoginUser, MemoryUsers};
use portcullis::auth::Changes;
use portcullis::telemetry::Metrics;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hasher = Arc::new(PasswordHasher::new(HashSettings::owasp(1)).unwrap());
    let password = Password::new("correct horse battery staple");
    let phc = rt.block_on(hasher.hash(&password)).unwrap();
    let users = MemoryUsers::new();
    users.put(LoginUser {
        id: "usr_bench".into(),
        username: "bench".into(),
        workspace_id: "ws_bench".into(),
        workspace: "default".into(),
        password_hash: phc.clone(),
        disabled: false,
        workspace_disabled: false,
        password_changed_at: 0,
    });
    let key = SigningKey::generate(0).unwrap().key;
    let ring = Arc::new(KeyRing::new(KeySet::new(vec![Arc::new(key)]), 0));
    let tokens = TokenAuthenticator::new(
        ring,
        users.clone(),
        TokenSettings::default(),
        Changes::default(),
        Arc::new(tokio::sync::Semaphore::new(4)),
    );
    let login = Login::new(
        users,
        hasher.clone(),
        Arc::new(LoginThrottle::new(Default::default())),
        None,
        tokens.clone(),
        AuditSink::metrics_only(Arc::new(Metrics::new(Vec::new()))),
    );
    let req = LoginRequest {
        workspace: "default".into(),
        username: "bench".into(),
        password: password.clone(),
    };

    let mut g = c.benchmark_group("login");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.bench_function("argon2id verify (m=19456,t=2,p=1)", |b| {
        b.iter(|| {
            rt.block_on(hasher.verify(black_box(&password), Some(&phc)))
                .unwrap()
        })
    });
    g.bench_function("login (argon2id + token)", |b| {
        b.iter(|| rt.block_on(login.login(black_box(&req), None)).unwrap())
    });
    g.finish();

    let token = rt
        .block_on(tokens.issue("usr_bench", "ws_bench", 0))
        .unwrap()
        .access_token;
    rt.block_on(tokens.authenticate(&token)).unwrap();
    let mut g = c.benchmark_group("verify_token");
    g.bench_function("cached (signature and subject)", |b| {
        b.iter(|| rt.block_on(tokens.authenticate(black_box(&token))).unwrap())
    });
    g.bench_function("uncached (ed25519 + subject lookup)", |b| {
        b.iter(|| {
            tokens.invalidate_all();
            rt.block_on(tokens.authenticate(black_box(&token))).unwrap()
        })
    });
    g.bench_function("issue (sign)", |b| {
        b.iter(|| {
            rt.block_on(tokens.issue(black_box("usr_bench"), "ws_bench", 0))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
