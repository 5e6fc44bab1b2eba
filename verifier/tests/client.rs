//! The service's own token (client_credentials through openidconnect) against a real HTTP token
//! endpoint: fetched once, shared, fetched again shortly before it expires.

mod support;

use std::time::Duration;

use common::secret::Secret;
use support::Provider;
use verifier::{
    client::{ClientArgs, ServiceToken},
    settings::OidcArgs,
};

fn client(provider: &Provider, secret: &str) -> ServiceToken {
    let args = ClientArgs { client_id: "svc".into(), client_secret: Secret::new(secret) };
    ServiceToken::new(OidcArgs::for_issuer(&provider.issuer), args).unwrap()
}

#[tokio::test]
async fn the_token_is_cached_shared_and_renewed_before_it_expires() {
    let provider = Provider::start().await;
    provider.token_lifetime(2); // renewed a quarter of its life before expiry: after 1.5 s
    let tokens = client(&provider, "svc-secret");

    let first = tokens.bearer().await.unwrap();
    let concurrent = futures::future::join_all((0..10).map(|_| tokens.bearer())).await;
    assert!(concurrent.iter().all(|t| t.as_ref().unwrap().expose() == first.expose()));
    assert_eq!(provider.grants(), 1, "one grant for eleven callers");

    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let renewed = tokens.bearer().await.unwrap();
    assert_ne!(renewed.expose(), first.expose(), "renewed before the old one expired");
    assert_eq!(provider.grants(), 2);

    tokens.forget(&renewed).await;
    tokens.bearer().await.unwrap();
    assert_eq!(provider.grants(), 3, "a forgotten token is fetched again");
}

#[tokio::test]
async fn a_late_refusal_of_an_old_token_does_not_throw_away_the_new_one() {
    let provider = Provider::start().await;
    provider.token_lifetime(300);
    let tokens = client(&provider, "svc-secret");

    // Two calls were refused with the same token; the first caller fetched a new one.
    let refused = tokens.bearer().await.unwrap();
    tokens.forget(&refused).await;
    let fresh = tokens.bearer().await.unwrap();
    tokens.forget(&refused).await;

    assert_eq!(tokens.bearer().await.unwrap(), fresh);
    assert_eq!(provider.grants(), 2);
}

#[tokio::test]
async fn while_the_realm_is_down_the_held_token_serves_until_it_expires() {
    let provider = Provider::start().await;
    provider.token_lifetime(4); // renewed after 3 s, expires after 4 s
    let tokens = client(&provider, "svc-secret");
    let held = tokens.bearer().await.unwrap();

    provider.fail(true);
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    // The early renewal fails: the held token is still valid, so it serves ...
    assert_eq!(tokens.bearer().await.unwrap(), held);
    // ... and the next callers do not each ask the realm again at once.
    let asked = provider.token_requests();
    for _ in 0..5 {
        assert_eq!(tokens.bearer().await.unwrap(), held);
    }
    assert_eq!(provider.token_requests(), asked, "the renewal is retried after a pause, not per call");

    // Once it has expired there is nothing to serve: the failure shows.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let err = tokens.bearer().await.unwrap_err();
    assert!(format!("{err:#}").contains("client_credentials request failed"), "{err:#}");

    // And once the realm answers again, a new token comes.
    provider.fail(false);
    assert_ne!(tokens.bearer().await.unwrap(), held);
}

#[tokio::test]
async fn a_refused_grant_is_an_error_that_names_no_secret() {
    let provider = Provider::start().await;
    let err = client(&provider, "wrong-secret-value").bearer().await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("refused by the realm"), "{text}");
    assert!(!text.contains("wrong-secret-value"), "{text}");
}
