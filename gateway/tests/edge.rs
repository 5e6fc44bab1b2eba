//! The gateway's edge against a real Keycloak: rate limits per client, CORS, forwarding headers,
//! slow clients and the server threads.

mod support;

use dev_stack::keycloak::Keycloak;
use support::{backend::Backend, *};

async fn get(url: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap()
}

#[tokio::test]
async fn a_client_over_its_limit_gets_429_with_the_quota_headers_while_another_client_is_served() {
    let kc = Keycloak::shared_for_tests();
    let backend = Backend::spawn().await;
    // ms-api holds patients.delete (through admin), the clinician does not.
    let gw = spawn_gateway(kc, &backend.url, |s| s.rate_limits = "default=1:3,patients.delete=1:5".parse().unwrap()).await;
    let service = service_token(kc).await;
    let clinician = user_token(kc, "clinician", "clinician-dev").await;
    let url = format!("{gw}/api/patients");

    let flood = futures::future::join_all((0..20).map(|_| get(&url, &service))).await;
    let passed = flood.iter().filter(|r| r.status() == 200).count();
    let limited: Vec<_> = flood.iter().filter(|r| r.status() == 429).collect();
    assert_eq!(passed + limited.len(), 20, "every answer is 200 or 429");
    assert!((5..=6).contains(&passed), "the burst of 5 (and at most one refill) passed: {passed}");
    let refused = limited[0];
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 1, "one request per second refills");
    assert_eq!(refused.headers()["ratelimit-policy"], "\"patients.delete\";q=5;w=5");
    assert_eq!(refused.headers()["ratelimit"], "\"patients.delete\";r=0;t=5", "t: seconds until the bucket is full");
    assert_eq!(metric(&gw, "gateway_requests_total{outcome=\"rate_limited\"}").await, limited.len() as u64);

    // Another client (azp patient-web) has its own bucket, under the default policy.
    for remaining in [2, 1, 0] {
        let resp = get(&url, &clinician).await;
        assert_eq!(resp.status(), 200, "the flood of another client does not touch this one");
        assert_eq!(resp.headers()["ratelimit-policy"], "\"default\";q=3;w=3");
        let current = resp.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(current.starts_with(&format!("\"default\";r={remaining};")), "{current}");
    }
    assert_eq!(backend.count(), passed + 3, "no refused request reached the backend");
}

#[tokio::test]
async fn preflights_are_answered_without_a_token_for_allowed_origins_only_and_never_reach_a_backend() {
    let kc = Keycloak::shared_for_tests();
    let backend = Backend::spawn().await;
    let gw = spawn_gateway(kc, &backend.url, |_| {}).await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, format!("{gw}/api/patients"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type, idempotency-key")
            .send()
    };

    // The dev realm's patient-web origins: localhost and 127.0.0.1 on any port.
    let allowed = preflight("http://localhost:5173").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(allowed.headers()["access-control-allow-origin"], "http://localhost:5173");
    let methods = allowed.headers()["access-control-allow-methods"].to_str().unwrap().to_lowercase();
    assert!(methods.contains("post"), "{methods}");
    let headers = allowed.headers()["access-control-allow-headers"].to_str().unwrap().to_lowercase();
    assert!(headers.contains("authorization") && headers.contains("idempotency-key"), "{headers}");

    let foreign = preflight("https://evil.example").await.unwrap();
    assert!(!foreign.headers().contains_key("access-control-allow-origin"), "an unknown origin gets no grant");
    assert_eq!(backend.count(), 0, "preflights never reach a backend");

    // An OPTIONS that is no preflight meets the routes: 405 naming the methods, or 404.
    let bare = client.request(reqwest::Method::OPTIONS, format!("{gw}/api/patients")).send().await.unwrap();
    assert_eq!(bare.status(), 405);
    assert_eq!(bare.headers()["allow"], "GET, HEAD, POST");
    let with_origin_only =
        client.request(reqwest::Method::OPTIONS, format!("{gw}/api/patients/1")).header("origin", "http://localhost:5173");
    let with_origin_only = with_origin_only.send().await.unwrap();
    assert_eq!(with_origin_only.status(), 405);
    assert_eq!(with_origin_only.headers()["allow"], "GET, HEAD, PUT, DELETE");
    let nowhere = client.request(reqwest::Method::OPTIONS, format!("{gw}/api/nowhere")).send().await.unwrap();
    assert_eq!(nowhere.status(), 404);
    assert_eq!(backend.count(), 0, "nor does any other OPTIONS");

    // The real request from the browser: its answer is readable by that origin, headers included.
    let token = service_token(kc).await;
    let resp = client
        .get(format!("{gw}/api/patients"))
        .bearer_auth(&token)
        .header("origin", "http://127.0.0.1:8081")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "http://127.0.0.1:8081");
    let exposed = resp.headers()["access-control-expose-headers"].to_str().unwrap().to_lowercase();
    assert!(exposed.contains("ratelimit") && exposed.contains("x-total-count") && exposed.contains("location"), "{exposed}");
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn the_api_description_is_503_until_every_service_has_described_itself_and_the_ui_is_served() {
    let kc = Keycloak::shared_for_tests();
    // Nothing listens behind this gateway.
    let gw = spawn_gateway(kc, "http://127.0.0.1:9", |_| {}).await;

    let doc = reqwest::get(format!("{gw}/api/openapi.json")).await.unwrap();
    assert_eq!(doc.status(), 503, "never a document missing a service");
    assert_eq!(doc.headers()["cache-control"], "no-store");
    assert_eq!(doc.headers()["content-type"], "application/problem+json");

    let ui = reqwest::get(format!("{gw}/api/docs")).await.unwrap();
    assert_eq!(ui.status(), 200, "redirected to the UI, no token needed");
    assert!(ui.text().await.unwrap().contains("swagger-ui"));
    let init = reqwest::get(format!("{gw}/api/docs/swagger-initializer.js")).await.unwrap().text().await.unwrap();
    assert!(
        init.contains("/api/openapi.json") && init.contains("patient-web"),
        "the UI reads our document and signs in with patient-web"
    );
}

