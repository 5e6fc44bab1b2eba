//! The service's own token (client_credentials through openidconnect) against a real HTTP token
//! endpoint: fetched once, shared, renewed in the background shortly before it expires, and
//! served while valid when the realm is down or hanging.

mod support;

use std::{sync::Arc, time::Duration};

use common::secret::Secret;
use support::Provider;
use verifier::{
    client::{ClientArgs, ServiceToken},
    settings::OidcArgs,
};

fn client(provider: &Provider, secret: &str) -> Arc<ServiceToken> {
    let args = ClientArgs { client_id: "svc".into(), client_secret: Secret::new(secret) };
    Arc::new(ServiceToken::new(OidcArgs::for_issuer(&provider.issuer), args).unwrap())
}

/// Waits up to 5 s for the provider's realm request count to pass `n`.
async fn realm_requests_pass(provider: &Provider, n: usize) {
    for _ in 0..500 {
        if provider.realm_requests() > n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no request reached the realm");
}

#[tokio::test]
async fn the_token_is_fetched_once_for_concurrent_callers_and_renewed_in_the_background_before_it_expires() {
    let provider = Provider::start().await;
    provider.token_lifetime(8); // renewed a quarter of its life before expiry: after 6 s
    let tokens = client(&provider, "svc-secret");

    let concurrent = futures::future::join_all((0..10).map(|_| tokens.bearer())).await;
    let first = concurrent[0].as_ref().unwrap().clone();
    assert!(concurrent.iter().all(|t| *t.as_ref().unwrap() == first));
    assert_eq!(provider.grants(), 1, "one grant for ten callers");

    tokio::time::sleep(Duration::from_millis(6_200)).await;
    // Renewal due: the caller still gets the valid token at once, the renewal runs beside it.
    assert_eq!(tokens.bearer().await.unwrap(), first);
    let mut renewed = first.clone();
    for _ in 0..100 {
        renewed = tokens.bearer().await.unwrap();
        if renewed != first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ne!(renewed, first, "renewed before the old one expired");
    assert_eq!(provider.grants(), 2);

    tokens.forget(&renewed);
    tokens.bearer().await.unwrap();
    assert_eq!(provider.grants(), 3, "a forgotten token is fetched again");
}

#[tokio::test]
async fn a_refused_grant_is_an_error_that_names_no_secret() {
    let provider = Provider::start().await;
    let err = client(&provider, "wrong-secret-value").bearer().await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("refused by the realm"), "{text}");
    assert!(!text.contains("wrong-secret-value"), "{text}");
}

#[tokio::test]
async fn a_late_refusal_of_an_old_token_does_not_throw_away_the_new_one() {
    let provider = Provider::start().await;
    provider.token_lifetime(300);
    let tokens = client(&provider, "svc-secret");

    // Two calls were refused with the same token; the first caller fetched a new one.
    let refused = tokens.bearer().await.unwrap();
    tokens.forget(&refused);
    let fresh = tokens.bearer().await.unwrap();
    tokens.forget(&refused);

    assert_eq!(tokens.bearer().await.unwrap(), fresh);
    assert_eq!(provider.grants(), 2);
}

#[tokio::test]
async fn while_the_realm_is_down_the_held_token_serves_until_it_expires() {
    let provider = Provider::start().await;
    provider.token_lifetime(8); // renewed after 6 s, expires after 8 s
    let tokens = client(&provider, "svc-secret");
    let held = tokens.bearer().await.unwrap();

    provider.fail(true);
    tokio::time::sleep(Duration::from_millis(6_100)).await;
    // The renewal is due and fails ...
    let before = provider.realm_requests();
    assert_eq!(tokens.bearer().await.unwrap(), held);
    realm_requests_pass(&provider, before).await;
    // ... the held token still serves, and the next callers do not each ask the realm again.
    let asked = provider.realm_requests();
    for _ in 0..5 {
        assert_eq!(tokens.bearer().await.unwrap(), held);
    }
    assert_eq!(provider.realm_requests(), asked, "the renewal is retried after a pause, not per call");

    // Once it has expired there is nothing to serve: the failure shows.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    // (The failed renewal dropped the realm's metadata: discovery comes first, and fails.)
    let err = tokens.bearer().await.unwrap_err();
    assert!(format!("{err:#}").contains("discovery request refused"), "{err:#}");

    // And once the realm answers again, a new token comes.
    provider.fail(false);
    assert_ne!(tokens.bearer().await.unwrap(), held);
}

#[tokio::test]
async fn a_hanging_realm_does_not_hold_back_callers_while_the_token_is_valid() {
    let provider = Provider::start().await;
    provider.token_lifetime(8); // renewed after 6 s
    let tokens = client(&provider, "svc-secret");
    let held = tokens.bearer().await.unwrap();

    let hanging = provider.hold().await;
    tokio::time::sleep(Duration::from_millis(6_200)).await;
    let before = provider.realm_requests();
    // The renewal is due; the realm takes its time (its requests time out after 3 s) ...
    let answers = tokio::time::timeout(Duration::from_secs(1), async {
        let first = tokens.bearer().await.unwrap();
        realm_requests_pass(&provider, before).await;
        let later = futures::future::join_all((0..5).map(|_| tokens.bearer())).await;
        (first, later)
    })
    .await
    .expect("no caller waits for the realm");
    // ... and every caller meanwhile got the held token at once.
    assert_eq!(answers.0, held);
    assert!(answers.1.iter().all(|t| *t.as_ref().unwrap() == held));
    drop(hanging);
}
