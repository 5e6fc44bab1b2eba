//! billing-service through its public gRPC interface, on a real PostgreSQL.

use billing_service::{config::Settings, startup::Application};
use dev_stack::{
    keycloak::{Keycloak, ANALYST, CLINICIAN, REALM},
    PgCluster,
};
use proto::billing::{billing_service_client::BillingServiceClient, BillingRequest, GetBillingAccountRequest};
use sqlx::PgPool;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::Channel,
    Code,
};
use uuid::Uuid;
use verifier::settings::OidcArgs;

/// Puts one bearer token on every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Client = BillingServiceClient<InterceptedService<Channel, Bearer>>;

struct TestApp {
    grpc_port: u16,
    http_port: u16,
    db: PgPool,
}

impl TestApp {
    async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let url = PgCluster::shared_for_tests().fresh_database("billing").await.unwrap();
        let oidc = OidcArgs::for_issuer(Keycloak::shared_for_tests().issuer(REALM));
        let mut settings = Settings::for_database(&url, oidc);
        tweak(&mut settings);
        let app = Application::build(settings).await.unwrap();
        let (grpc_port, http_port) = (app.grpc_port(), app.http_port());
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        Self { grpc_port, http_port, db: PgPool::connect(&url).await.unwrap() }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.grpc_port)).unwrap().connect().await.unwrap()
    }

    /// A client calling as the service account (every billing role), as patient-service does.
    async fn client(&self) -> Client {
        self.client_as(Some(&Keycloak::shared_for_tests().service_token().await.unwrap())).await
    }

    async fn client_as(&self, token: Option<&str>) -> Client {
        let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse().unwrap()));
        BillingServiceClient::with_interceptor(self.channel().await, bearer)
    }

    async fn account_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM billing_accounts").fetch_one(&self.db).await.unwrap()
    }
}

fn request(patient_id: &str) -> BillingRequest {
    BillingRequest { patient_id: patient_id.into(), name: "Ann Example".into(), email: "ann@example.com".into() }
}

#[tokio::test]
async fn every_billing_call_needs_a_valid_token_with_the_billing_role() {
    let app = TestApp::spawn().await;
    let kc = Keycloak::shared_for_tests();
    let patient = Uuid::new_v4().to_string();

    let anonymous = app.client_as(None).await.create_billing_account(request(&patient)).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    let forged = app.client_as(Some("not.a.token")).await.get_billing_account(get(&patient)).await.unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated);
    // An analyst holds no billing role; a clinician reads bills but opens no accounts.
    let analyst = kc.user_token(ANALYST).await.unwrap();
    let denied = app.client_as(Some(&analyst)).await.get_billing_account(get(&patient)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let clinician = kc.user_token(CLINICIAN).await.unwrap();
    let denied = app.client_as(Some(&clinician)).await.create_billing_account(request(&patient)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("billing.write"), "{}", denied.message());
    assert_eq!(app.account_rows().await, 0, "no refused call stored anything");

    let read = app.client_as(Some(&clinician)).await.get_billing_account(get(&patient)).await.unwrap_err();
    assert_eq!(read.code(), Code::NotFound, "billing.read passes the check");
    app.client().await.create_billing_account(request(&patient)).await.unwrap();
    assert_eq!(app.account_rows().await, 1);
}

fn get(patient_id: &str) -> GetBillingAccountRequest {
    GetBillingAccountRequest { patient_id: patient_id.into() }
}

#[tokio::test]
async fn create_returns_a_pending_account_and_the_same_one_on_repeat() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let patient = Uuid::new_v4().to_string();

    let first = client.create_billing_account(request(&patient)).await.unwrap().into_inner();
    let again = client.create_billing_account(request(&patient)).await.unwrap().into_inner();

    assert_eq!(first.status, "PENDING", "ACTIVE only once the patient's event arrives");
    let account_id = Uuid::parse_str(&first.account_id).expect("account ids are UUIDs");
    assert_eq!(again.account_id, first.account_id, "a repeat returns the same account");
    let (stored_id, stored_patient): (Uuid, Uuid) =
        sqlx::query_as("SELECT id, patient_id FROM billing_accounts").fetch_one(&app.db).await.unwrap();
    assert_eq!((stored_id, stored_patient.to_string()), (account_id, patient));
    assert_eq!(app.account_rows().await, 1);
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", app.http_port)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("billing_accounts_total{result=\"created\"} 1"), "{metrics}");
    assert!(metrics.contains("billing_accounts_total{result=\"existing\"} 1"), "{metrics}");
}