#[tokio::test]
async fn a_valid_traceparent_is_continued_and_an_invalid_one_restarts_the_trace() {
    let kc = Keycloak::shared_for_tests();
    let backend = Backend::spawn().await;
    let gw = spawn_gateway(kc, &backend.url, |_| {}).await;
    let token = service_token(kc).await;
    let send = |traceparent: &'static str| {
        let (url, token) = (format!("{gw}/api/patients"), token.clone());
        async move { reqwest::Client::new().get(url).bearer_auth(token).header("traceparent", traceparent).send().await.unwrap() }
    };

    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(send(valid).await.status(), 200);
    assert_eq!(backend.last().headers["traceparent"], valid, "the caller's trace continues");

    assert_eq!(send("00-00000000000000000000000000000000-00f067aa0ba902b7-01").await.status(), 200);
    let restarted = backend.last().headers.clone();
    assert!(common::telemetry::trace_id(&restarted).is_some(), "a new, valid trace: {:?}", restarted.get("traceparent"));

    // The context the gateway forwards is its own, and the token it verified goes on for the
    // service to check again: a caller naming them hop-by-hop drops neither.
    let hop = reqwest::Client::new()
        .get(format!("{gw}/api/patients"))
        .bearer_auth(&token)
        .header("traceparent", valid)
        .header("connection", "traceparent, authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(hop.status(), 200);
    let seen = backend.last().headers.clone();
    assert_eq!(seen["traceparent"], valid, "the trace is carried past the hop-by-hop strip");
    assert_eq!(seen["authorization"], format!("Bearer {token}").as_str(), "so is the token");
}

/// The gateway's server threads (named `http-<port>-<n>`) alive in this process, each with
/// the number of times it has slept and been woken.
fn server_thread_wakeups(port: u16) -> Vec<u64> {
    let prefix = format!("http-{port}-");
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
            status.lines().next()?.strip_prefix("Name:")?.trim().starts_with(&prefix).then_some(())?;
            status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")?.trim().parse().ok())
        })
        .collect()
}

fn server_threads(port: u16) -> usize {
    server_thread_wakeups(port).len()
}

