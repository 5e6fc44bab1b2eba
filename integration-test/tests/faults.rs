//! The platform under faults and load: the REAL binaries of the four services on a private
//! PostgreSQL cluster and Kafka broker, a steady load of creates, updates and deletes through the
//! gateway, and one fault at a time — `kill -9` and restart of each service, of the broker and of
//! PostgreSQL; SIGTERM of each service mid-load. After every fault the platform is given time to
//! converge and everything is accounted for:
//! - lost: a 201 without its patient row, an accepted update or delete not in the final state;
//! - duplicated: a patient nobody created, two events for one change, analytics counting more;
//! - orphaned: an ACTIVE or PENDING account without a patient, a patient without an ACTIVE
//!   account, a deleted patient's account not CLOSED;
//! - out of order: a patient's events on the topic not in sequence order;
//! - a 503 that left something behind.
//!
//! Every phase prints its line (requests sent / accepted / 503 / other errors / no answer, the
//! reconciliation, and how many accounts were voided so far) on stderr, also when the test passes. A suite of its own: it kills its own
//! infrastructure.

mod support;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dev_stack::{
    containers::{backend, Backend},
    kafka::Kafka,
    keycloak::Keycloak,
    services, PgCluster,
};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    ClientConfig, Message,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use support::{decode, eventually, RealServices, SERVICES};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

/// Seconds a billing account may stay PENDING here (600 in production): short enough that every
/// phase ends with all orphans voided.
const PENDING_WINDOW_SECS: u64 = 4;
/// Concurrent clients of the load.
const WORKERS: usize = 4;
/// Load before the fault, and after the faulty component is back.
const LOAD_BEFORE: Duration = Duration::from_secs(3);
const LOAD_AFTER: Duration = Duration::from_secs(3);
/// How long a component stays down.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// How long a SIGTERM'd service may take to finish in-flight work before it is killed.
const GRACE: Duration = Duration::from_secs(20);
/// The bound on convergence after each fault.
const CONVERGE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill(&'static str),
    Term(&'static str),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Kill(what) => write!(f, "kill -9 {what}"),
            Fault::Term(what) => write!(f, "SIGTERM {what}"),
        }
    }
}

/// What the client learnt about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 201 / 200 / 204.
    Accepted,
    /// 503: the platform says nothing was done.
    Refused,
    /// Any other answer (a 500 when a connection broke under a request, a 502 from a dying upstream).
    Failed(u16),
    /// No answer at all (the connection broke).
    NoAnswer,
}

#[derive(Debug, Clone)]
enum Op {
    Create { email: String, address: String, id: Option<String> },
    Update { id: String, address: String },
    Delete { id: String },
}

#[derive(Debug, Clone)]
struct Record {
    phase: usize,
    op: Op,
    outcome: Outcome,
}

/// The running platform: infrastructure handles and the services' processes.
struct Platform {
    pg: PgCluster,
    kafka: Kafka,
    services: RealServices,
    gateway: String,
    patients_db: PgPool,
    billing_db: PgPool,
}

impl Platform {
    /// Injects the fault, keeps the component down for [`DOWN_FOR`], brings it back.
    fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::Kill("PostgreSQL") => {
                self.pg.crash().unwrap();
                std::thread::sleep(DOWN_FOR);
                self.pg.restart().unwrap();
            }
            Fault::Kill("Kafka") => {
                self.kafka.kill();
                std::thread::sleep(DOWN_FOR);
                self.kafka.start().unwrap();
            }
            Fault::Kill(service) => {
                assert!(services::kill(service, &self.services.dirs), "{service} was running");
                std::thread::sleep(DOWN_FOR);
                self.services.start(service);
            }
            Fault::Term(service) => {
                let log_before = std::fs::metadata(self.services.dirs.log_file(service)).map(|m| m.len()).unwrap_or(0) as usize;
                let started = Instant::now();
                assert!(services::stop(service, &self.services.dirs, GRACE), "{service} was running");
                let took = started.elapsed();
                assert!(took < GRACE, "{service} did not finish within {GRACE:?} of SIGTERM");
                // A clean stop: the signal seen, every task stopped, none failed.
                let log = std::fs::read(self.services.dirs.log_file(service)).unwrap();
                let shutdown = String::from_utf8_lossy(&log[log_before..]);
                assert!(shutdown.contains("received SIGTERM"), "{service} did not see SIGTERM:\n{shutdown}");
                assert!(!shutdown.contains("failed; stopping the others"), "{service} stopped uncleanly:\n{shutdown}");
                std::thread::sleep(DOWN_FOR.saturating_sub(took));
                self.services.start(service);
            }
        }
    }
}