#[tokio::test]
async fn concurrent_repeats_for_one_patient_all_get_one_account() {
    let app = TestApp::spawn().await;
    let client = app.client().await;
    let patient = Uuid::new_v4().to_string();

    let calls = (0..16).map(|_| {
        let mut client = client.clone();
        let req = request(&patient);
        async move { client.create_billing_account(req).await.map(|r| r.into_inner().account_id) }
    });
    let ids: Vec<String> = futures::future::try_join_all(calls).await.unwrap();

    assert!(ids.windows(2).all(|w| w[0] == w[1]), "all callers see one account: {ids:?}");
    assert_eq!(app.account_rows().await, 1);
}

#[tokio::test]
async fn invalid_requests_get_invalid_argument_and_store_nothing() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let id = Uuid::new_v4().to_string();
    let cases = [
        (BillingRequest { patient_id: "".into(), ..request("") }, "patientId"),
        (request("not-a-uuid"), "patientId"),
        (BillingRequest { email: "not-an-email".into(), ..request(&id) }, "email"),
        (BillingRequest { email: "".into(), ..request(&id) }, "email"),
        (BillingRequest { name: "  ".into(), ..request(&id) }, "name"),
        (BillingRequest { name: "Ann\u{0}Example".into(), ..request(&id) }, "name"),
    ];
    for (req, field) in cases {
        let status = client.create_billing_account(req).await.expect_err("must be rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "message names {field}: {}", status.message());
    }
    assert_eq!(app.account_rows().await, 0);
}

#[tokio::test]
async fn get_billing_account_returns_the_account_or_not_found() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let patient = Uuid::new_v4().to_string();
    let created = client.create_billing_account(request(&patient)).await.unwrap().into_inner();

    let found = client.get_billing_account(GetBillingAccountRequest { patient_id: patient.clone() }).await.unwrap().into_inner();
    assert_eq!((found.account_id, found.patient_id, found.status.as_str()), (created.account_id, patient, "PENDING"));

    let missing = client
        .get_billing_account(GetBillingAccountRequest { patient_id: Uuid::new_v4().to_string() })
        .await
        .expect_err("unknown patient");
    assert_eq!(missing.code(), Code::NotFound);
    let bad = client.get_billing_account(GetBillingAccountRequest { patient_id: "x".into() }).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_billing_service() {
    let app = TestApp::spawn().await;
    use tonic_reflection::pb::{v1, v1alpha};

    let mut v1_client = v1::server_reflection_client::ServerReflectionClient::new(app.channel().await);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream = v1_client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().expect("one response");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"BillingService".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel().await);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol("BillingService".into())),
    };
    let mut stream = alpha.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().expect("one response");
    assert!(
        matches!(resp.message_response, Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "v1alpha describes BillingService: {resp:?}"
    );
}

#[tokio::test]
async fn grpc_health_reports_serving_and_http_ready_checks_the_database() {
    let app = TestApp::spawn().await;
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let mut health = HealthClient::new(app.channel().await);
    for service in ["", "BillingService"] {
        let resp = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(resp.status(), ServingStatus::Serving, "service {service:?}");
    }

    let ready = reqwest::get(format!("http://127.0.0.1:{}/health/ready", app.http_port)).await.unwrap();
    assert_eq!(ready.status(), 200);
    let live = reqwest::get(format!("http://127.0.0.1:{}/health/live", app.http_port)).await.unwrap();
    assert_eq!(live.status(), 200);
}

