//! µs per token verification, the three cases of the gateway's hot path:
//! - cold key: the JWKS entry parsed (aws-lc key built), then the token checked with it;
//! - warm key: the key already parsed and held, the token not seen before (full RS256 check);
//! - cached token: the same token again (hash + lookup).
//!
//! `cargo bench -p verifier` (also run by `cargo xtask bench`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dev_stack::tokens::TestKey;
use futures::FutureExt;
use verifier::{jwks::parse_jwks, Algorithm};

fn verification(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let provider = rt.block_on(support::Provider::start());
    let key = TestKey::generate();
    provider.publish(&[(&key, "k1")]);
    let token = key.sign("k1", &provider.claims(3600));
    let cached = provider.verifier(Duration::from_secs(1), 10_000).verifier;
    // Capacity 0 switches the token cache off: every call is a full RS256 verification.
    let uncached = provider.verifier(Duration::from_secs(1), 0).verifier;
    // The uncached verifier has its own key store: warm it too.
    rt.block_on(uncached.verify(&token)).unwrap();
    rt.block_on(cached.verify(&token)).unwrap();

    let jwks = serde_json::json!({"keys": [key.jwk("k1")]});

    let mut group = c.benchmark_group("verify");
    group.bench_function("cold_key", |b| {
        b.iter(|| {
            let parsed = parse_jwks(&jwks, &[Algorithm::RS256]);
            uncached.check(&token, &parsed[0].1).unwrap()
        })
    });
    group.bench_function("warm_key", |b| b.iter(|| uncached.verify(&token).now_or_never().unwrap().unwrap()));
    group.bench_function("cached_token", |b| b.iter(|| cached.verify(&token).now_or_never().unwrap().unwrap()));
    group.finish();
}

criterion_group!(benches, verification);
criterion_main!(benches);
