//! One create is one trace in a real trace backend: the four real binaries export their spans
//! over OTLP to Jaeger (built from its Go module by the launcher); the trace of a POST through
//! the gateway, fetched from Jaeger's query API, holds the spans of all six participants —
//! gateway, patient-service, billing (gRPC), the outbox relay, analytics' consumer and billing's
//! consumer — each one's first span a child of its caller's (HTTP, gRPC metadata, outbox row,
//! Kafka record header).

mod support;

use std::time::Duration;

use dev_stack::{
    containers::{backend, Backend},
    jaeger::Jaeger,
    kafka::Kafka,
    keycloak::Keycloak,
    PgCluster,
};
use serde_json::Value;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_is_one_trace_across_gateway_patient_service_and_billing_in_jaeger() {
    if backend() == Backend::Docker {
        // The real binaries run as local processes; the containers backend has no such path.
        eprintln!("traces: skipped with TEST_INFRA=docker");
        return;
    }
    let jaeger = tokio::task::spawn_blocking(Jaeger::shared_for_tests).await.unwrap();
    let pg = PgCluster::shared_for_tests();
    for db in ["patient_service", "billing_service", "analytics_service"] {
        pg.ensure_database(db).await.unwrap();
    }
    let kafka = tokio::task::spawn_blocking(Kafka::shared_for_tests).await.unwrap();
    let kc = tokio::task::spawn_blocking(Keycloak::shared_for_tests).await.unwrap();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp_endpoint())];
    let services = RealServices::new(pg, kafka.bootstrap_servers(), &env, "patient-platform-test-traces-");
    tokio::task::block_in_place(|| SERVICES.iter().for_each(|name| services.start(name)));

    // The client's own span: the trace starts with it.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let client_span = "00f067aa0ba902b7";
    let created = reqwest::Client::new()
        .post(format!("{}/api/patients", services.gateway))
        .bearer_auth(kc.service_token().await.unwrap())
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .json(&patient_body(1))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let url = format!("{}/api/traces/{trace_id}", jaeger.query_url());
    let trace = eventually(Duration::from_secs(60), "the trace in Jaeger", || async {
        let body: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
        let trace = body["data"].get(0)?.clone();
        let consumed = trace["spans"].as_array()?.iter().filter(|s| s["operationName"] == "consume").count();
        let services = service_names(&trace);
        let all = ["gateway", "patient-service", "billing-service", "analytics-service"]
            .iter()
            .all(|s| services.contains(&s.to_string()));
        (all && consumed >= 2).then_some(trace)
    })
    .await;

    let spans = trace["spans"].as_array().unwrap();
    let service_of = |span: &Value| trace["processes"][span["processID"].as_str().unwrap()]["serviceName"].as_str().unwrap();
    let parent_of = |span: &Value| {
        span["references"].as_array().and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF")).map(|r| r["spanID"].clone())
    };
    let span_service = |id: &Value| spans.iter().find(|s| &s["spanID"] == id).map(service_of);
    for span in spans {
        eprintln!("{:<18} {:<24} parent {:?}", service_of(span), span["operationName"].as_str().unwrap_or(""), parent_of(span));
    }
    // Each service's entry span: its parent is the caller's (the client's for the gateway).
    let entry = |service: &str, name: &str| {
        spans
            .iter()
            .find(|s| service_of(s) == service && s["operationName"] == name)
            .unwrap_or_else(|| panic!("no {name} span of {service} in {trace}"))
    };
    assert_eq!(
        parent_of(entry("gateway", "gateway")),
        Some(Value::from(client_span)),
        "the gateway continues the client's trace"
    );
    let patients = entry("patient-service", "http");
    assert_eq!(
        parent_of(patients).and_then(|p| span_service(&p)),
        Some("gateway"),
        "patient-service's span is the gateway's child"
    );
    let billing = entry("billing-service", "grpc");
    assert_eq!(
        parent_of(billing).and_then(|p| span_service(&p)),
        Some("patient-service"),
        "billing's span is a child of patient-service's call"
    );
    // The event: published by the relay in the create's trace, consumed by both groups.
    let publish = entry("patient-service", "publish");
    assert_eq!(parent_of(publish).and_then(|p| span_service(&p)), Some("patient-service"), "the relay continues the create");
    for consumer in ["analytics-service", "billing-service"] {
        let consume = entry(consumer, "consume");
        assert_eq!(parent_of(consume), Some(publish["spanID"].clone()), "{consumer} consumes the published record");
    }
    // One connected trace: every span's parent is in it, but the gateway's (the client's span).
    for span in spans {
        let parent = parent_of(span).unwrap_or_else(|| panic!("a root span in the trace: {span}"));
        assert!(
            span_service(&parent).is_some() || parent == client_span,
            "{} {} has a parent outside the trace",
            service_of(span),
            span["operationName"]
        );
    }
}

fn service_names(trace: &Value) -> Vec<String> {
    trace["processes"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, p)| p["serviceName"].as_str().map(str::to_owned))
        .collect()
}
