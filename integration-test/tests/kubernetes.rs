//! The Helm chart on a real single-node Kubernetes 1.32 (`dev_stack::cluster`, what
//! `cargo xtask k8s` starts): the chart installed with two replicas of every service on the
//! local images; the token → REST journey through the gateway Service; one pod of each service
//! deleted under a steady load of creates; then a `helm upgrade` to a new image tag under load.
//!
//! After each disruption everything is accounted for, from PostgreSQL and the services' APIs:
//! - lost: a 201 without its patient row, an outbox event never published, a patient analytics
//!   did not count, a patient without an ACTIVE billing account;
//! - duplicated: analytics counting more creates than there are patients, an ACTIVE account of
//!   no patient.
//!
//! During the pod deletions requests may fail (a pod dies mid-request), but nothing accepted may
//! be lost; during the upgrade (readiness, preStop and graceful shutdown) no request may fail.
//!
//! Runs with the Docker backend (`TEST_INFRA=docker`: the images come from the local engine),
//! as root. Bounded: the install waits at most 10 minutes for every pod, the scenario 11 (about 3
//! minutes in all on a machine where the images and binaries are built).

mod support;

use std::{
    collections::HashSet,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use dev_stack::{
    cluster::{Cluster, Lifetime},
    containers::{backend, Backend},
    docker::{Compose, SERVICES},
    keycloak::REALM,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use support::eventually;
use tokio::sync::RwLock;

const RELEASE: &str = "pp";
const TAG: &str = dev_stack::docker::SERVICE_IMAGE_TAG;
/// The same build under the next version's tag: a new image reference for every Deployment,
/// which is what an upgrade changes.
const NEXT_TAG: &str = "0.1.1";
/// The chart's default database password (values.yaml, dev only).
const DB_PASSWORD: &str = "postgres-dev";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_serves_on_a_single_node_cluster_and_loses_nothing_to_pod_loss_or_an_upgrade() {
    if backend() != Backend::Docker {
        eprintln!("kubernetes: runs with TEST_INFRA=docker");
        return;
    }
    let started = Instant::now();
    let cluster = tokio::task::spawn_blocking(start).await.unwrap().unwrap();
    eprintln!("kubernetes: cluster up and the chart installed in {:?}", started.elapsed());
    let cluster = Arc::new(cluster);
    let result = tokio::spawn(tokio::time::timeout(Duration::from_secs(660), scenario(cluster.clone()))).await;
    if !matches!(result, Ok(Ok(()))) {
        if let Ok(pods) = cluster.kubectl().unwrap().args(["get", "pods", "-o", "wide"]).output() {
            eprintln!("kubernetes: pods\n{}", String::from_utf8_lossy(&pods.stdout));
        }
        for service in SERVICES {
            eprintln!("{}", cluster.pod_logs(&format!("{RELEASE}-{service}"), 15));
        }
    }
    // Stopped here, whatever helper may still hold the cluster (a timed-out wait).
    tokio::task::spawn_blocking(move || cluster.stop()).await.unwrap();
    match result {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("the scenario did not finish within 11 minutes"),
        Err(panic) => std::panic::resume_unwind(panic.into_panic()),
    }
}

/// Images (the infrastructure's local ones, the six services under both tags), the node, the
/// chart with two replicas of every service.
fn start() -> anyhow::Result<Cluster> {
    let mut images: Vec<String> = dev_stack::docker::build_images()?
        .into_iter()
        .filter(|(var, _)| ["POSTGRES_IMAGE", "KAFKA_IMAGE", "KEYCLOAK_IMAGE", "MAILPIT_IMAGE"].contains(var))
        .map(|(_, tag)| tag)
        .collect();
    for image in Compose::existing(&format!("patient-platform-k8s-{}", std::process::id())).build_services(TAG)? {
        let next = image.replace(&format!(":{TAG}"), &format!(":{NEXT_TAG}"));
        let tagged = Command::new("docker").args(["tag", &image, &next]).status()?;
        anyhow::ensure!(tagged.success(), "docker tag {next}");
        images.extend([image, next]);
    }
    let cluster = Cluster::start(Lifetime::TiedToThisProcess)?;
    cluster.load_images(&images)?;
    cluster.install_platform(RELEASE, TAG, 2, Duration::from_secs(600))?;
    Ok(cluster)
}

async fn scenario(cluster: Arc<Cluster>) {
    let (gateway, keycloak, postgres) = {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || {
            (
                c.service_url(&format!("{RELEASE}-gateway"), 4004).unwrap(),
                c.service_url(&format!("{RELEASE}-keycloak"), 8080).unwrap(),
                c.service_url(&format!("{RELEASE}-postgres"), 5432).unwrap(),
            )
        })
        .await
        .unwrap()
    };
    let pg_host = postgres.trim_start_matches("http://").to_owned();
    let patients_db = PgPool::connect(&format!("postgres://postgres:{DB_PASSWORD}@{pg_host}/patient_service")).await.unwrap();
    let billing_db = PgPool::connect(&format!("postgres://postgres:{DB_PASSWORD}@{pg_host}/billing_service")).await.unwrap();
    let analytics_db = PgPool::connect(&format!("postgres://postgres:{DB_PASSWORD}@{pg_host}/analytics_service")).await.unwrap();
    let dbs = Databases { patients: patients_db, billing: billing_db, analytics: analytics_db };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let api = Api { http: http.clone(), gateway, token: Arc::new(RwLock::new(String::new())), sent: Arc::default() };
    // The service account's token (5 minutes), renewed every minute for the load.
    let token_url = format!("{keycloak}/realms/{REALM}/protocol/openid-connect/token");
    *api.token.write().await = fetch_token(&http, &token_url).await.expect("a token");
    let renewal = {
        let (http, token) = (http.clone(), api.token.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                // A failed renewal is retried next minute; the current token lasts five.
                if let Some(fresh) = fetch_token(&http, &token_url).await {
                    *token.write().await = fresh;
                }
            }
        })
    };
    let renewal = AbortOnDrop(renewal);

    // The README journey through the gateway Service: the platform's pods behind it, two of each.
    let gw = &api.gateway;
    assert_eq!(http.get(format!("{gw}/api/patients")).send().await.unwrap().status(), 401, "no token, no data");
    let body = api.patient_body("journey");
    let created = http.post(format!("{gw}/api/patients")).bearer_auth(api.token().await).json(&body).send().await.unwrap();
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let got = http.get(format!("{gw}{location}")).bearer_auth(api.token().await).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.json::<Value>().await.unwrap()["email"], body["email"]);
    eventually(Duration::from_secs(90), "the journey's account ACTIVE", || async {
        let bill = http.get(format!("{gw}{location}/bill")).bearer_auth(api.token().await).send().await.ok()?;
        (bill.json::<Value>().await.ok()?["status"] == "ACTIVE").then_some(())
    })
    .await;
    let mut accepted: HashSet<String> = HashSet::from([location.rsplit('/').next().unwrap().to_owned()]);

    // One pod of each service deleted under a steady load of creates.
    let load = Load::start(&api, 3);
    load.wait_accepted(20).await;
    let victims: Vec<String> = {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || SERVICES.iter().map(|s| one_pod(&c, s)).collect()).await.unwrap()
    };
    let deleted = cluster.kubectl().unwrap().args(["delete", "pod", "--wait=false"]).args(&victims).output().unwrap();
    assert!(deleted.status.success(), "kubectl delete: {}", String::from_utf8_lossy(&deleted.stderr));
    let before = load.accepted_count();
    {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || {
            // The deleted pods are gone and replaced: two ready pods of each service again.
            let gone = |pod: &String| {
                let out = c.kubectl().unwrap().args(["get", "pod", pod, "--ignore-not-found", "-o", "name"]).output().unwrap();
                out.stdout.is_empty()
            };
            let start = Instant::now();
            while !victims.iter().all(gone) {
                assert!(start.elapsed() < Duration::from_secs(120), "the deleted pods did not terminate");
                std::thread::sleep(Duration::from_secs(1));
            }
            c.wait_rolled_out(RELEASE, 2, Duration::from_secs(240)).unwrap();
        })
        .await
        .unwrap();
    }
    load.wait_accepted(before + 20).await;
    let outcome = load.stop().await;
    eprintln!("kubernetes: pod deletion under load: {}", outcome.summary());
    accepted.extend(outcome.accepted.iter().cloned());
    account(&api, &dbs, &accepted).await;

    // A helm upgrade to a new image tag under load: no request fails.
    let load = Load::start(&api, 3);
    load.wait_accepted(10).await;
    {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || {
            c.install_platform(RELEASE, NEXT_TAG, 2, Duration::from_secs(300)).unwrap();
            // Rolled out counts the pods kept; the last old ones are still stopping (preStop,
            // drain): the load goes on until they are gone.
            let start = Instant::now();
            while terminating(&c) > 0 {
                assert!(start.elapsed() < Duration::from_secs(120), "old pods still terminating after 2 minutes");
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .await
        .unwrap();
    }
    let pods = release_pods(&cluster).expect("the release's pods");
    let images: Vec<&str> = pods
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["spec"]["containers"][0]["image"].as_str())
        .collect();
    for service in SERVICES {
        let running: Vec<&&str> = images.iter().filter(|i| i.contains(&format!("/{service}:"))).collect();
        assert_eq!(running.len(), 2, "{service}: {running:?}");
        assert!(running.iter().all(|i| i.ends_with(&format!(":{NEXT_TAG}"))), "{service} rolled: {running:?}");
    }
    let before = load.accepted_count();
    load.wait_accepted(before + 10).await;
    let outcome = load.stop().await;
    eprintln!("kubernetes: helm upgrade under load: {}", outcome.summary());
    assert!(outcome.failed.is_empty(), "requests failed during the upgrade: {:?}", outcome.failed);
    accepted.extend(outcome.accepted.iter().cloned());
    account(&api, &dbs, &accepted).await;
    drop(renewal);
}

