//! The verified-token cache, the unknown-kid rules and where key fetches run, against a real
//! HTTP JWKS endpoint.

mod support;

use std::time::Duration;

use axum::response::IntoResponse;
use dev_stack::tokens::TestKey;
use support::Provider;
use verifier::{
    metrics::{TOKEN_CACHE_HIT, TOKEN_CACHE_MISS},
    web::Denied,
    AuthError,
};

const COOLDOWN: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_repeated_token_is_served_from_the_cache_with_the_same_principal() {
    let provider = Provider::start().await;
    let key = TestKey::generate();
    provider.publish(&[(&key, "k1")]);
    let f = provider.verifier(COOLDOWN, 1_000);
    let token = key.sign("k1", &provider.claims(300));

    let first = f.verifier.verify(&token).await.unwrap();
    let second = f.verifier.verify(&token).await.unwrap();

    assert_eq!(first, second);
    assert_eq!((first.subject.as_str(), first.client.as_deref()), ("user-1", Some("ms-api")));
    assert!(first.roles.contains("patients.read"));
    assert_eq!((f.counter(TOKEN_CACHE_MISS), f.counter(TOKEN_CACHE_HIT)), (1, 1));
    assert_eq!(provider.fetches(), 1);
}

#[tokio::test]
async fn a_cached_token_is_not_served_from_the_cache_past_its_exp() {
    let provider = Provider::start().await;
    let key = TestKey::generate();
    provider.publish(&[(&key, "k1")]);
    let f = provider.verifier(COOLDOWN, 1_000);
    let token = key.sign("k1", &provider.claims(2));
    f.verifier.verify(&token).await.unwrap();
    f.verifier.verify(&token).await.unwrap();
    assert_eq!(f.counter(TOKEN_CACHE_HIT), 1, "cached while valid");

    tokio::time::sleep(Duration::from_millis(3_100)).await;

    // Within the clock-skew leeway the full check still accepts it, but not the cache.
    assert!(f.verifier.verify(&token).await.is_ok());
    assert_eq!((f.counter(TOKEN_CACHE_HIT), f.counter(TOKEN_CACHE_MISS)), (1, 2), "a miss after exp");
}

#[tokio::test]
async fn an_expired_token_is_rejected_once_past_the_leeway() {
    let provider = Provider::start().await;
    let key = TestKey::generate();
    provider.publish(&[(&key, "k1")]);
    let f = provider.verifier(COOLDOWN, 1_000);
    let mut claims = provider.claims(0);
    claims["exp"] = serde_json::json!(support::now() - support::LEEWAY_SECS - 1);

    assert_eq!(f.verifier.verify(&key.sign("k1", &claims)).await, Err(AuthError::InvalidToken("token expired")));
}

#[tokio::test]
async fn only_access_tokens_are_accepted_not_id_or_refresh_tokens() {
    let provider = Provider::start().await;
    let key = TestKey::generate();
    provider.publish(&[(&key, "k1")]);
    let f = provider.verifier(COOLDOWN, 1_000);
    for typ in [serde_json::json!("ID"), serde_json::json!("Refresh"), serde_json::json!("bearer"), serde_json::Value::Null] {
        let mut claims = provider.claims(300);
        claims["typ"] = typ.clone();
        let verdict = f.verifier.verify(&key.sign("k1", &claims)).await;
        assert_eq!(verdict, Err(AuthError::InvalidToken("not an access token")), "typ {typ}");
    }
    let mut untyped = provider.claims(300);
    untyped.as_object_mut().unwrap().remove("typ");
    assert_eq!(f.verifier.verify(&key.sign("k1", &untyped)).await, Err(AuthError::InvalidToken("not an access token")));
    assert!(f.verifier.verify(&key.sign("k1", &provider.claims(300))).await.is_ok(), "control: typ Bearer passes");
}

#[tokio::test]
async fn a_key_leaving_the_jwks_takes_the_tokens_it_verified_with_it() {
    let provider = Provider::start().await;
    let (old, new) = (TestKey::generate(), TestKey::generate());
    provider.publish(&[(&old, "old"), (&new, "new")]);
    let f = provider.verifier(COOLDOWN, 1_000);
    let token = old.sign("old", &provider.claims(300));
    let other = new.sign("new", &provider.claims(300));
    f.verifier.verify(&token).await.unwrap();
    f.verifier.verify(&other).await.unwrap();
    assert_eq!(f.tokens.len(), 2);

    provider.publish(&[(&new, "new")]);
    f.keys.refresh().await.unwrap();

    assert_eq!(f.tokens.len(), 1, "the removed key's token is dropped, the other stays");
    assert_eq!(f.verifier.verify(&token).await, Err(AuthError::InvalidToken("unknown signing key")));
    assert!(f.verifier.verify(&other).await.is_ok());
}

#[tokio::test]
async fn a_key_replaced_under_the_same_kid_no_longer_vouches_for_its_tokens() {
    let provider = Provider::start().await;
    let (first, second) = (TestKey::generate(), TestKey::generate());
    provider.publish(&[(&first, "k1")]);
    let f = provider.verifier(COOLDOWN, 1_000);
    let token = first.sign("k1", &provider.claims(300));
    f.verifier.verify(&token).await.unwrap();

    provider.publish(&[(&second, "k1")]);
    f.keys.refresh().await.unwrap();

    assert_eq!(f.verifier.verify(&token).await, Err(AuthError::InvalidToken("signature invalid")));
}

