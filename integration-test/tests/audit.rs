//! The audit trail (SPEC §11) against the real Keycloak and PostgreSQL: two users work on one
//! patient through the gateway, a third is refused by patient-service itself, and the trail
//! tells exactly that story; it is append-only for the service and tampering is detected; appends
//! from many connections at once make one unbroken chain.

mod support;

use common::kafka::KafkaArgs;
use dev_stack::keycloak::{Keycloak, ADMIN_USER, ANALYST, CLINICIAN, REALM};
use serde_json::{json, Value};
use support::*;

/// billing-service, patient-service on it, and a gateway in front (its base URL), without Kafka.
async fn patients_behind_a_gateway(kc: &Keycloak) -> (Running, Running, String) {
    let (billing, grpc) = spawn_billing(KafkaArgs::disabled()).await;
    let patients = spawn_patients(&grpc, KafkaArgs::disabled()).await;
    let settings = gateway::config::Settings::for_issuer(kc.issuer(REALM), format!("http://127.0.0.1:{}", patients.port));
    let app = gateway::startup::Application::build(settings).await.unwrap();
    let gw = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    (billing, patients, gw)
}

#[tokio::test]
async fn the_trail_records_who_did_what_refuses_changes_and_detects_tampering() {
    let kc = Keycloak::shared_for_tests();
    let (_billing, patients, gw) = patients_behind_a_gateway(kc).await;

    let (clinician, admin, analyst) = (
        kc.user_token(CLINICIAN).await.unwrap(),
        kc.user_token(ADMIN_USER).await.unwrap(),
        kc.user_token(ANALYST).await.unwrap(),
    );
    let http = reqwest::Client::new();
    let call = |token: &str, method: reqwest::Method, url: String| http.request(method, url).bearer_auth(token);
    use reqwest::Method;

    // The clinician creates, reads, updates, lists and reads the bill, through the gateway.
    let body = json!({"name": "Audrey Trailwood", "email": "audrey.trailwood@example.org", "address": "7 Ledger Lane",
                      "dateOfBirth": "1970-01-02", "registeredDate": "2025-05-06"});
    let created = call(&clinician, Method::POST, format!("{gw}/api/patients")).json(&body).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let create_request_id = created.headers()["x-request-id"].to_str().unwrap().to_owned();
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let one = format!("{gw}/api/patients/{id}");
    // A client naming another client in `X-Forwarded-For` is not believed by the gateway.
    let read = call(&clinician, Method::GET, one.clone()).header("x-forwarded-for", "198.51.100.1");
    assert_eq!(read.send().await.unwrap().status(), 200);
    let mut changed = body.clone();
    changed["address"] = json!("8 Ledger Lane");
    assert_eq!(call(&clinician, Method::PUT, one.clone()).json(&changed).send().await.unwrap().status(), 200);
    let list = format!("{gw}/api/patients?name=Audrey&page=0&size=10");
    assert_eq!(call(&clinician, Method::GET, list).send().await.unwrap().status(), 200);
    assert_eq!(call(&clinician, Method::GET, format!("{one}/bill")).send().await.unwrap().status(), 200);
    // The analyst bypasses the gateway: patient-service refuses and records it.
    // A long chain presented to the service itself, in two header lines, keeps the end nearest to it.
    let direct = format!("http://127.0.0.1:{}/patients/{id}", patients.port);
    let far = "198.51.100.1, ".repeat(29) + "198.51.100.1";
    let refused = call(&analyst, Method::GET, direct).header("x-forwarded-for", far).header("x-forwarded-for", "192.0.2.1");
    assert_eq!(refused.send().await.unwrap().status(), 403);
    // The admin deletes.
    assert_eq!(call(&admin, Method::DELETE, one.clone()).send().await.unwrap().status(), 204);

    // The admin reads the trail of that patient.
    let audit = |token: &str, query: String| call(token, Method::GET, format!("{gw}/api/audit?{query}"));
    let resp = audit(&admin, format!("patientId={id}")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let bundle: Value = resp.json().await.unwrap();
    assert_eq!((bundle["resourceType"].as_str(), bundle["type"].as_str()), (Some("Bundle"), Some("searchset")));
    let events: Vec<&Value> = bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    let story: Vec<(String, String, String, String)> = events
        .iter()
        .map(|e| {
            let action =
                e["extension"].as_array().unwrap().iter().find(|x| x["url"].as_str().unwrap().ends_with("/action")).unwrap();
            (
                action["valueCode"].as_str().unwrap().to_owned(),
                e["agent"][0]["who"]["identifier"]["value"].as_str().unwrap().to_owned(),
                e["outcomeDesc"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let (c, a, n) = (subject(&clinician), subject(&admin), subject(&analyst));
    let expected: Vec<(String, String, String, String)> = [
        ("patient.create", &c, "201", "0"),
        ("patient.read", &c, "200", "0"),
        ("patient.update", &c, "200", "0"),
        ("bill.read", &c, "200", "0"),
        ("patient.read", &n, "403", "4"),
        ("patient.delete", &a, "204", "0"),
    ]
    .iter()
    .map(|(act, who, status, outcome)| (act.to_string(), who.to_string(), status.to_string(), outcome.to_string()))
    .collect();
    assert_eq!(story, expected);
    assert_eq!(bundle["total"], 6);
    let first = events[0];
    assert_eq!(first["resourceType"], "AuditEvent");
    assert_eq!(first["action"], "C");
    assert_eq!(first["entity"][0]["what"]["reference"], format!("Patient/{id}"));
    assert_eq!(first["agent"][0]["altId"], "patient-web", "azp: the client the user signed in with");
    assert_eq!(first["agent"][0]["network"]["address"], "127.0.0.1");
    let request_id = first["extension"].as_array().unwrap().iter().find(|x| x["url"].as_str().unwrap().ends_with("/request-id"));
    assert_eq!(request_id.unwrap()["valueString"], create_request_id.as_str());

    // The list is in the clinician's trail, by the shape of its filter only.
    let mine: Value = audit(&admin, format!("subject={c}")).send().await.unwrap().json().await.unwrap();
    let searches: Vec<&Value> =
        mine["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).filter(|e| e["action"] == "E").collect();
    assert_eq!(searches.len(), 1);
    assert!(searches[0]["entity"][0]["query"].is_string());

    // Bad filters are 400s; the analyst may not read the trail, even through the gateway.
    assert_eq!(audit(&admin, "patientId=nope".into()).send().await.unwrap().status(), 400);
    assert_eq!(audit(&admin, "from=yesterday".into()).send().await.unwrap().status(), 400);
    assert_eq!(audit(&analyst, format!("patientId={id}")).send().await.unwrap().status(), 403);
    assert_eq!(audit(&clinician, format!("patientId={id}")).send().await.unwrap().status(), 403);

    // Who called from where: through the gateway, the address it saw, not what the client
    // claimed; directly, the service's peer, and the claimed chain's end nearest the service.
    let reads: Vec<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT client_address, forwarded_for FROM audit_log WHERE action = 'patient.read' ORDER BY seq")
            .fetch_all(&patients.db)
            .await
            .unwrap();
    assert_eq!(reads[0], (Some("127.0.0.1".into()), Some("127.0.0.1".into())), "through the gateway");
    let (address, chain) = &reads[1];
    let chain = chain.as_deref().unwrap();
    assert_eq!(address.as_deref(), Some("127.0.0.1"), "directly");
    assert!(chain.starts_with("…, 198.51.100.1") && chain.ends_with(", 192.0.2.1") && chain.chars().count() <= 200, "{chain}");

    // No name, email or address of the patient anywhere in the trail.
    let dump: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(a)::text FROM audit_log a").fetch_all(&patients.db).await.unwrap();
    for row in &dump {
        for secret in ["Audrey", "Trailwood", "audrey.trailwood", "Ledger"] {
            assert!(!row.contains(secret), "personal data in the audit trail: {row}");
        }
    }

    // Append-only for the service's own database role (what its pool acts as).
    for (what, statement) in [
        ("update", "UPDATE audit_log SET outcome = 200 WHERE outcome = 403"),
        ("delete", "DELETE FROM audit_log"),
        ("truncate", "TRUNCATE audit_log"),
        ("move the head", "UPDATE audit_head SET seq = 0"),
        ("switch the guard off", "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_or_delete"),
        (
            "redefine the hash",
            "CREATE OR REPLACE FUNCTION audit_row_hash(r audit_log) RETURNS bytea LANGUAGE sql AS 'SELECT r.hash'",
        ),
    ] {
        let mut tx = patients.db.begin().await.unwrap();
        sqlx::query(&format!("SET LOCAL ROLE {}", patient_service::RUNTIME_ROLE)).execute(&mut *tx).await.unwrap();
        let refused = sqlx::query(statement).execute(&mut *tx).await;
        assert!(refused.is_err(), "the service's role could {what}");
        tx.rollback().await.unwrap();
    }
    // Even the owner's plain UPDATE and DELETE are refused by the trigger.
    assert!(sqlx::query("UPDATE audit_log SET outcome = 200").execute(&patients.db).await.is_err());
    assert!(sqlx::query("DELETE FROM audit_log").execute(&patients.db).await.is_err());

    // The chain holds; a change by hand (guard switched off, as only the owner can) is found.
    let intact = patient_service::audit::verify_chain(&patients.db).await.unwrap();
    assert_eq!(intact.first_broken, None);
    assert_eq!(intact.rows, dump.len() as u64);
    let refused_seq: i64 =
        sqlx::query_scalar("SELECT seq FROM audit_log WHERE outcome = 403").fetch_one(&patients.db).await.unwrap();
    let mut tx = patients.db.begin().await.unwrap();
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_or_delete").execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE audit_log SET outcome = 200 WHERE seq = $1").bind(refused_seq).execute(&mut *tx).await.unwrap();
    sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_or_delete").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let tampered = patient_service::audit::verify_chain(&patients.db).await.unwrap();
    assert_eq!(tampered.first_broken, Some(refused_seq), "the altered row is named");
}

/// `HEAD` is `GET` without the body (RFC 9110 §9.3.2): through the gateway and at the service it
/// needs the same roles, answers with the same status and headers and no body, and is audited as
/// the read it is (it tells whether a patient exists). A route without `GET` refuses it with 405.
#[tokio::test]
async fn a_head_request_is_the_read_its_get_is() {
    let kc = Keycloak::shared_for_tests();
    let (_billing, patients, gw) = patients_behind_a_gateway(kc).await;
    let (clinician, analyst) = (kc.user_token(CLINICIAN).await.unwrap(), kc.user_token(ANALYST).await.unwrap());
    let http = reqwest::Client::new();
    use reqwest::Method;

    let body = json!({"name": "Hedda Headley", "email": "hedda.headley@example.org", "address": "1 Header Row",
                      "dateOfBirth": "1980-03-04", "registeredDate": "2025-06-07"});
    let created = http.post(format!("{gw}/api/patients")).bearer_auth(&clinician).json(&body).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let one = format!("{gw}/api/patients/{id}");

    let get = http.get(&one).bearer_auth(&clinician).send().await.unwrap();
    let get_length = get.bytes().await.unwrap().len();
    let head = http.head(&one).bearer_auth(&clinician).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "application/json");
    assert_eq!(head.headers()["content-length"].to_str().unwrap(), get_length.to_string(), "the GET's length");
    assert!(head.bytes().await.unwrap().is_empty(), "no body");
    let list = http.head(format!("{gw}/api/patients?page=0&size=10")).bearer_auth(&clinician).send().await.unwrap();
    assert_eq!(list.status(), 200);
    assert!(list.headers().contains_key("x-total-count"));
    let unknown = http.head(format!("{gw}/api/patients/{}", uuid::Uuid::new_v4())).bearer_auth(&clinician).send().await;
    assert_eq!(unknown.unwrap().status(), 404);

    // The roles of the GET: refused by the gateway, and by the service itself when called directly.
    assert_eq!(http.head(&one).bearer_auth(&analyst).send().await.unwrap().status(), 403);
    let direct = format!("http://127.0.0.1:{}/patients/{id}", patients.port);
    assert_eq!(http.head(&direct).bearer_auth(&analyst).send().await.unwrap().status(), 403);
    assert_eq!(http.head(&direct).send().await.unwrap().status(), 401);
    // Only where GET is taken.
    let post_only = http.request(Method::HEAD, format!("{gw}/api/appointments/{id}/cancel")).bearer_auth(&clinician);
    let refused = post_only.send().await.unwrap();
    assert_eq!(refused.status(), 405);
    assert_eq!(refused.headers()["allow"], "POST");
    let allow = http.request(Method::PATCH, &one).bearer_auth(&clinician).send().await.unwrap();
    assert_eq!(allow.headers()["allow"], "GET, HEAD, PUT, DELETE");

    // Audited as the reads they are.
    let trail: Vec<(String, String, i16)> =
        sqlx::query_as("SELECT action, subject, outcome FROM audit_log WHERE action <> 'patient.create' ORDER BY seq")
            .fetch_all(&patients.db)
            .await
            .unwrap();
    let (c, n) = (subject(&clinician), subject(&analyst));
    let expected = [
        ("patient.read", &c, 200),
        ("patient.read", &c, 200),
        ("patient.search", &c, 200),
        ("patient.read", &c, 404),
        ("patient.read", &n, 403),
    ];
    let expected: Vec<(String, String, i16)> = expected.iter().map(|(a, s, o)| (a.to_string(), s.to_string(), *o)).collect();
    assert_eq!(trail, expected);
}

/// A patient id spelled with percent-encoding (`%36` for `6`) is no route, through the gateway
/// or at the service: the handler would decode it to the patient while the audit, reading the
/// path as sent, could not name whose record was read.
#[tokio::test]
async fn a_percent_encoded_patient_id_reaches_no_handler() {
    let kc = Keycloak::shared_for_tests();
    let (_billing, patients, gw) = patients_behind_a_gateway(kc).await;
    let clinician = kc.user_token(CLINICIAN).await.unwrap();
    let http = reqwest::Client::new();
    let body = json!({"name": "Perry Centon", "email": "perry.centon@example.org", "address": "5 Escape Road",
                      "dateOfBirth": "1975-08-09", "registeredDate": "2025-07-08"});
    let created = http.post(format!("{gw}/api/patients")).bearer_auth(&clinician).json(&body).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let (first, rest) = id.split_at(1);
    let encoded_first = format!("%{:02X}{rest}", first.as_bytes()[0]);
    let encoded_dash = id.replacen('-', "%2D", 1);
    let direct = format!("http://127.0.0.1:{}", patients.port);
    for url in [
        format!("{gw}/api/patients/{encoded_first}"),
        format!("{gw}/api/patients/{encoded_dash}/bill"),
        format!("{direct}/patients/{encoded_first}"),
        format!("{direct}/patients/{encoded_dash}"),
    ] {
        let resp = http.get(&url).bearer_auth(&clinician).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{url}");
        assert!(!resp.text().await.unwrap().contains("Perry"), "{url}");
    }
    // The one read that happened is the plain one, and it names the patient.
    assert_eq!(http.get(format!("{gw}/api/patients/{id}")).bearer_auth(&clinician).send().await.unwrap().status(), 200);
    let reads: Vec<(String, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT action, patient_id FROM audit_log WHERE action <> 'patient.create' ORDER BY seq")
            .fetch_all(&patients.db)
            .await
            .unwrap();
    assert_eq!(reads, vec![("patient.read".to_owned(), Some(uuid::Uuid::parse_str(&id).unwrap()))]);
}

/// Appends from more writers than the pool has connections, each in its own transaction and
/// every fifth rolled back, make one unbroken chain: each committed append is one link after the
/// one committed before it, and a rolled-back append leaves no gap.
#[tokio::test]
async fn concurrent_appends_make_one_unbroken_chain() {
    let (url, owner) = fresh_db("audit_chain").await;
    // The service's pool: it acts as the runtime role, as in production.
    let db = common::db::DbArgs::from_url(url)
        .connect_and_migrate_as(&patient_service::MIGRATOR, Some(patient_service::RUNTIME_ROLE))
        .await
        .unwrap();
    let (writers, appends) = (16, 25);
    let tasks = (0..writers).map(|writer| {
        let db = db.clone();
        tokio::spawn(async move {
            let mut committed = 0u64;
            for n in 0..appends {
                let mut tx = db.begin().await.unwrap();
                sqlx::query("INSERT INTO audit_log (action, outcome, request_id, prev_hash, hash) VALUES ('patient.read', 200, $1, '', '')")
                    .bind(format!("{writer}-{n}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                if n % 5 == 4 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed += 1;
                }
            }
            committed
        })
    });
    let committed: u64 = futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).sum();
    assert_eq!(committed, writers * (appends - appends / 5));
    // Checked as the owner (the runtime role cannot read the head), as `cargo xtask audit verify` does.
    let report = patient_service::audit::verify_chain(&owner).await.unwrap();
    assert_eq!(report, patient_service::audit::ChainReport { rows: committed, first_broken: None });
}