/// The release's pods, as the API server lists them (None when it does not answer).
fn release_pods(cluster: &Cluster) -> Option<Vec<Value>> {
    let out = cluster
        .kubectl()
        .unwrap()
        .args(["get", "pods", "-l", &format!("app.kubernetes.io/instance={RELEASE}"), "-o", "json"])
        .output()
        .unwrap();
    let mut pods: Value = serde_json::from_slice(&out.stdout).ok()?;
    pods["items"].as_array_mut().map(std::mem::take)
}

/// Pods of the release being deleted.
fn terminating(cluster: &Cluster) -> usize {
    release_pods(cluster).map_or(usize::MAX, |pods| pods.iter().filter(|p| !p["metadata"]["deletionTimestamp"].is_null()).count())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The databases the accounting reads, as the platform's superuser.
struct Databases {
    patients: PgPool,
    billing: PgPool,
    analytics: PgPool,
}

/// Nothing accepted is lost and nothing is counted twice, once the platform has converged.
async fn account(api: &Api, dbs: &Databases, accepted: &HashSet<String>) {
    let rows: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, email FROM patients").fetch_all(&dbs.patients).await.unwrap();
    let sent = api.sent.lock().unwrap().clone();
    let strangers: Vec<&String> = rows.iter().map(|(_, email)| email).filter(|e| !sent.contains(*e)).collect();
    assert!(strangers.is_empty(), "patients nobody created: {strangers:?}");
    let rows: HashSet<String> = rows.into_iter().map(|(id, _)| id.to_string()).collect();
    let lost: Vec<&String> = accepted.difference(&rows).collect();
    assert!(lost.is_empty(), "accepted creates without a patient row: {lost:?}");
    // Patients whose create failed after committing are still patients: the events follow the rows.
    eventually(Duration::from_secs(120), "every outbox event published", || async {
        let unsent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetch_one(&dbs.patients).await.ok()?;
        (unsent == 0).then_some(())
    })
    .await;
    let ids = |db: &PgPool, sql: &'static str| {
        let db = db.clone();
        async move {
            let ids: Vec<uuid::Uuid> = sqlx::query_scalar(sql).fetch_all(&db).await.ok()?;
            Some(ids.into_iter().map(|id| id.to_string()).collect::<HashSet<String>>())
        }
    };
    // Analytics: each patient's creation seen (its registry of current patients), and counted once.
    eventually(Duration::from_secs(120), "analytics knowing every patient, and only them", || async {
        (ids(&dbs.analytics, "SELECT patient_id FROM active_patients").await? == rows).then_some(())
    })
    .await;
    let summary: Value = api.get("/api/analytics/summary").await.expect("the summary").json().await.unwrap();
    assert_eq!(summary["patientsCreated"].as_u64(), Some(rows.len() as u64), "analytics counts each creation once");
    // Billing: one ACTIVE account per patient, none for anyone else.
    eventually(Duration::from_secs(120), "an ACTIVE account for every patient, and only for them", || async {
        (ids(&dbs.billing, "SELECT patient_id FROM billing_accounts WHERE status = 'ACTIVE'").await? == rows).then_some(())
    })
    .await;
    eprintln!("kubernetes: accounted for {} patients ({} accepted creates)", rows.len(), accepted.len());
}

