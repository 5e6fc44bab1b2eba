//! Journey 3: grpcurl against billing-service, with no .proto at hand (server reflection).

mod support;

use std::process::Command;

use common::kafka::KafkaArgs;
use serde_json::Value;
use support::*;

fn grpcurl(args: &[&str]) -> (bool, String) {
    let bin = dev_stack::grpcurl::ensure().expect("grpcurl installs");
    let out = Command::new(bin).args(args).output().expect("grpcurl runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_billing_through_reflection() {
    let (billing, grpc) = spawn_billing(KafkaArgs::disabled()).await;
    let target = grpc.trim_start_matches("http://").to_owned();

    let (ok, listed) = tokio::task::spawn_blocking({
        let target = target.clone();
        move || grpcurl(&["-plaintext", &target, "list"])
    })
    .await
    .unwrap();
    assert!(ok, "{listed}");
    assert!(listed.lines().any(|l| l == "BillingService"), "{listed}");
    assert!(listed.lines().any(|l| l == "grpc.health.v1.Health"), "{listed}");

    let (ok, described) = tokio::task::spawn_blocking({
        let target = target.clone();
        move || grpcurl(&["-plaintext", &target, "describe", "BillingService"])
    })
    .await
    .unwrap();
    assert!(ok && described.contains("rpc CreateBillingAccount ( .BillingRequest ) returns ( .BillingResponse )"), "{described}");

    let patient = uuid::Uuid::new_v4().to_string();
    let body = format!(r#"{{"patientId":"{patient}","name":"Grpc Caller","email":"grpc@example.com"}}"#);
    let (ok, anonymous) = tokio::task::spawn_blocking({
        let (target, body) = (target.clone(), body.clone());
        move || grpcurl(&["-plaintext", "-d", &body, &target, "BillingService/CreateBillingAccount"])
    })
    .await
    .unwrap();
    assert!(!ok && anonymous.contains("Unauthenticated"), "no token, no account: {anonymous}");
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM billing_accounts").fetch_one(&billing.db).await.unwrap();
    assert_eq!(none, 0);

    let authorization = format!("authorization: Bearer {}", service_token().await);
    let (ok, called) = tokio::task::spawn_blocking({
        let (target, authorization) = (target.clone(), authorization.clone());
        move || grpcurl(&["-plaintext", "-H", &authorization, "-d", &body, &target, "BillingService/CreateBillingAccount"])
    })
    .await
    .unwrap();
    assert!(ok, "{called}");
    let account: Value = serde_json::from_str(&called).unwrap();
    assert_eq!(account["status"], "PENDING", "no patient with this id exists: the account waits for one");
    let stored: String = sqlx::query_scalar("SELECT id::text FROM billing_accounts WHERE patient_id = $1::uuid")
        .bind(&patient)
        .fetch_one(&billing.db)
        .await
        .unwrap();
    assert_eq!(account["accountId"], stored.as_str());

    let (ok, refused) = tokio::task::spawn_blocking(move || {
        grpcurl(&[
            "-plaintext",
            "-H",
            &authorization,
            "-d",
            r#"{"patientId":"nope","name":"x","email":"x@example.com"}"#,
            &target,
            "BillingService/CreateBillingAccount",
        ])
    })
    .await
    .unwrap();
    assert!(!ok && refused.contains("InvalidArgument"), "{refused}");
}
