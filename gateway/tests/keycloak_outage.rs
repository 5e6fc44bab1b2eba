//! Keycloak down: tokens already issued keep working on cached keys; back up: all fine again. A
//! gateway started while Keycloak is down becomes ready within seconds of Keycloak returning.
//! A suite of its own because it stops its own Keycloak.

mod support;

use dev_stack::keycloak::Keycloak;
use support::{backend::Backend, *};

#[tokio::test]
async fn cached_keys_keep_verifying_while_keycloak_is_down_and_after_it_returns() {
    let mut kc = Keycloak::start_ephemeral().expect("Keycloak starts");
    let backend = Backend::spawn().await;
    let gw = spawn_gateway(&kc, &backend.url, |s| s.oidc.jwks_fetch_timeout_ms = 1_000).await;
    let token = service_token(&kc).await;
    let call = |t: String| {
        let url = format!("{gw}/api/patients");
        async move { reqwest::Client::new().get(url).bearer_auth(t).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(call(token.clone()).await, 200);

    kc.stop().expect("Keycloak stops");
    assert_eq!(call(token.clone()).await, 200, "issued token still verifies with the cached key");
    let ready = reqwest::get(format!("{gw}/health/ready")).await.unwrap();
    assert_eq!(ready.status(), 200, "the gateway stays ready on cached keys");

    kc.start().expect("Keycloak restarts");
    let fresh = service_token(&kc).await;
    assert_eq!(call(fresh).await, 200);
    assert_eq!(call(token).await, 200);
    assert_eq!(backend.count(), 4);

    // A gateway whose warm-up fails (started before Keycloak) retries quickly, not after the
    // 300 s refresh period.
    kc.stop().expect("Keycloak stops");
    let late = spawn_gateway(&kc, &backend.url, |s| s.oidc.jwks_fetch_timeout_ms = 1_000).await;
    let ready = || {
        let url = format!("{late}/health/ready");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(ready().await, 503, "no keys yet");
    kc.start().expect("Keycloak restarts");
    let back = std::time::Instant::now();
    while ready().await != 200 {
        assert!(back.elapsed() < std::time::Duration::from_secs(30), "still not ready 30 s after Keycloak returned");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
