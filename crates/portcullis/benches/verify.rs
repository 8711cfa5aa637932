//! API key verification on SQLite: cached (checksum + HMAC + constant-time compare, no
//! store) and uncached (the same plus one indexed lookup), and the refusal paths. The two
//! cached refusals — a wrong secret for a known id and an unknown id (negative cache) — must
//! cost the same, or the timing tells which key ids exist.
//!
//! The `authorise` group measures the decision that follows on the same call: a key's scopes
//! (every call before roles), and the decision cache (users' and cross-workspace bindings).
//!
//! `cargo bench -p portcullis --bench verify`

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use portcullis::access::{
    Access, AccessParts, AccessSettings, Decision, MemoryPolicy, Resource, Roles, SubjectRef,
};
use portcullis::auth::authenticator::{AuthSettings, CreateKey};
use portcullis::auth::{ApiKeyAuthenticator, Pepper};
use portcullis::auth::{CredentialKind, Identity, Via};
use portcullis::store::{Store, StoreOptions};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (auth, key, unknown) = rt.block_on(async {
        let store = Store::init(&StoreOptions::sqlite(dir.path()))
            .await
            .unwrap();
        let pepper = Pepper::new(b"bench-pepper-0123456789abcdef-0123456789".to_vec(), 1).unwrap();
        let auth = ApiKeyAuthenticator::new(store, pepper, AuthSettings::default());
        let issued = auth
            .create_key(
                &CreateKey {
                    workspace: "default".into(),
                    name: "bench".into(),
                    scopes: vec!["echo.read".into()],
                    expires_in: None,
                    key_id: None,
                },
                "bench",
            )
            .await
            .unwrap();
        let unknown = portcullis::auth::key::generate("no-such-key").raw;
        (auth, issued.api_key, unknown)
    });

    let mut g = c.benchmark_group("verify");
    g.bench_function("cached", |b| {
        b.iter(|| rt.block_on(auth.authenticate(black_box(&key))).unwrap())
    });
    g.bench_function("uncached_sqlite", |b| {
        b.iter(|| {
            auth.invalidate_all();
            rt.block_on(auth.authenticate(black_box(&key))).unwrap()
        })
    });
    let wrong = portcullis::auth::key::format_key(
        portcullis::auth::key::parse(&key).unwrap().key_id,
        &portcullis::auth::key::random_base62(30),
    );
    // Cached first, so both measure the hot path only.
    rt.block_on(auth.authenticate(&wrong)).unwrap_err();
    rt.block_on(auth.authenticate(&unknown)).unwrap_err();
    g.bench_function("wrong secret (cached)", |b| {
        b.iter(|| {
            rt.block_on(auth.authenticate(black_box(&wrong)))
                .unwrap_err()
        })
    });
    g.bench_function("unknown id (cached negative)", |b| {
        b.iter(|| {
            rt.block_on(auth.authenticate(black_box(&unknown)))
                .unwrap_err()
        })
    });
    g.bench_function("unknown id (uncached, sqlite)", |b| {
        b.iter(|| {
            auth.invalidate_all();
            rt.block_on(auth.authenticate(black_box(&unknown)))
                .unwrap_err()
        })
    });
    let mut junk = key.clone();
    junk.pop();
    junk.push('!');
    g.bench_function("malformed", |b| {
        b.iter(|| {
            rt.block_on(auth.authenticate(black_box(&junk)))
                .unwrap_err()
        })
    });
    g.finish();

    // The authorise step of the same call: the key's grants from the verification cache.
    let access = portcullis::access::Access::new(auth.clone());
    let identity = rt.block_on(auth.authenticate(&key)).unwrap();
    let echo = Resource::Service {
        service: "echo",
        workspace: &identity.workspace.id,
    };
    let mut g = c.benchmark_group("authorise");
    // Polled once, without a runtime: a cached decision must complete on its first poll, and
    // the runtime's own cost (`block_on`) would hide the decision's.
    g.bench_function("key scopes, allowed (cached)", |b| {
        b.iter(|| {
            access
                .authorise(black_box(&identity), "echo.read", echo)
                .now_or_never()
                .expect("a cached decision is ready at once")
        })
    });
    g.bench_function("key scopes, denied (cached)", |b| {
        b.iter(|| {
            access
                .authorise(black_box(&identity), "echo.write", echo)
                .now_or_never()
                .expect("a cached decision is ready at once")
        })
    });

    // Role bindings: a user (token) bound `reader` in its workspace, and the key above bound
    // `reader` in another workspace it names; both answered by the decision cache.
    let policy = MemoryPolicy::new();
    policy.bind(SubjectRef::User("u1"), "reader", &identity.workspace.id);
    policy.bind(SubjectRef::Key(&identity.via.id), "reader", "ws_other");
    let access = Access::with_parts(AccessParts {
        keys: auth.clone(),
        policy,
        roles: Roles::built_in(),
        capabilities: Default::default(),
        settings: AccessSettings::default(),
    });
    let user = Identity {
        subject: "user:u1".into(),
        via: Via {
            kind: CredentialKind::Token,
            id: "jti".into(),
        },
        ..(*identity).clone()
    };
    let other = Resource::Service {
        service: "echo",
        workspace: "ws_other",
    };
    for (who, at) in [(&user, echo), (&*identity, other)] {
        assert_eq!(
            rt.block_on(access.authorise(who, "echo.read", at)),
            Decision::Allow
        );
    }
    g.bench_function("user binding, allowed (cached decision)", |b| {
        b.iter(|| {
            access
                .authorise(black_box(&user), "echo.read", echo)
                .now_or_never()
                .expect("a cached decision is ready at once")
        })
    });
    g.bench_function("key in another workspace, allowed (cached decision)", |b| {
        b.iter(|| {
            access
                .authorise(black_box(&identity), "echo.read", other)
                .now_or_never()
                .expect("a cached decision is ready at once")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
