//! The gateway against a real Keycloak: allowed calls reach the backend with the right shape;
//! every rejected call never does.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use dev_stack::keycloak::Keycloak;
use serde_json::{json, Value};
use support::{backend::Backend, tokens, *};

const SUCCESS_FETCHES: &str = "jwks_fetch_total{result=\"success\"}";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn service_token_reaches_the_backend_without_the_api_prefix() {
    let kc = Keycloak::shared_for_tests();
    let backend = Backend::spawn().await;
    let gw = spawn_gateway(kc, &backend.url, |_| {}).await;
    let token = service_token(kc).await;

    let resp = reqwest::Client::new()
        .get(format!("{gw}/api/patients?page=0&size=5"))
        .bearer_auth(&token)
        .header("connection", "x-hop-secret")
        .header("x-hop-secret", "must not travel")
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req-123");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["backend"], "recorder", "the backend's data comes back");
    let seen = backend.last();
    assert_eq!(seen.path_and_query, "/patients?page=0&size=5");
    assert_eq!(seen.headers["authorization"], format!("Bearer {token}").as_str(), "token forwarded");
    assert_eq!(seen.headers["x-forwarded-prefix"], "/api");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-request-id"], "req-123");
    assert!(seen.headers.contains_key("traceparent"));
    assert!(!seen.headers.contains_key("x-hop-secret"), "hop-by-hop headers are dropped");
}