/// The gateway Service with the service account's current token.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    gateway: String,
    token: Arc<RwLock<String>>,
    /// The email of every create sent (answered or not).
    sent: Arc<Mutex<HashSet<String>>>,
}

impl Api {
    async fn token(&self) -> String {
        self.token.read().await.clone()
    }

    /// A new patient's body, its email recorded as sent.
    fn patient_body(&self, tag: &str) -> Value {
        let email = format!("k8s-{tag}-{}@example.org", uuid::Uuid::new_v4().simple());
        self.sent.lock().unwrap().insert(email.clone());
        json!({
            "name": "Cluster Patient",
            "email": email,
            "address": "1 Node Street",
            "dateOfBirth": "1980-02-03",
            "registeredDate": "2024-03-04"
        })
    }

    async fn get(&self, path: &str) -> Option<reqwest::Response> {
        let resp = self.http.get(format!("{}{path}", self.gateway)).bearer_auth(self.token().await).send().await.ok()?;
        resp.status().is_success().then_some(resp)
    }
}

async fn fetch_token(http: &reqwest::Client, url: &str) -> Option<String> {
    let form = [("grant_type", "client_credentials"), ("client_id", "ms-api"), ("client_secret", "ms-api-dev-secret")];
    let resp = http.post(url).form(&form).send().await.ok()?;
    let body: Value = resp.error_for_status().ok()?.json().await.ok()?;
    body["access_token"].as_str().map(str::to_owned)
}