async fn start_platform() -> Platform {
    let pg = tokio::task::spawn_blocking(PgCluster::start_ephemeral_crash_safe).await.unwrap().unwrap();
    for db in ["patient_service", "billing_service", "analytics_service"] {
        pg.ensure_database(db).await.unwrap();
    }
    let kafka = tokio::task::spawn_blocking(Kafka::start_ephemeral).await.unwrap().unwrap();
    tokio::task::spawn_blocking(Keycloak::shared_for_tests).await.unwrap();
    let env = [("PENDING_ACCOUNT_WINDOW_SECS", PENDING_WINDOW_SECS.to_string())];
    let services = RealServices::new(&pg, kafka.bootstrap_servers(), &env, "patient-platform-test-faults-");
    let platform = Platform {
        patients_db: PgPool::connect_lazy(&pg.url("patient_service")).unwrap(),
        billing_db: PgPool::connect_lazy(&pg.url("billing_service")).unwrap(),
        pg,
        kafka,
        gateway: services.gateway.clone(),
        services,
    };
    tokio::task::block_in_place(|| {
        for name in SERVICES {
            platform.services.start(name);
        }
    });
    platform
}

/// The patients one client may still change: (id, email).
type Live = Arc<Mutex<Vec<(String, String)>>>;

/// One client of the load: creates, updates and deletes its own patients, one request at a
/// time, never retrying (a failed create is a client that gave up).
async fn worker(
    n: usize,
    phase: usize,
    gateway: String,
    token: Arc<RwLock<String>>,
    live: Live,
    log: Arc<Mutex<Vec<Record>>>,
    stop: CancellationToken,
) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut i = 0usize;
    while !stop.is_cancelled() {
        i += 1;
        let target = { live.lock().unwrap().get(i % 7).cloned() };
        let (op, email) = match (i % 5, target) {
            (3, Some((id, email))) => (Op::Update { id, address: format!("{i} Update Street, phase {phase}") }, email),
            (4, Some((id, email))) => (Op::Delete { id }, email),
            _ => {
                let email = format!("fault-{phase}-{n}-{i}@example.org");
                (Op::Create { email: email.clone(), address: format!("{i} Create Road"), id: None }, email)
            }
        };
        let bearer = token.read().await.clone();
        let request = match &op {
            Op::Create { email, address, .. } => http.post(format!("{gateway}/api/patients")).json(&json!({
                "name": format!("Fault Patient {n} {i}"), "email": email, "address": address,
                "dateOfBirth": "1975-06-07", "registeredDate": "2025-01-02"
            })),
            Op::Update { id, address } => http.put(format!("{gateway}/api/patients/{id}")).json(&json!({
                "name": format!("Fault Patient {n} {i}"), "email": email,
                "address": address, "dateOfBirth": "1975-06-07", "registeredDate": "2025-01-02"
            })),
            Op::Delete { id } => http.delete(format!("{gateway}/api/patients/{id}")),
        };
        let (outcome, body) = match request.bearer_auth(bearer).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                match status {
                    200 | 201 | 204 => (Outcome::Accepted, body),
                    503 => (Outcome::Refused, body),
                    s => (Outcome::Failed(s), body),
                }
            }
            Err(_) => (Outcome::NoAnswer, Value::Null),
        };
        let op = match op {
            Op::Create { email, address, .. } if outcome == Outcome::Accepted => {
                let id = body["id"].as_str().expect("a 201 carries the id").to_owned();
                live.lock().unwrap().push((id.clone(), email.clone()));
                Op::Create { email, address, id: Some(id) }
            }
            Op::Delete { id } => {
                // Whatever the answer, this client does not touch the patient again.
                live.lock().unwrap().retain(|(l, _)| *l != id);
                Op::Delete { id }
            }
            Op::Update { id, address } => {
                if outcome != Outcome::Accepted {
                    // An unknown outcome: the patient's address is one of two values now.
                    live.lock().unwrap().retain(|(l, _)| *l != id);
                }
                Op::Update { id, address }
            }
            other => other,
        };
        log.lock().unwrap().push(Record { phase, op, outcome });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The reconciliation of everything sent so far against the platform's final state.