#[tokio::test]
async fn roles_decide_per_route_and_forbidden_calls_never_reach_the_backend() {
    let kc = Keycloak::shared_for_tests();
    let backend = Backend::spawn().await;
    let gw = spawn_gateway(kc, &backend.url, |_| {}).await;
    let analyst = user_token(kc, "analyst", "analyst-dev").await;
    let clinician = user_token(kc, "clinician", "clinician-dev").await;
    let client = reqwest::Client::new();
    let body = json!({"name": "x"});

    let denied = client.post(format!("{gw}/api/patients")).bearer_auth(&analyst).json(&body).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let challenge = denied.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.starts_with("Bearer ") && challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    assert!(challenge.contains("patients.write"), "{challenge}");
    assert_eq!(denied.headers()["content-type"], "application/problem+json");
    let delete = client.delete(format!("{gw}/api/patients/1")).bearer_auth(&clinician).send().await.unwrap();
    assert_eq!(delete.status(), 403, "clinician lacks patients.delete");
    assert_eq!(get(&format!("{gw}/api/analytics/summary"), Some(&clinician)).await.status(), 403);
    assert_eq!(backend.count(), 0, "no forbidden request reached the backend");

    let created = client.post(format!("{gw}/api/patients")).bearer_auth(&clinician).json(&body).send().await.unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!((backend.last().method.as_str(), backend.last().body.as_ref()), ("POST", body.to_string().as_bytes()));
    assert_eq!(get(&format!("{gw}/api/analytics/summary"), Some(&analyst)).await.status(), 200);
    assert_eq!(backend.last().path_and_query, "/analytics/summary");
    assert_eq!(get(&format!("{gw}/api/patients/1/bill"), Some(&clinician)).await.status(), 200);
    assert_eq!(backend.count(), 3);
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_without_reaching_the_backend() {
    let kc = Keycloak::shared_for_tests();
    let backend = Backend::spawn().await;
    let gw = spawn_gateway(kc, &backend.url, |_| {}).await;
    let token = service_token(kc).await;
    assert_eq!(get(&format!("{gw}/api/billing"), Some(&token)).await.status(), 404);
    assert_eq!(get(&format!("{gw}/patients"), Some(&token)).await.status(), 404, "only /api/** is routed");
    for raw_path in ["/api/patients/../analytics/x", "/api/patients/%2e%2e/analytics/x", "/api//patients"] {
        assert_eq!(raw_get_status(&gw, raw_path, &token).await, 404, "{raw_path}");
    }
    let patch = reqwest::Client::new().patch(format!("{gw}/api/patients/1")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(patch.status(), 405);
    assert_eq!(patch.headers()["allow"], "GET, HEAD, PUT, DELETE", "RFC 9110: a 405 names the methods the path takes");
    assert_eq!(backend.count(), 0);
}

/// GET with the path sent byte for byte (HTTP clients normalise `..` away before sending).
async fn raw_get_status(gateway: &str, path: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gateway.trim_start_matches("http://")).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

/// A key of ours registered in the realm (low priority, so Keycloak keeps signing with its own):
/// it lets the tests mint tokens the realm's JWKS vouches for, with any claims.
async fn registered_test_key(kc: &Keycloak) -> (tokens::TestKey, String) {
    let key = tokens::TestKey::generate();
    add_key_provider(
        kc,
        &format!("test-key-{}", now()),
        "rsa",
        json!({"privateKey": [key.private_pem], "priority": ["0"], "algorithm": ["RS256"], "active": ["true"], "enabled": ["true"]}),
    )
    .await;
    let set = jwks(kc).await;
    let kid = set["keys"].as_array().unwrap().iter().find(|k| k["n"] == key.n.as_str()).expect("our key is published")["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    (key, kid)
}

#[tokio::test]
async fn attack_corpus_is_rejected_with_401_and_nothing_reaches_the_backend() {
    let kc = Keycloak::shared_for_tests();
    let (key, kid) = registered_test_key(kc).await;
    let backend = Backend::spawn().await;
    let gw = spawn_gateway(kc, &backend.url, |_| {}).await;
    let issuer = kc.issuer(REALM);
    let claims = |extra: Value| {
        let mut c = json!({"iss": issuer, "aud": "patient-api", "typ": "Bearer", "sub": "attacker", "iat": now(), "exp": now() + 300,
                           "realm_access": {"roles": ["patients.read"]}});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };

    let real = service_token(kc).await;
    let (real_header, real_payload) = tokens::decode_parts(&real);
    let real_kid = real_header["kid"].as_str().unwrap();
    let segments: Vec<&str> = real.split('.').collect();
    let mut escalated = real_payload.clone();
    escalated["sub"] = json!("someone-else");
    let other_realm = other_realm_token(kc).await;

    let corpus: Vec<(&str, Option<String>)> = vec![
        ("missing header", None),
        ("wrong scheme", Some("Basic bXMtYXBpOnNlY3JldA==".into())),
        ("garbage", Some("Bearer not-a-jwt".into())),
        (
            "alg none",
            Some(format!(
                "Bearer {}",
                tokens::assemble(&json!({"alg": "none", "typ": "JWT", "kid": kid}), &claims(json!({})), "")
            )),
        ),
        (
            "HS256 keyed with the realm's public key",
            Some(format!(
                "Bearer {}",
                tokens::hs256(&real_header, &real_payload, tokens::public_pem_of(&jwks(kc).await, real_kid).as_bytes())
            )),
        ),
        ("signature tampered", Some(format!("Bearer {}.{}.{}", segments[0], segments[1], tokens::flip(segments[2])))),
        ("payload tampered", Some(format!("Bearer {}", tokens::assemble(&real_header, &escalated, segments[2])))),
        ("expired", Some(format!("Bearer {}", key.sign(&kid, &claims(json!({"exp": now() - 3600, "iat": now() - 4000})))))),
        ("not yet valid", Some(format!("Bearer {}", key.sign(&kid, &claims(json!({"nbf": now() + 3600})))))),
        (
            "wrong issuer",
            Some(format!("Bearer {}", key.sign(&kid, &claims(json!({"iss": "http://evil.example/realms/patient-management"}))))),
        ),
        ("wrong audience", Some(format!("Bearer {}", key.sign(&kid, &claims(json!({"aud": "account"})))))),
        ("unknown kid", Some(format!("Bearer {}", tokens::TestKey::generate().sign("no-such-kid", &claims(json!({})))))),
        ("token from another realm", Some(format!("Bearer {other_realm}"))),
        ("oversized", Some(format!("Bearer {}", key.sign(&kid, &claims(json!({"pad": "x".repeat(20_000)})))))),
        ("an ID token (typ ID)", Some(format!("Bearer {}", key.sign(&kid, &claims(json!({"typ": "ID"})))))),
        ("a refresh token (typ Refresh)", Some(format!("Bearer {}", key.sign(&kid, &claims(json!({"typ": "Refresh"})))))),
        ("no typ", Some(format!("Bearer {}", key.sign(&kid, &claims(json!({"typ": null})))))),
    ];

    for (name, authorization) in &corpus {
        let mut req = reqwest::Client::new().get(format!("{gw}/api/patients"));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{name}");
        let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Bearer realm="), "{name}: {challenge}");
        if authorization.as_deref().is_some_and(|a| a.starts_with("Bearer ")) {
            assert!(challenge.contains("error=\"invalid_token\""), "{name}: {challenge}");
        }
    }
    assert_eq!(backend.count(), 0, "no rejected request reached the backend");
    assert_eq!(metric(&gw, "gateway_requests_total{outcome=\"unauthenticated\"}").await, corpus.len() as u64);

    // Control: the same key with valid claims passes, so the rejections above were the claims'.
    let valid = key.sign(&kid, &claims(json!({})));
    assert_eq!(get(&format!("{gw}/api/patients"), Some(&valid)).await.status(), 200);
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn two_authorization_headers_get_400_and_never_reach_the_backend() {
    let kc = Keycloak::shared_for_tests();
    let backend = Backend::spawn().await;
    let gw = spawn_gateway(kc, &backend.url, |_| {}).await;
    let valid = service_token(kc).await;

    // A valid token first, something else second: a backend reading the other header would
    // act on a credential nobody verified.
    for second in ["Bearer forged.token.value", &format!("Bearer {valid}"), "Basic bXMtYXBpOnNlY3JldA=="] {
        let resp = reqwest::Client::new()
            .get(format!("{gw}/api/patients"))
            .header("authorization", format!("Bearer {valid}"))
            .header("authorization", second)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "second header {second:.20}");
        assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_request\""));
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    assert_eq!(backend.count(), 0, "nothing was forwarded");
    assert_eq!(get(&format!("{gw}/api/patients"), Some(&valid)).await.status(), 200, "control: one header passes");
}

/// A client_credentials token from a second realm on the same Keycloak.
async fn other_realm_token(kc: &Keycloak) -> String {
    let admin = admin_token(kc).await;
    let realm = json!({
        "realm": "other-realm", "enabled": true,
        "clients": [{"clientId": "other", "secret": "other-secret", "publicClient": false,
                     "serviceAccountsEnabled": true, "standardFlowEnabled": false}]
    });
    let resp = reqwest::Client::new()
        .post(format!("{}/admin/realms", kc.base_url()))
        .bearer_auth(admin)
        .json(&realm)
        .send()
        .await
        .unwrap();
    assert!(resp.status() == 201 || resp.status() == 409, "create other realm: {}", resp.status());
    let form = [("grant_type", "client_credentials"), ("client_id", "other"), ("client_secret", "other-secret")];
    let url = format!("{}/realms/other-realm/protocol/openid-connect/token", kc.base_url());
    let body: Value = reqwest::Client::new().post(url).form(&form).send().await.unwrap().json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_flood_of_unknown_key_ids_costs_at_most_one_jwks_fetch() {
    let kc = Keycloak::shared_for_tests();
    let backend = Backend::spawn().await;
    let gw = spawn_gateway(kc, &backend.url, |s| s.oidc.jwks_min_refetch_ms = 60_000).await;
    let before = metric(&gw, SUCCESS_FETCHES).await;
    let forger = tokens::TestKey::generate();
    let claims = json!({"iss": kc.issuer(REALM), "aud": "patient-api", "typ": "Bearer", "exp": now() + 300});

    let calls = (0..40).map(|i| {
        let token = forger.sign(&format!("forged-{}", i % 4), &claims);
        let url = format!("{gw}/api/patients");
        async move { get(&url, Some(&token)).await.status().as_u16() }
    });
    let statuses = futures::future::join_all(calls).await;

    assert!(statuses.iter().all(|s| *s == 401));
    let fetched = metric(&gw, SUCCESS_FETCHES).await + metric(&gw, "jwks_fetch_total{result=\"failure\"}").await;
    assert!(fetched <= before + 1, "{before} fetches before, {fetched} after");
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn key_rotation_is_picked_up_with_one_fetch_and_no_restart() {
    let kc = Keycloak::shared_for_tests();
    let backend = Backend::spawn().await;
    let gw = spawn_gateway(kc, &backend.url, |_| {}).await;
    let old = service_token(kc).await;
    assert_eq!(get(&format!("{gw}/api/patients"), Some(&old)).await.status(), 200);
    let before = metric(&gw, SUCCESS_FETCHES).await;

    add_key_provider(
        kc,
        &format!("rotated-{}", now()),
        "rsa-generated",
        json!({"priority": [format!("{}", 1000 + now() % 100_000)], "keySize": ["2048"], "algorithm": ["RS256"]}),
    )
    .await;
    let new = service_token(kc).await;
    let (old_kid, new_kid) = (tokens::decode_parts(&old).0["kid"].clone(), tokens::decode_parts(&new).0["kid"].clone());
    assert_ne!(old_kid, new_kid, "Keycloak signs with the new key");

    let calls = (0..20).map(|_| get_owned(format!("{gw}/api/patients"), new.clone()));
    let statuses = futures::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(metric(&gw, SUCCESS_FETCHES).await, before + 1, "one fetch for the rotation, not one per request");
    assert_eq!(get(&format!("{gw}/api/patients"), Some(&old)).await.status(), 200, "the old key is still published");
}

#[tokio::test]
async fn a_backend_that_stalls_mid_body_is_cut_instead_of_hanging_the_client() {
    let kc = Keycloak::shared_for_tests();
    let token = service_token(kc).await;
    // Headers and the first 10 of 100 announced bytes, then silence.
    let stalling = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalling_url = format!("http://{}", stalling.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = stalling.accept().await {
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let _ =
                socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncontent-type: text/plain\r\n\r\n0123456789").await;
            held.push(socket);
        }
    });
    let gw = spawn_gateway(kc, &stalling_url, |s| s.upstream_timeout_ms = 500).await;

    let started = std::time::Instant::now();
    let resp = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap()
        .get(format!("{gw}/api/patients"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the headers arrived in time");
    let body = resp.bytes().await;

    let err = body.expect_err("a body cut short is an error, not 100 bytes");
    assert!(!err.is_timeout(), "cut by the gateway, not by the client's own timeout: {err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "never a hang");
}

async fn get_owned(url: String, token: String) -> u16 {
    get(&url, Some(&token)).await.status().as_u16()
}

#[tokio::test]
async fn a_dead_backend_gives_503_and_a_silent_one_504_with_problem_bodies() {
    let kc = Keycloak::shared_for_tests();
    let token = service_token(kc).await;

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let gw = spawn_gateway(kc, &closed_url, |_| {}).await;
    let resp = get(&format!("{gw}/api/patients"), Some(&token)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");

    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let gw = spawn_gateway(kc, &silent_url, |s| s.upstream_timeout_ms = 500).await;
    let started = std::time::Instant::now();
    let resp = get(&format!("{gw}/api/patients"), Some(&token)).await;
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "never a hang");
    assert_eq!(metric(&gw, "gateway_upstream_failures_total").await, 1);
}