/// Waits up to 5 s for `port`'s server thread count to become `n`.
async fn server_threads_become(port: u16, n: usize) -> bool {
    for _ in 0..50 {
        if server_threads(port) == n {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn connections_are_spread_over_the_server_threads_which_all_end_when_the_gateway_stops_or_is_dropped() {
    let kc = Keycloak::shared_for_tests();
    let settings = |threads| {
        let mut s = gateway::config::Settings::for_issuer(kc.issuer(REALM), "http://127.0.0.1:9");
        s.server_threads = threads;
        s
    };

    // Stopped by its shutdown signal.
    let app = gateway::startup::Application::build(settings(3)).await.unwrap();
    let port = app.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    assert!(server_threads_become(port, 3).await, "three server threads");
    let before = server_thread_wakeups(port);
    // Separate connections, handed to the threads in turn: each thread serves some.
    for _ in 0..12 {
        let live = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/health/live")).send().await.unwrap();
        assert_eq!(live.status(), 200);
    }
    let after = server_thread_wakeups(port);
    assert!(before.iter().zip(&after).all(|(b, a)| a > b), "every thread woke to serve: {before:?} -> {after:?}");
    stop.send(()).unwrap();
    run.await.unwrap().expect("a clean stop");
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "the port is closed once stopped");
    assert!(server_threads_become(port, 0).await, "no server thread outlives the gateway");

    // Dropped while serving (as a test's runtime drops it): its threads end too.
    let app = gateway::startup::Application::build(settings(2)).await.unwrap();
    let port = app.port();
    let run = tokio::spawn(app.run_until_stopped(std::future::pending()));
    assert!(server_threads_become(port, 2).await, "two server threads");
    run.abort();
    assert!(server_threads_become(port, 0).await, "a dropped gateway's threads end");
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "and its port closes");
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_request_head_is_disconnected_and_nothing_reaches_the_backend() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let kc = Keycloak::shared_for_tests();
    let backend = Backend::spawn().await;
    let gw = spawn_gateway(kc, &backend.url, |s| s.drain.http_header_read_timeout_ms = 500).await;
    let token = service_token(kc).await;

    let mut conn = tokio::net::TcpStream::connect(gw.trim_start_matches("http://")).await.unwrap();
    let started = std::time::Instant::now();
    conn.write_all(format!("GET /api/patients HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {token}\r\n").as_bytes())
        .await
        .unwrap();
    // Then a header a byte every 100 ms: the connection makes progress, the head never ends.
    for byte in b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if conn.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    let closed_after = started.elapsed();

    assert!(read.is_ok(), "the gateway never closed the connection");
    assert!(
        closed_after >= std::time::Duration::from_millis(450) && closed_after < std::time::Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    assert!(!String::from_utf8_lossy(&answer).contains(" 200 "), "no request was served");
    assert_eq!(backend.count(), 0, "nothing reached the backend");
}

#[tokio::test]
async fn forwarding_headers_a_client_wrote_reach_a_backend_only_through_a_trusted_proxy() {
    let kc = Keycloak::shared_for_tests();
    let backend = Backend::spawn().await;
    let token = service_token(kc).await;
    let spoofing = |gw: &str| {
        reqwest::Client::new()
            .get(format!("{gw}/api/patients"))
            .bearer_auth(&token)
            .header("x-forwarded-for", "198.51.100.1")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "clinic.example")
            .header("forwarded", "for=198.51.100.2")
            .header("x-real-ip", "198.51.100.3")
            .send()
    };

    // By default nobody is a trusted proxy: the chain starts at the gateway's peer.
    let gw = spawn_gateway(kc, &backend.url, |_| {}).await;
    assert_eq!(spoofing(&gw).await.unwrap().status(), 200);
    let seen = backend.last().headers;
    assert_eq!(seen.get_all("x-forwarded-for").iter().collect::<Vec<_>>(), ["127.0.0.1"]);
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], gw.trim_start_matches("http://"), "the Host the client used");
    assert!(!seen.contains_key("forwarded") && !seen.contains_key("x-real-ip"), "{seen:?}");

    // Behind a trusted proxy (here: loopback) its chain is extended and its protocol and host kept.
    let behind = spawn_gateway(kc, &backend.url, |s| s.trusted_proxies = "10.0.0.0/8, 127.0.0.1".parse().unwrap()).await;
    assert_eq!(spoofing(&behind).await.unwrap().status(), 200);
    let seen = backend.last().headers;
    assert_eq!(seen["x-forwarded-for"], "198.51.100.1, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "clinic.example");
    assert!(!seen.contains_key("forwarded") && !seen.contains_key("x-real-ip"), "never passed on: {seen:?}");
    assert_eq!(backend.count(), 2);
}