#[derive(Debug, Default)]
struct Reconciliation {
    lost: usize,
    duplicated: usize,
    orphaned: usize,
    out_of_order: usize,
    refused_with_effect: usize,
    /// Accounts voided so far: opened by billing for a create that never committed (not a
    /// failure: the proof that such accounts converge to nothing).
    voided: usize,
    /// What each count is made of (the first few), for the failure message.
    why: Vec<String>,
}

impl Reconciliation {
    fn clean(&self) -> bool {
        self.lost + self.duplicated + self.orphaned + self.out_of_order + self.refused_with_effect == 0
    }

    fn note(&mut self, what: String) {
        if self.why.len() < 20 {
            self.why.push(what);
        }
    }
}

struct Ledger<'a> {
    records: &'a [Record],
}

impl Ledger<'_> {
    /// Patient ids whose create was accepted.
    fn accepted_ids(&self) -> HashSet<&str> {
        self.records
            .iter()
            .filter_map(|r| match (&r.op, r.outcome) {
                (Op::Create { id: Some(id), .. }, Outcome::Accepted) => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Per patient: the ops after its create, in the order the one client that owns it sent them.
    fn changes(&self) -> HashMap<&str, Vec<&Record>> {
        let mut out: HashMap<&str, Vec<&Record>> = HashMap::new();
        for r in self.records {
            match &r.op {
                Op::Update { id, .. } | Op::Delete { id } => out.entry(id.as_str()).or_default().push(r),
                Op::Create { .. } => {}
            }
        }
        out
    }
}

async fn reconcile(platform: &Platform, records: &[Record], token: &str) -> Reconciliation {
    let ledger = Ledger { records };
    // Converged: every event published, every PENDING account decided, analytics caught up.
    let events: i64 = eventually(CONVERGE, "the outbox drained", || async {
        let unsent: Option<i64> =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetch_one(&platform.patients_db).await.ok();
        let total: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&platform.patients_db).await.ok();
        (unsent == Some(0)).then_some(total).flatten()
    })
    .await;
    eventually(CONVERGE, "no billing account PENDING", || async {
        let pending: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM billing_accounts WHERE status = 'PENDING'")
            .fetch_one(&platform.billing_db)
            .await
            .ok();
        (pending == Some(0)).then_some(())
    })
    .await;
    let topic = read_topic(&platform.kafka.bootstrap_servers(), events as usize).await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let summary = loop {
        let answer = http.get(format!("{}/api/analytics/summary", platform.gateway)).bearer_auth(token).send().await;
        let last = match answer {
            Ok(resp) => resp.json().await.unwrap_or(Value::Null),
            Err(e) => Value::String(e.to_string()),
        };
        let counted =
            ["patientsCreated", "patientsUpdated", "patientsDeleted"].iter().map(|k| last[k].as_i64().unwrap_or(0)).sum::<i64>();
        if counted >= events {
            break last;
        }
        if started.elapsed() > CONVERGE {
            let analytics = PgPool::connect(&platform.pg.url("analytics_service")).await.unwrap();
            let counted: HashSet<String> = sqlx::query_scalar("SELECT event_id::text FROM processed_events")
                .fetch_all(&analytics)
                .await
                .unwrap()
                .into_iter()
                .collect();
            let missing: Vec<String> = topic
                .iter()
                .filter(|e| !counted.contains(&e.event.event_id))
                .map(|e| format!("{} seq {} at {}:{}", e.event.event_type, e.event.sequence, e.partition, e.offset))
                .collect();
            panic!("analytics did not count {events} events within {CONVERGE:?}; last answer: {last}; not counted: {missing:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The final state. Billing follows the topic: an account voided while its patient's event was
    // held up (Kafka down longer than the window) is revived when the event arrives, so billing
    // has settled once it agrees with the patients, or the bound is reached.
    let deadline = Instant::now() + CONVERGE;
    let (patients, accounts) = loop {
        let patients: HashMap<String, (String, String, i64)> =
            sqlx::query_as::<_, (String, String, String, i64)>("SELECT id::text, email, address, version FROM patients")
                .fetch_all(&platform.patients_db)
                .await
                .unwrap()
                .into_iter()
                .map(|(id, email, address, version)| (id, (email, address, version)))
                .collect();
        let accounts: Vec<(String, String)> = sqlx::query_as("SELECT patient_id::text, status FROM billing_accounts")
            .fetch_all(&platform.billing_db)
            .await
            .unwrap();
        if billing_disagreements(&patients, &accounts).is_empty() || Instant::now() > deadline {
            break (patients, accounts);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let mut r = Reconciliation { voided: accounts.iter().filter(|(_, status)| status == "VOIDED").count(), ..Default::default() };
    let accepted = ledger.accepted_ids();
    let changes = ledger.changes();
    // Lost: accepted creates, updates and deletes.
    for id in &accepted {
        let history = changes.get(id).map(Vec::as_slice).unwrap_or_default();
        let maybe_deleted = history.iter().any(|c| matches!(c.op, Op::Delete { .. }) && c.outcome != Outcome::Refused);
        let surely_deleted = history.iter().any(|c| matches!(c.op, Op::Delete { .. }) && c.outcome == Outcome::Accepted);
        match patients.get(*id) {
            None if !maybe_deleted => {
                r.lost += 1;
                r.note(format!("accepted create {id} has no row"));
            }
            Some(_) if surely_deleted => {
                r.lost += 1;
                r.note(format!("accepted delete of {id} did not happen"));
            }
            Some((_, address, _)) => {
                // The address is the last accepted value, or that of a later unanswered update.
                let initial = ledger.records.iter().find_map(|rec| match &rec.op {
                    Op::Create { id: Some(c), address, .. } if c == id => Some(address.as_str()),
                    _ => None,
                });
                let mut allowed = vec![initial.unwrap()];
                for c in history {
                    if let Op::Update { address: a, .. } = &c.op {
                        match c.outcome {
                            Outcome::Accepted => allowed = vec![a.as_str()],
                            Outcome::Refused => {}
                            Outcome::Failed(_) | Outcome::NoAnswer => allowed.push(a.as_str()),
                        }
                    }
                }
                if !allowed.contains(&address.as_str()) {
                    r.lost += 1;
                    r.note(format!("{id}: address {address:?}, expected one of {allowed:?}"));
                }
            }
            None => {}
        }
    }
    // Duplicated: a patient row nobody's create could have made; refused creates that did.
    let sent_emails: HashMap<&str, Outcome> = ledger
        .records
        .iter()
        .filter_map(|rec| match &rec.op {
            Op::Create { email, .. } => Some((email.as_str(), rec.outcome)),
            _ => None,
        })
        .collect();
    for (id, (email, _, _)) in &patients {
        if accepted.contains(id.as_str()) {
            continue;
        }
        match sent_emails.get(email.as_str()) {
            Some(Outcome::Refused) => {
                r.refused_with_effect += 1;
                r.note(format!("a 503 create left patient {id}"));
            }
            Some(Outcome::Failed(_) | Outcome::NoAnswer) => {} // committed, answer lost: a real patient
            Some(Outcome::Accepted) | None => {
                r.duplicated += 1;
                r.note(format!("patient {id} was never created by a client"));
            }
        }
    }
    // Orphaned accounts, unbilled patients, deleted patients' accounts still open.
    for why in billing_disagreements(&patients, &accounts) {
        r.orphaned += 1;
        r.note(why);
    }
    // Per-patient order on the topic, one event per change, analytics' counts.
    let mut per_patient: BTreeMap<String, Vec<(u64, String, String)>> = BTreeMap::new();
    for Published { event: e, .. } in &topic {
        per_patient.entry(e.patient_id.clone()).or_default().push((e.sequence, e.event_id.clone(), e.event_type.clone()));
    }
    let mut distinct_by_type: HashMap<String, i64> = HashMap::new();
    for (patient, evs) in &per_patient {
        let mut seen: Vec<(u64, &str)> = Vec::new();
        for (seq, event_id, kind) in evs {
            match seen.last() {
                Some((last, last_id)) if seq == last && event_id == last_id => continue, // a re-send
                Some((last, _)) if seq <= last => {
                    r.out_of_order += 1;
                    r.note(format!("{patient}: sequence {seq} after {last}"));
                }
                _ => {}
            }
            if seen.iter().any(|(s, _)| s == seq) {
                r.duplicated += 1;
                r.note(format!("{patient}: two events with sequence {seq}"));
                continue;
            }
            seen.push((*seq, event_id));
            *distinct_by_type.entry(kind.clone()).or_default() += 1;
        }
        let expected: Vec<u64> = (1..=seen.len() as u64).collect();
        let mut got: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
        got.sort_unstable();
        if got != expected {
            r.out_of_order += 1;
            r.note(format!("{patient}: sequences {got:?}"));
        }
        if let Some((_, _, version)) = patients.get(patient) {
            if seen.len() as i64 != *version {
                r.lost += 1;
                r.note(format!("{patient}: {} events for version {version}", seen.len()));
            }
        }
    }
    for (kind, field) in
        [("PATIENT_CREATED", "patientsCreated"), ("PATIENT_UPDATED", "patientsUpdated"), ("PATIENT_DELETED", "patientsDeleted")]
    {
        let counted = summary[field].as_i64().unwrap_or(-1);
        let published = distinct_by_type.get(kind).copied().unwrap_or(0);
        if counted > published {
            r.duplicated += (counted - published) as usize;
            r.note(format!("analytics counted {counted} {kind}, {published} published"));
        } else if published > counted {
            r.lost += (published - counted) as usize;
            r.note(format!("analytics counted {counted} {kind}, {published} published"));
        }
    }
    if summary["activePatients"].as_i64() != Some(patients.len() as i64) {
        r.lost += 1;
        r.note(format!("analytics has {} active patients, the database {}", summary["activePatients"], patients.len()));
    }
    r
}

/// Where billing disagrees with the patients: an ACTIVE or PENDING account without a patient, a
/// patient without exactly one ACTIVE account.
fn billing_disagreements(patients: &HashMap<String, (String, String, i64)>, accounts: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut active: HashMap<&str, usize> = HashMap::new();
    for (patient, status) in accounts {
        match (patients.contains_key(patient), status.as_str()) {
            (true, "ACTIVE") => *active.entry(patient.as_str()).or_default() += 1,
            (false, "ACTIVE" | "PENDING") => out.push(format!("account of {patient} is {status} without a patient")),
            _ => {}
        }
    }
    for p in patients.keys().filter(|p| active.get(p.as_str()) != Some(&1)) {
        out.push(format!("patient {p} has no ACTIVE account"));
    }
    out
}

/// One record of the topic.
struct Published {
    event: proto::events::PatientEvent,
    partition: i32,
    offset: i64,
}

/// Every record of the topic, until `events` distinct event ids were read.
async fn read_topic(bootstrap: &str, events: usize) -> Vec<Published> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("fault-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["patient"]).unwrap();
    let (mut out, mut ids) = (Vec::new(), HashSet::new());
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while ids.len() < events {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => {
                let (event, partition, offset) = (decode(&m.detach()), m.partition(), m.offset());
                ids.insert(event.event_id.clone());
                out.push(Published { event, partition, offset });
            }
            Ok(Err(e)) => panic!("reading the topic: {e}"),
            Err(_) => panic!("only {} of {events} events on the topic", ids.len()),
        }
    }
    // A little longer: re-sent duplicates may follow the last new event.
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
        out.push(Published { event: decode(&m.detach()), partition: m.partition(), offset: m.offset() });
    }
    out
}

fn report(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    let dir = std::env::var_os("TEST_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp/patient-platform-test-artifacts".into());
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("faults.txt")) {
        let _ = writeln!(f, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_lost_duplicated_orphaned_or_reordered_under_faults_and_load() {
    if backend() == Backend::Docker {
        // Killing processes needs the local launchers; the containers backend has no kill.
        report("faults: skipped with TEST_INFRA=docker (the suite kills local processes)");
        return;
    }
    let mut platform = start_platform().await;
    let kc = Keycloak::shared_for_tests();
    let token = Arc::new(RwLock::new(kc.service_token().await.unwrap()));
    let log: Arc<Mutex<Vec<Record>>> = Arc::default();
    let live: Vec<Live> = (0..WORKERS).map(|_| Arc::default()).collect();
    let all = [
        Fault::Kill("patient-service"),
        Fault::Kill("billing-service"),
        Fault::Kill("analytics-service"),
        Fault::Kill("Kafka"),
        Fault::Kill("PostgreSQL"),
        Fault::Term("patient-service"),
        Fault::Term("billing-service"),
        Fault::Term("analytics-service"),
        Fault::Term("gateway"),
    ];
    // FAULTS=kafka,postgresql (any part of a fault's name) runs only those: for working on one.
    let only = std::env::var("FAULTS").unwrap_or_default().to_lowercase();
    let faults: Vec<Fault> = all
        .into_iter()
        .filter(|f| only.is_empty() || only.split(',').any(|o| f.to_string().to_lowercase().contains(o.trim())))
        .collect();
    report(&format!(
        "{:<28} {:>5} {:>8} {:>5} {:>9} {:>9} | {:>4} {:>10} {:>8} {:>12} {:>15} | {:>6}",
        "fault",
        "sent",
        "accepted",
        "503",
        "other err",
        "no answer",
        "lost",
        "duplicated",
        "orphaned",
        "out of order",
        "503 with effect",
        "voided"
    ));
    let mut failures = Vec::new();
    for (phase, fault) in faults.into_iter().enumerate() {
        *token.write().await = kc.service_token().await.unwrap();
        let stop = CancellationToken::new();
        let workers: Vec<_> = (0..WORKERS)
            .map(|n| {
                tokio::spawn(worker(
                    n,
                    phase,
                    platform.gateway.clone(),
                    token.clone(),
                    live[n].clone(),
                    log.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(LOAD_BEFORE).await;
        tokio::task::block_in_place(|| platform.inject(fault));
        tokio::time::sleep(LOAD_AFTER).await;
        stop.cancel();
        for w in workers {
            w.await.unwrap();
        }
        let records = log.lock().unwrap().clone();
        let result = reconcile(&platform, &records, &token.read().await.clone()).await;
        let mine: Vec<&Record> = records.iter().filter(|r| r.phase == phase).collect();
        let count = |f: &dyn Fn(Outcome) -> bool| mine.iter().filter(|r| f(r.outcome)).count();
        report(&format!(
            "{:<28} {:>5} {:>8} {:>5} {:>9} {:>9} | {:>4} {:>10} {:>8} {:>12} {:>15} | {:>6}",
            fault.to_string(),
            mine.len(),
            count(&|o| o == Outcome::Accepted),
            count(&|o| o == Outcome::Refused),
            count(&|o| matches!(o, Outcome::Failed(_))),
            count(&|o| o == Outcome::NoAnswer),
            result.lost,
            result.duplicated,
            result.orphaned,
            result.out_of_order,
            result.refused_with_effect,
            result.voided
        ));
        assert!(count(&|o| o == Outcome::Accepted) > 0, "{fault}: no request was accepted at all");
        if !result.clean() {
            failures.push(format!("{fault}: {result:?}"));
        }
    }
    assert!(failures.is_empty(), "reconciliation failed after: {failures:#?}");

    // SIGTERM while the broker is unreachable: every service still stops within its grace (the
    // consumers' last offset commit must not wait for a broker that is gone).
    platform.kafka.kill();
    for service in SERVICES {
        let started = Instant::now();
        assert!(services::stop(service, &platform.services.dirs, GRACE), "{service} was running");
        let took = started.elapsed();
        eprintln!("{service} stopped {took:?} after SIGTERM with the broker down");
        assert!(took < GRACE, "{service} did not stop within {GRACE:?} of SIGTERM with the broker down");
    }
}
