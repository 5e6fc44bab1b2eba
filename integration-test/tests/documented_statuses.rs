//! Every status the API description documents is one the platform really gives: for each
//! operation of the merged `/api/openapi.json`, each documented status is produced through the
//! gateway by a request (or a fault) that causes it, and every answer seen is documented.
//!
//! - the operation's own answers: created, changed, refused input, not found, conflicts, stale
//!   `If-Match`, a reused `Idempotency-Key`, a projection that does not catch up in time, billing
//!   stopped, a body too large or not JSON;
//! - what any operation can answer: no token (401), a token without the role (403: the analyst
//!   or the clinician), a spent rate limit (429, a gateway with a tiny limit), an upstream that
//!   answers garbage (502), refuses connections (503) or never answers (504), and an internal
//!   error (500: the services' tables renamed under them, at the end).

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
    time::Duration,
};

use chrono::{Duration as Span, SecondsFormat, Utc};
use dev_stack::{
    kafka::Kafka,
    keycloak::{Keycloak, ANALYST, CLINICIAN, REALM},
};
use reqwest::Method;
use serde_json::{json, Value};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// A documented operation: method and path template (under `/api`).
type Op = (String, String);

/// Sends requests through a gateway and records, per documented operation, the statuses seen.
struct Probe {
    http: reqwest::Client,
    templates: Vec<Op>,
    seen: Mutex<BTreeMap<Op, BTreeSet<u16>>>,
}

/// A request's body.
enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

impl Probe {
    /// The documented operation a concrete path belongs to (literal segments win over parameters).
    fn operation(&self, method: &str, path: &str) -> Option<Op> {
        let path = path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').collect();
        self.templates
            .iter()
            .filter(|(m, t)| {
                let parts: Vec<&str> = t.split('/').collect();
                m == method
                    && parts.len() == segments.len()
                    && parts.iter().zip(&segments).all(|(p, s)| p.starts_with('{') || p == s)
            })
            .min_by_key(|(_, t)| t.matches('{').count())
            .cloned()
    }

    async fn send(
        &self,
        gw: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Body,
        headers: &[(&str, String)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.request(Method::from_bytes(method.as_bytes()).unwrap(), format!("{gw}/api{path}"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Raw(content_type, bytes) => req.header("content-type", content_type).body(bytes),
        };
        let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let op = self.operation(method, path).unwrap_or_else(|| panic!("{method} {path} is no documented operation"));
        self.seen.lock().unwrap().entry(op).or_default().insert(status);
        let headers = resp.headers().clone();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body, headers)
    }
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A TCP server for the gateway's upstreams: `answer` None accepts and never answers, Some
/// writes those bytes and closes.
async fn upstream(answer: Option<&'static [u8]>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            match answer {
                Some(bytes) => {
                    let _ = conn.write_all(bytes).await;
                }
                None => held.push(conn),
            }
        }
    });
    url
}