#[tokio::test]
async fn grpc_health_is_not_serving_while_the_database_refuses_connections_and_serving_again_after() {
    use std::time::{Duration, Instant};
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

    let app = TestApp::spawn_with(|s| s.db.database_acquire_timeout_ms = 500).await;
    let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&app.db).await.unwrap();
    let admin = PgPool::connect(&PgCluster::shared_for_tests().url("postgres")).await.unwrap();
    let mut health = HealthClient::new(app.channel().await);
    // Waits until the server's and BillingService's status both are `want`.
    async fn statuses(health: &mut HealthClient<Channel>, want: ServingStatus) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut now = vec![];
            for service in ["", "BillingService"] {
                now.push(health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status());
            }
            if now.iter().all(|s| *s == want) {
                return;
            }
            assert!(Instant::now() < deadline, "health still {now:?}, waiting for {want:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    statuses(&mut health, ServingStatus::Serving).await;

    // The database refuses new connections and drops the ones it has.
    sqlx::query(&format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false")).execute(&admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();
    statuses(&mut health, ServingStatus::NotServing).await;
    let ready = reqwest::get(format!("http://127.0.0.1:{}/health/ready", app.http_port)).await.unwrap();
    assert_eq!(ready.status(), 503, "the same check as readiness");

    sqlx::query(&format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS true")).execute(&admin).await.unwrap();
    statuses(&mut health, ServingStatus::Serving).await;
    let mut client = app.client().await;
    client.create_billing_account(request(&Uuid::new_v4().to_string())).await.expect("billing answers again");
}

/// The account states one patient can go through: PENDING from the RPC, VOIDED by the sweeper
/// (contact scrubbed), PENDING again from a retried create, revived to ACTIVE by the patient's
/// event, CLOSED by its deletion, and CLOSED stays final against a redelivered event.
#[tokio::test]
async fn an_account_moves_pending_voided_active_closed_and_closed_is_final() {
    use billing_service::repo::{self, Activation};
    use std::time::Duration;

    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let patient = Uuid::new_v4();
    let contact = || async {
        sqlx::query_as::<_, (String, String, String)>("SELECT status, name, email FROM billing_accounts WHERE patient_id = $1")
            .bind(patient)
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    let first = client.create_billing_account(request(&patient.to_string())).await.unwrap().into_inner();
    assert_eq!(first.status, "PENDING");
    assert_eq!(repo::void_stale_pending(&app.db, Duration::from_secs(60)).await.unwrap(), 0, "not stale yet");
    assert_eq!(repo::void_stale_pending(&app.db, Duration::ZERO).await.unwrap(), 1);
    assert_eq!(contact().await, ("VOIDED".into(), String::new(), String::new()));

    let retried = client.create_billing_account(request(&patient.to_string())).await.unwrap().into_inner();
    assert_eq!((retried.account_id.as_str(), retried.status.as_str()), (first.account_id.as_str(), "PENDING"));
    assert_eq!(contact().await, ("PENDING".into(), "Ann Example".into(), "ann@example.com".into()));

    repo::void_stale_pending(&app.db, Duration::ZERO).await.unwrap();
    let how = repo::activate_for_patient(&app.db, patient, "Ann Later", "ann.later@example.com").await.unwrap();
    assert_eq!(how, Activation::Revived, "an event after the window brings the account back");
    assert_eq!(contact().await, ("ACTIVE".into(), "Ann Later".into(), "ann.later@example.com".into()));
    assert_eq!(repo::activate_for_patient(&app.db, patient, "X", "x@example.com").await.unwrap(), Activation::Unchanged);
    assert_eq!(repo::void_stale_pending(&app.db, Duration::ZERO).await.unwrap(), 0, "an ACTIVE account is never voided");

    assert!(repo::close_for_patient(&app.db, patient).await.unwrap());
    assert_eq!(repo::activate_for_patient(&app.db, patient, "X", "x@example.com").await.unwrap(), Activation::Unchanged);
    assert_eq!(contact().await, ("CLOSED".into(), String::new(), String::new()), "a redelivered event reopens nothing");
    let again = client.create_billing_account(request(&patient.to_string())).await.unwrap().into_inner();
    assert_eq!(again.status, "CLOSED", "a create of a deleted patient's id opens nothing");

    let unknown = Uuid::new_v4();
    assert_eq!(repo::activate_for_patient(&app.db, unknown, "Bo", "bo@example.com").await.unwrap(), Activation::Opened);
    assert_eq!(app.account_rows().await, 2);
}

#[tokio::test]
async fn a_pending_account_is_activated_and_takes_the_contact_of_a_later_change_only() {
    use billing_service::repo::{self, Activation, Effect, PatientChange};

    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let (kept, replaced) = (Uuid::new_v4(), Uuid::new_v4());
    for patient in [kept, replaced] {
        assert_eq!(client.create_billing_account(request(&patient.to_string())).await.unwrap().into_inner().status, "PENDING");
    }
    let created = |patient_id, sequence| PatientChange {
        patient_id,
        event_type: "PATIENT_CREATED",
        name: "Ann Event",
        email: "ann.event@example.com",
        sequence,
    };
    // Without a sequence the event is no later change than the create call's contact.
    let events = [created(kept, 0), created(replaced, 1)];
    let activated = Effect::Activation(Activation::Activated);
    assert_eq!(repo::apply_events(&app.db, &events).await.unwrap(), vec![activated, activated]);
    let row = |patient: Uuid| {
        let db = app.db.clone();
        async move {
            sqlx::query_as::<_, (String, String, String, i64, bool, bool)>(
                "SELECT status, name, email, contact_sequence, activated_at IS NOT NULL, voided_at IS NULL \
                 FROM billing_accounts WHERE patient_id = $1",
            )
            .bind(patient)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    assert_eq!(row(kept).await, ("ACTIVE".into(), "Ann Example".into(), "ann@example.com".into(), 0, true, true));
    assert_eq!(row(replaced).await, ("ACTIVE".into(), "Ann Event".into(), "ann.event@example.com".into(), 1, true, true));
    let unchanged = Effect::Activation(Activation::Unchanged);
    assert_eq!(repo::apply_events(&app.db, &events).await.unwrap(), vec![unchanged, unchanged], "redelivered");
    assert_eq!(repo::void_stale_pending(&app.db, std::time::Duration::ZERO).await.unwrap(), 0, "none is PENDING any more");
}

#[tokio::test]
async fn a_silent_connection_is_closed_and_a_call_whose_request_never_comes_is_ended() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncReadExt;

    let app = TestApp::spawn_with(|s| {
        s.grpc.grpc_max_connection_age_ms = 1_000;
        s.grpc.grpc_max_connection_age_grace_ms = 500;
    })
    .await;

    // A client that connects and never speaks HTTP/2.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", app.grpc_port)).await.unwrap();
    let started = Instant::now();
    // The server's SETTINGS come at once; then nothing, until the connection is closed.
    let mut sent = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut sent)).await;
    assert!(read.is_ok(), "the server never closed the connection (it sent {} bytes)", sent.len());
    assert!(started.elapsed() >= Duration::from_millis(1_000), "closed after {:?}", started.elapsed());

    // A caller with a valid token whose request message never comes (on connections that
    // live long, so only the call's own limit can end it).
    let app = TestApp::spawn_with(|s| s.grpc.grpc_call_timeout_ms = 1_000).await;
    let token = format!("Bearer {}", Keycloak::shared_for_tests().service_token().await.unwrap());
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(futures::stream::pending::<BillingRequest>());
    request.metadata_mut().insert("authorization", token.parse().unwrap());
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/BillingService/CreateBillingAccount");
    let started = Instant::now();
    let call =
        grpc.client_streaming::<_, _, proto::billing::BillingResponse, _>(request, path, tonic_prost::ProstCodec::default());
    let status = tokio::time::timeout(Duration::from_secs(10), call).await.expect("the call was ended").unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "ended after {:?}", started.elapsed());
    assert_eq!(app.account_rows().await, 0);
}
