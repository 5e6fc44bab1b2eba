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

    tokens.forget().await;
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