#[tokio::test]
async fn an_unchanged_key_keeps_its_cached_tokens_across_refreshes() {
    let provider = Provider::start().await;
    let key = TestKey::generate();
    provider.publish(&[(&key, "k1")]);
    let f = provider.verifier(COOLDOWN, 1_000);
    let token = key.sign("k1", &provider.claims(300));
    f.verifier.verify(&token).await.unwrap();

    f.keys.refresh().await.unwrap();
    f.verifier.verify(&token).await.unwrap();

    assert_eq!(f.counter(TOKEN_CACHE_HIT), 1);
}

#[tokio::test]
async fn forged_kids_inside_the_cooldown_are_rejected_at_once_without_a_fetch() {
    let provider = Provider::start().await;
    let key = TestKey::generate();
    provider.publish(&[(&key, "k1")]);
    let f = provider.verifier(COOLDOWN, 1_000);
    f.keys.refresh().await.unwrap();
    let forger = TestKey::generate();
    let claims = provider.claims(300);
    let forged: Vec<String> = (0..200).map(|i| forger.sign(&format!("forged-{i}"), &claims)).collect();

    // Virtual time: any sleep in the rejection path would show as elapsed time.
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    for batch in forged.chunks(20) {
        let results = futures::future::join_all(batch.iter().map(|t| f.verifier.verify(t))).await;
        assert!(results.iter().all(|r| *r == Err(AuthError::InvalidToken("unknown signing key"))));
    }
    assert_eq!(started.elapsed(), Duration::ZERO, "nobody waited for the cooldown");
    assert_eq!(provider.fetches(), 1, "no fetch inside the cooldown");
    tokio::time::resume();

    // After the cooldown one shared fetch answers a new unknown kid; a kid still unknown after a
    // successful fetch is then remembered, so repeating it costs nothing.
    tokio::time::sleep(COOLDOWN).await;
    assert!(f.verifier.verify(&forged[0]).await.is_err());
    assert_eq!(provider.fetches(), 2);
    tokio::time::sleep(COOLDOWN).await;
    assert!(f.verifier.verify(&forged[0]).await.is_err());
    assert_eq!(provider.fetches(), 2, "the kid was remembered as unknown");
}

#[tokio::test]
async fn a_failed_fetch_does_not_mark_the_kid_unknown_and_answers_unavailable_not_invalid() {
    let provider = Provider::start().await;
    let (old, rotated) = (TestKey::generate(), TestKey::generate());
    provider.publish(&[(&old, "old")]);
    let f = provider.verifier(Duration::from_millis(200), 1_000);
    f.keys.refresh().await.unwrap();
    let token = rotated.sign("rotated", &provider.claims(300));

    provider.fail(true);
    provider.publish(&[(&old, "old"), (&rotated, "rotated")]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The realm did not answer: nothing is known about the token, so it is not called invalid
    // (401 would tell the client to drop a good token) but unavailable (503, retry) ...
    assert_eq!(f.verifier.verify(&token).await, Err(AuthError::KeysUnavailable));
    let denied = Denied::from(AuthError::KeysUnavailable).into_response();
    assert_eq!(denied.status(), 503);
    assert!(denied.headers().contains_key("retry-after") && !denied.headers().contains_key("www-authenticate"));
    // ... also inside the cooldown that follows the failed fetch.
    assert_eq!(f.verifier.verify(&token).await, Err(AuthError::KeysUnavailable));
    assert_eq!(provider.fetches(), 2, "the cooldown holds after a failure too");

    provider.fail(false);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(f.verifier.verify(&token).await.is_ok(), "the rotated key is found once the JWKS answers again");
}

/// The gateway serves on several runtimes, one per thread. A fetch asked for on one of them must
/// not leave a connection driven by that runtime for later fetches: when it stops, a fetch in
/// flight on that connection from anywhere else would fail.
#[test]
fn a_fetch_in_flight_survives_the_end_of_the_runtime_that_asked_for_an_earlier_one() {
    // Multi-threaded, as a service's main runtime is: it runs while this thread waits below.
    let home = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (provider, f) = home.block_on(async {
        let provider = Provider::start().await;
        let key = TestKey::generate();
        provider.publish(&[(&key, "k1")]);
        let f = provider.verifier(COOLDOWN, 1_000);
        (provider, f)
    });

    // A server thread's runtime fetches first, then keeps running until told to stop.
    let (fetched, first) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let keys = f.keys.clone();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            fetched.send(keys.refresh().await.map_err(|e| format!("{e:#}"))).unwrap();
            let _ = stopped.await;
        });
    });
    assert_eq!(first.recv().unwrap(), Ok(1), "the first fetch succeeds");

    home.block_on(async {
        // The next fetch has reached the realm, which holds its answer, when that runtime ends.
        let held = provider.hold().await;
        let keys = f.keys.clone();
        let in_flight = tokio::spawn(async move { keys.refresh().await });
        while provider.fetches() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(()).unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap()).await.unwrap();
        drop(held);

        let result = in_flight.await.unwrap();
        assert!(result.is_ok(), "the fetch in flight completes: {result:?}");
        assert_eq!(provider.fetches(), 2);
    });
}