/// A gateway in front of `patients`, `analytics` and `appointments` (URLs), adjusted by `tune`.
async fn gateway(urls: [&str; 3], tune: impl FnOnce(&mut gateway::config::Settings)) -> String {
    let kc = Keycloak::shared_for_tests();
    let mut settings = gateway::config::Settings::for_issuer(kc.issuer(REALM), urls[0]);
    settings.analytics_service_url = urls[1].to_owned();
    settings.appointment_service_url = urls[2].to_owned();
    tune(&mut settings);
    let app = gateway::startup::Application::build(settings).await.unwrap();
    let gw = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_status_is_one_the_platform_gives() {
    let kc = Keycloak::shared_for_tests();
    let args = kafka_args(&Kafka::shared_for_tests().bootstrap_servers(), &unique_topic());
    let appointment_topic = format!("appointment-{}", uuid::Uuid::new_v4().simple());
    let (billing, grpc) = spawn_billing(args.clone()).await;
    let patients = spawn_patients(&grpc, args.clone()).await;
    let topic = appointment_topic.clone();
    let analytics = spawn_analytics_with(None, args.clone(), move |s| s.appointment_topic = topic).await;
    let appointments = spawn_appointments(args, &appointment_topic).await;
    let urls = [patients.port, analytics.port, appointments.port].map(|p| format!("http://127.0.0.1:{p}"));
    let gw = gateway([&urls[0], &urls[1], &urls[2]], |_| {}).await;

    let doc: Value = reqwest::get(format!("{gw}/api/openapi.json")).await.unwrap().json().await.unwrap();
    assert_eq!(doc["servers"][0]["url"], "/api");
    let mut documented: BTreeMap<Op, BTreeSet<u16>> = BTreeMap::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let statuses = op["responses"].as_object().unwrap().keys().map(|s| s.parse::<u16>().unwrap()).collect();
            documented.insert((method.to_uppercase(), template.clone()), statuses);
        }
    }
    let probe = Probe {
        http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
        templates: documented.keys().cloned().collect(),
        seen: Mutex::default(),
    };
    let admin = kc.service_token().await.unwrap();
    let clinician = kc.user_token(CLINICIAN).await.unwrap();
    let analyst = kc.user_token(ANALYST).await.unwrap();
    let send = |method: &'static str, path: String, body: Body, headers: Vec<(&'static str, String)>| {
        let (probe, gw, admin) = (&probe, gw.clone(), admin.clone());
        async move { probe.send(&gw, method, &path, Some(&admin), body, &headers).await }
    };
    let big = || Body::Raw("application/json", format!("{{\"name\":\"{}\"}}", "x".repeat(64 * 1024)).into_bytes());
    let text = || Body::Raw("text/plain", b"name=x".to_vec());
    let malformed = || Body::Raw("application/json", b"{\"name\":".to_vec());
    let patient = |n: u32| {
        json!({
            "name": "Status Patient", "email": format!("status-{n}-{}@example.org", uuid::Uuid::new_v4().simple()),
            "address": "1 Contract Road", "dateOfBirth": "1980-02-03", "registeredDate": "2024-03-04"
        })
    };

    // Patients.
    let (status, a, _) = send("POST", "/patients".into(), Body::Json(patient(1)), vec![]).await;
    assert_eq!(status, 201, "{a}");
    let (_, b, _) = send("POST", "/patients".into(), Body::Json(patient(2)), vec![]).await;
    let (a_id, b_id) = (a["id"].as_str().unwrap().to_owned(), b["id"].as_str().unwrap().to_owned());
    send("POST", "/patients".into(), Body::Json(json!({})), vec![]).await;
    send("POST", "/patients".into(), malformed(), vec![]).await;
    let mut taken = patient(3);
    taken["email"] = a["email"].clone();
    send("POST", "/patients".into(), Body::Json(taken), vec![]).await;
    send("POST", "/patients".into(), big(), vec![]).await;
    send("POST", "/patients".into(), text(), vec![]).await;
    let key = ("idempotency-key", uuid());
    send("POST", "/patients".into(), Body::Json(patient(4)), vec![key.clone()]).await;
    send("POST", "/patients".into(), Body::Json(patient(5)), vec![key]).await;
    send("GET", "/patients?page=0&size=5".into(), Body::None, vec![]).await;
    send("GET", "/patients?size=0".into(), Body::None, vec![]).await;
    for path in [format!("/patients/{a_id}"), "/patients/not-a-uuid".into(), format!("/patients/{}", uuid())] {
        send("GET", path, Body::None, vec![]).await;
    }
    let mut changed = patient(6);
    send("PUT", format!("/patients/{a_id}"), Body::Json(changed.clone()), vec![]).await;
    changed["email"] = b["email"].clone();
    send("PUT", format!("/patients/{a_id}"), Body::Json(changed.clone()), vec![]).await;
    send("PUT", format!("/patients/{}", uuid()), Body::Json(patient(7)), vec![]).await;
    send("PUT", format!("/patients/{a_id}"), malformed(), vec![]).await;
    send("PUT", format!("/patients/{a_id}"), big(), vec![]).await;
    send("PUT", format!("/patients/{a_id}"), text(), vec![]).await;
    send("PUT", format!("/patients/{a_id}"), Body::Json(patient(8)), vec![("if-match", "\"0\"".to_owned())]).await;
    eventually(Duration::from_secs(30), "the account ACTIVE", || async {
        let (status, bill, _) = send("GET", format!("/patients/{a_id}/bill"), Body::None, vec![]).await;
        (status == 200 && bill["status"] == "ACTIVE").then_some(())
    })
    .await;
    send("GET", "/patients/not-a-uuid/bill".into(), Body::None, vec![]).await;
    send("GET", format!("/patients/{}/bill", uuid()), Body::None, vec![]).await;
    send("GET", format!("/audit?patientId={a_id}"), Body::None, vec![]).await;
    send("GET", "/audit?patientId=not-a-uuid".into(), Body::None, vec![]).await;
    send("GET", "/analytics/summary".into(), Body::None, vec![]).await;

    // Appointments: the patient reaches appointment-service over Kafka (422 until then).
    let me = subject(&clinician);
    let day = (Utc::now() + Span::days(3)).date_naive();
    let slot = |hour: u32| {
        let starts = day.and_hms_opt(hour, 0, 0).unwrap().and_utc();
        (rfc3339(starts), rfc3339(starts + Span::minutes(30)))
    };
    let booking = |hour: u32, patient: &str| {
        let (starts, ends) = slot(hour);
        json!({"patientId": patient, "clinicianId": me, "startsAt": starts, "endsAt": ends})
    };
    send("POST", "/appointments".into(), Body::Json(booking(8, &uuid())), vec![]).await;
    let mut booked = Vec::new();
    for hour in 9..14 {
        let body = booking(hour, &a_id);
        let (id, token) = eventually(Duration::from_secs(30), "a booking accepted", || {
            let body = body.clone();
            let send = &send;
            async move {
                let (status, appointment, headers) = send("POST", "/appointments".into(), Body::Json(body), vec![]).await;
                (status == 201).then(|| {
                    (appointment["id"].as_str().unwrap().to_owned(), headers["x-consistency-token"].to_str().unwrap().to_owned())
                })
            }
        })
        .await;
        booked.push((id, token));
    }
    send("POST", "/appointments".into(), Body::Json(booking(9, &a_id)), vec![]).await;
    send("POST", "/appointments".into(), Body::Json(json!({})), vec![]).await;
    send("POST", "/appointments".into(), big(), vec![]).await;
    send("POST", "/appointments".into(), text(), vec![]).await;
    let first = booked[0].0.clone();
    for path in [format!("/appointments/{first}"), "/appointments/not-a-uuid".into(), format!("/appointments/{}", uuid())] {
        send("GET", path, Body::None, vec![]).await;
    }
    let stale = ("if-match", "\"0\"".to_owned());
    let (starts, ends) = slot(15);
    let to = |s: &str, e: &str| Body::Json(json!({"startsAt": s, "endsAt": e}));
    send("POST", format!("/appointments/{first}/reschedule"), to(&starts, &ends), vec![stale.clone()]).await;
    send("POST", format!("/appointments/{first}/reschedule"), to(&starts, &ends), vec![]).await;
    let (busy_starts, busy_ends) = slot(10);
    send("POST", format!("/appointments/{first}/reschedule"), to(&busy_starts, &busy_ends), vec![]).await;
    send("POST", format!("/appointments/{}/reschedule", uuid()), to(&starts, &ends), vec![]).await;
    send("POST", "/appointments/not-a-uuid/reschedule".into(), to(&starts, &ends), vec![]).await;
    send("POST", format!("/appointments/{first}/reschedule"), big(), vec![]).await;
    send("POST", format!("/appointments/{first}/reschedule"), text(), vec![]).await;
    // The patient deleted (an appointment under way when that came stays BOOKED and cannot be
    // moved): the replica marked as a PATIENT_DELETED would, and restored for what follows.
    let mark_deleted = |deleted: bool| {
        sqlx::query("UPDATE patients SET deleted = $1 WHERE id = $2")
            .bind(deleted)
            .bind(uuid::Uuid::parse_str(&a_id).unwrap())
            .execute(&appointments.db)
    };
    mark_deleted(true).await.unwrap();
    let (later_starts, later_ends) = slot(16);
    send("POST", format!("/appointments/{first}/reschedule"), to(&later_starts, &later_ends), vec![]).await;
    mark_deleted(false).await.unwrap();
    // Each status command: a stale version, an unknown and a malformed id, then done on a
    // BOOKED appointment of its own, then again (its status no longer allows it).
    let commands: Vec<String> = documented
        .keys()
        .filter(|(m, t)| m == "POST" && t.starts_with("/appointments/{id}/") && !t.ends_with("/reschedule"))
        .map(|(_, t)| t.trim_start_matches("/appointments/{id}/").to_owned())
        .collect();
    assert!(commands.len() >= 4, "{commands:?}");
    for (n, command) in commands.iter().enumerate() {
        let own = &booked[1 + n % (booked.len() - 1)].0;
        send("POST", format!("/appointments/{own}/{command}"), Body::None, vec![stale.clone()]).await;
        send("POST", format!("/appointments/{}/{command}", uuid()), Body::None, vec![]).await;
        send("POST", format!("/appointments/not-a-uuid/{command}"), Body::None, vec![]).await;
    }
    // Transitions that are allowed: check-in then complete; cancel; no-show once the appointment
    // has started (its slot moved into the past, as time would); then every command on the
    // cancelled one, whose status allows none.
    let expected: BTreeSet<&str> = ["cancel", "check-in", "complete", "no-show"].into();
    assert_eq!(commands.iter().map(String::as_str).collect::<BTreeSet<_>>(), expected, "the documented commands");
    // (The guard against past slots is a trigger: time passing is not a booking, so it is off for this.)
    let mut tx = appointments.db.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await.unwrap();
    sqlx::query(
        "UPDATE appointments SET starts_at = now() - interval '1 hour', ends_at = now() - interval '30 minutes' WHERE id = $1",
    )
    .bind(uuid::Uuid::parse_str(&booked[3].0).unwrap())
    .execute(&mut *tx)
    .await
    .unwrap();
    // And one within the hour before its start, when a check-in opens.
    sqlx::query("UPDATE appointments SET starts_at = now() + interval '10 minutes', ends_at = now() + interval '40 minutes' WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&booked[1].0).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let plan = [(&booked[1].0, "check-in"), (&booked[1].0, "complete"), (&booked[2].0, "cancel"), (&booked[3].0, "no-show")];
    for (id, command) in plan {
        let (status, answer, _) = send("POST", format!("/appointments/{id}/{command}"), Body::None, vec![]).await;
        assert_eq!(status, 200, "{command}: {answer}");
    }
    for command in &commands {
        send("POST", format!("/appointments/{}/{command}", booked[2].0), Body::None, vec![]).await;
    }
    let token = &booked[0].1;
    send("GET", format!("/appointments/schedule?clinicianId={me}&date={day}"), Body::None, vec![("x-wait-for", token.clone())])
        .await;
    send("GET", "/appointments/schedule?clinicianId=nobody&date=tomorrow".into(), Body::None, vec![]).await;
    send("GET", format!("/appointments/upcoming?patientId={a_id}"), Body::None, vec![]).await;
    send("GET", "/appointments/upcoming?patientId=not-a-uuid".into(), Body::None, vec![]).await;
    let never = ("x-wait-for", format!("{}:1", uuid()));
    send("GET", format!("/appointments/schedule?clinicianId={me}&date={day}"), Body::None, vec![never.clone()]).await;
    send("GET", format!("/appointments/upcoming?patientId={a_id}"), Body::None, vec![never]).await;
    send("DELETE", format!("/patients/{b_id}"), Body::None, vec![("if-match", "\"0\"".to_owned())]).await;
    send("DELETE", format!("/patients/{b_id}"), Body::None, vec![]).await;
    send("DELETE", format!("/patients/{b_id}"), Body::None, vec![]).await;
    send("DELETE", "/patients/not-a-uuid".into(), Body::None, vec![]).await;

    // What any operation can answer: each one with a concrete path (an unknown id: nothing
    // changes when a request gets through).
    let concrete = |template: &str| -> String {
        let path = template.replace("{id}", &uuid());
        match path.as_str() {
            "/appointments/schedule" => format!("{path}?clinicianId={me}&date={day}"),
            "/appointments/upcoming" => format!("{path}?patientId={a_id}"),
            _ => path,
        }
    };
    let body_of = |method: &str| if method == "GET" || method == "DELETE" { Body::None } else { Body::Json(json!({})) };
    let limited = gateway([&urls[0], &urls[1], &urls[2]], |s| s.rate_limits = "default=1:1,admin=1:1".parse().unwrap()).await;
    let garbage = upstream(Some(b"NOT HTTP\r\n\r\n")).await;
    let silent = upstream(None).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let bad_gateway = gateway([&garbage, &garbage, &garbage], |_| {}).await;
    let unavailable = gateway([&closed, &closed, &closed], |_| {}).await;
    let timing_out = gateway([&silent, &silent, &silent], |s| s.upstream_timeout_ms = 300).await;
    for (method, template) in documented.keys() {
        let path = concrete(template);
        probe.send(&gw, method, &path, None, body_of(method), &[]).await;
        for token in [&clinician, &analyst] {
            probe.send(&gw, method, &path, Some(token), body_of(method), &[]).await;
        }
        for _ in 0..3 {
            probe.send(&limited, method, &path, Some(&admin), body_of(method), &[]).await;
        }
        for upstream in [&bad_gateway, &unavailable, &timing_out] {
            probe.send(upstream, method, &path, Some(&admin), body_of(method), &[]).await;
        }
    }
    // An internal error: every table of the services renamed under them, then put back.
    let rename = |from: &'static str, to: &'static str| {
        format!(
            "DO $$ DECLARE t text; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' \
             AND tablename LIKE '%{from}' LOOP EXECUTE format('ALTER TABLE %I RENAME TO %I', t, \
             left(t, length(t) - {}) || '{to}'); END LOOP; END $$",
            from.len()
        )
    };
    for db in [&patients.db, &analytics.db, &appointments.db] {
        sqlx::query(&rename("", "_gone")).execute(db).await.unwrap();
    }
    for (method, template) in documented.keys() {
        let body = match (method.as_str(), template.as_str()) {
            ("POST", "/patients") | ("PUT", "/patients/{id}") => Body::Json(patient(9)),
            ("POST", "/appointments") => Body::Json(booking(16, &a_id)),
            ("POST", "/appointments/{id}/reschedule") => to(&starts, &ends),
            (m, _) => body_of(m),
        };
        probe.send(&gw, method, &concrete(template), Some(&admin), body, &[]).await;
    }
    for db in [&patients.db, &analytics.db, &appointments.db] {
        sqlx::query(&rename("_gone", "")).execute(db).await.unwrap();
    }

    // Billing stopped: a create and a bill cannot be served.
    billing.stop().await;
    let (status, _, _) = send("POST", "/patients".into(), Body::Json(patient(8)), vec![]).await;
    assert_eq!(status, 503, "a create with billing stopped");
    send("GET", format!("/patients/{a_id}/bill"), Body::None, vec![]).await;

    let seen = probe.seen.into_inner().unwrap();
    let total: usize = documented.values().map(BTreeSet::len).sum();
    eprintln!("documented_statuses: {} operations, {total} documented answers", documented.len());
    assert!(documented.len() >= 17 && total >= 150, "the whole API is described");
    let mut missing = Vec::new();
    let mut undocumented = Vec::new();
    for (op, statuses) in &documented {
        let got = seen.get(op).cloned().unwrap_or_default();
        let lacking: Vec<&u16> = statuses.difference(&got).collect();
        if !lacking.is_empty() {
            missing.push(format!("{} {}: {lacking:?} (seen: {got:?})", op.0, op.1));
        }
        let extra: Vec<&u16> = got.difference(statuses).collect();
        if !extra.is_empty() {
            undocumented.push(format!("{} {}: {extra:?}", op.0, op.1));
        }
    }
    assert!(undocumented.is_empty(), "answers the description does not document:\n{}", undocumented.join("\n"));
    assert!(missing.is_empty(), "documented answers nothing produced:\n{}", missing.join("\n"));
}