/// A pod of `service` in the release.
fn one_pod(cluster: &Cluster, service: &str) -> String {
    let selector = format!("app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name={service}");
    let out = cluster
        .kubectl()
        .unwrap()
        .args(["get", "pods", "-l", &selector, "-o", "jsonpath={.items[0].metadata.name}"])
        .output()
        .unwrap();
    let pod = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!pod.is_empty(), "no pod of {service}");
    pod
}

/// Workers creating patients through the gateway, each reading its patient back.
struct Load {
    stop: Arc<AtomicBool>,
    outcome: Arc<Mutex<Outcome>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default, Clone)]
struct Outcome {
    sent: usize,
    accepted: Vec<String>,
    /// What did not succeed: a status or a transport error, with the request.
    failed: Vec<String>,
}

impl Outcome {
    fn summary(&self) -> String {
        format!("{} requests, {} creates accepted, {} failed", self.sent, self.accepted.len(), self.failed.len())
    }
}

impl Load {
    fn start(api: &Api, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let workers = (0..workers)
            .map(|_| {
                let (api, stop, outcome) = (api.clone(), stop.clone(), outcome.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let token = api.token().await;
                        let sent = api
                            .http
                            .post(format!("{}/api/patients", api.gateway))
                            .bearer_auth(&token)
                            .json(&api.patient_body("load"))
                            .send()
                            .await;
                        let created = match sent {
                            Ok(resp) if resp.status() == 201 => {
                                let id = resp.json::<Value>().await.ok().and_then(|v| v["id"].as_str().map(str::to_owned));
                                if id.is_none() {
                                    outcome.lock().unwrap().failed.push("create: 201 without a readable body".into());
                                }
                                id
                            }
                            Ok(resp) => {
                                outcome.lock().unwrap().failed.push(format!("create: {}", resp.status()));
                                None
                            }
                            Err(e) => {
                                outcome.lock().unwrap().failed.push(format!("create: {e}"));
                                None
                            }
                        };
                        let read = match &created {
                            Some(id) => {
                                Some(api.http.get(format!("{}/api/patients/{id}", api.gateway)).bearer_auth(&token).send().await)
                            }
                            None => None,
                        };
                        let mut o = outcome.lock().unwrap();
                        o.sent += 1 + usize::from(read.is_some());
                        if let Some(id) = created {
                            o.accepted.push(id);
                        }
                        match read {
                            Some(Ok(resp)) if resp.status() == 200 => {}
                            Some(Ok(resp)) => o.failed.push(format!("read: {}", resp.status())),
                            Some(Err(e)) => o.failed.push(format!("read: {e}")),
                            None => {}
                        }
                    }
                })
            })
            .collect();
        Self { stop, outcome, workers }
    }

    fn accepted_count(&self) -> usize {
        self.outcome.lock().unwrap().accepted.len()
    }

    async fn wait_accepted(&self, n: usize) {
        eventually(Duration::from_secs(180), &format!("{n} creates accepted under load"), || async {
            (self.accepted_count() >= n).then_some(())
        })
        .await;
    }

    async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        let outcome = self.outcome.lock().unwrap().clone();
        outcome
    }
}
