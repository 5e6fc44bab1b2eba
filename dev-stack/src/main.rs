//! `cargo xtask`: the dev command. `up` brings the stack up and prints how to use it, `down`
//! stops what `up` started, `status` shows it, `test` runs every test suite.

use std::{process::Command, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use dev_stack::{
    docker::{Compose, ComposePorts},
    jaeger::Jaeger,
    kafka::Kafka,
    keycloak::Keycloak,
    mailpit::Mailpit,
    paths, postgres,
    services::{self, Infrastructure, ServiceDirs, ServicePorts, ServiceSpec},
    suite::Stream,
    PgCluster,
};

/// Password of the dev cluster's superuser: a local, loopback-only development database.
const DEV_PG_PASSWORD: &str = "postgres-dev";
/// The databases of the services, one each.
const DATABASES: [&str; 5] =
    ["patient_service", "billing_service", "analytics_service", "appointment_service", "notification_service"];
/// Services in start order (billing first: patient-service calls it; the gateway last).
const SERVICES: [&str; 6] =
    ["billing-service", "patient-service", "analytics-service", "appointment-service", "notification-service", "gateway"];
/// The compose project of `up --docker`.
const COMPOSE_PROJECT: &str = "patient-platform";
/// The realm the platform trusts.
use dev_stack::keycloak::REALM;

#[derive(Parser)]
#[command(name = "xtask", about = "Dev command of the patient platform")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Ports of the dev stack (defaults from the SPEC).
#[derive(clap::Args, Clone)]
struct Ports {
    #[arg(long, env = "DEV_PG_PORT", default_value_t = 5432)]
    pg_port: u16,
    #[arg(long, env = "DEV_PATIENT_PORT", default_value_t = 4000)]
    patient_port: u16,
    #[arg(long, env = "DEV_BILLING_GRPC_PORT", default_value_t = 9001)]
    billing_grpc_port: u16,
    #[arg(long, env = "DEV_BILLING_HTTP_PORT", default_value_t = 4001)]
    billing_http_port: u16,
    #[arg(long, env = "DEV_ANALYTICS_PORT", default_value_t = 4002)]
    analytics_port: u16,
    #[arg(long, env = "DEV_APPOINTMENT_PORT", default_value_t = 4003)]
    appointment_port: u16,
    /// notification-service's health and metrics.
    #[arg(long, env = "DEV_NOTIFICATION_PORT", default_value_t = 4005)]
    notification_port: u16,
    /// The mail server's SMTP port.
    #[arg(long, env = "DEV_MAILPIT_SMTP_PORT", default_value_t = 1025)]
    mailpit_smtp_port: u16,
    /// The mail server's web UI and API.
    #[arg(long, env = "DEV_MAILPIT_UI_PORT", default_value_t = 8025)]
    mailpit_ui_port: u16,
    #[arg(long, env = "DEV_GATEWAY_PORT", default_value_t = 4004)]
    gateway_port: u16,
    #[arg(long, env = "DEV_KAFKA_PORT", default_value_t = 9092)]
    kafka_port: u16,
    #[arg(long, env = "DEV_KAFKA_CONTROLLER_PORT", default_value_t = 9093)]
    kafka_controller_port: u16,
    #[arg(long, env = "DEV_KEYCLOAK_PORT", default_value_t = 8080)]
    keycloak_port: u16,
    #[arg(long, env = "DEV_KEYCLOAK_MANAGEMENT_PORT", default_value_t = 9000)]
    keycloak_management_port: u16,
    /// Jaeger's UI and query API.
    #[arg(long, env = "DEV_JAEGER_UI_PORT", default_value_t = 16686)]
    jaeger_ui_port: u16,
    /// Where the services send their spans (OTLP/HTTP).
    #[arg(long, env = "DEV_JAEGER_OTLP_PORT", default_value_t = 4318)]
    jaeger_otlp_port: u16,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start PostgreSQL, Kafka, Keycloak and the services (safe to re-run), then print how to use them.
    Up {
        #[command(flatten)]
        ports: Ports,
        /// Build and run the services with the release profile (full speed).
        #[arg(long)]
        release: bool,
        /// Run the stack under Docker instead: docker-compose.yml on the local images
        /// (`cargo xtask images`, built first), Docker engine and compose installed when missing.
        #[arg(long, conflicts_with = "release")]
        docker: bool,
    },
    /// Stop everything `up` started.
    Down {
        /// Stop the Docker stack of `up --docker` (its data volumes are kept).
        #[arg(long)]
        docker: bool,
    },
    /// Show what runs.
    Status(Ports),
    /// Print the last lines of the services' logs (or of one service's).
    Logs {
        /// One of billing-service, patient-service, analytics-service, gateway.
        service: Option<String>,
        /// How many lines of each log.
        #[arg(long, short = 'n', default_value_t = 40)]
        lines: usize,
    },
    /// Measure the platform (release builds, real infrastructure on free ports) and print the
    /// figures; `--record` also writes them to bench/RESULTS.md.
    Bench {
        /// Arguments for the benchmark (see `--help` after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build local equivalents of every image docker-compose.yml and the Docker test backend
    /// use (for machines that reach package registries but no image registry) and print the
    /// variables that select them.
    Images,
    /// A single-node Kubernetes on this machine (binaries built once from the Go module proxy),
    /// the images loaded, and the Helm chart installed with two replicas of every service;
    /// prints how to call it. Needs root. `--down` stops it (its data goes with it).
    K8s {
        #[arg(long)]
        down: bool,
    },
    /// The audit trail of patient data (SPEC §11).
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// Run every test of the workspace (each suite starts its own infrastructure on free ports).
    Test {
        /// Options for `cargo test` (which tests: `-p gateway`, `--test edge`), then `--` and
        /// options for every test binary (a name filter, `--nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walk the hash chain of patient-service's audit log; names the first broken row and exits
    /// non-zero if there is one.
    Verify {
        #[command(flatten)]
        ports: Ports,
        /// The patient-service database to check (default: the dev stack's).
        #[arg(long, env = "AUDIT_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Up { ports, docker: true, .. } => up_docker(&ports),
        Cmd::Up { ports, release, .. } => up(&ports, release),
        Cmd::Bench { args } => bench(&args),
        Cmd::Down { docker: true } => Compose::existing(COMPOSE_PROJECT).down(false),
        Cmd::Down { docker: false } => down(),
        Cmd::Status(ports) => status(&ports),
        Cmd::Logs { service, lines } => logs(service.as_deref(), lines),
        Cmd::Audit { command: AuditCmd::Verify { ports, database_url } } => audit_verify(&ports, database_url),
        Cmd::Test { args } => test(&args),
        Cmd::Images => images(),
        Cmd::K8s { down: false } => k8s_up(),
        Cmd::K8s { down: true } => {
            let ran = dev_stack::cluster::Cluster::stop_running()?;
            println!(
                "{}",
                if ran { "Cluster stopped and the node cleaned." } else { "No cluster was running (the node is clean)." }
            );
            Ok(())
        }
    }
}

fn images() -> anyhow::Result<()> {
    let overrides = dev_stack::docker::build_images()?;
    println!("Local images built. docker compose and TEST_INFRA=docker use them with:");
    for (var, tag) in overrides {
        println!("  export {var}={tag}");
    }
    Ok(())
}

/// The Helm release `cargo xtask k8s` installs.
const HELM_RELEASE: &str = "pp";

fn k8s_up() -> anyhow::Result<()> {
    use dev_stack::cluster::{Cluster, Lifetime};
    println!("==> Local images (infrastructure, then the six services)");
    let mut images: Vec<String> = dev_stack::docker::build_images()?
        .into_iter()
        .filter(|(var, _)| ["POSTGRES_IMAGE", "KAFKA_IMAGE", "KEYCLOAK_IMAGE", "MAILPIT_IMAGE"].contains(var))
        .map(|(_, tag)| tag)
        .collect();
    images.extend(Compose::existing(COMPOSE_PROJECT).build_services(dev_stack::docker::SERVICE_IMAGE_TAG)?);
    println!("==> Single-node Kubernetes {} (first run: builds its binaries, about 15 minutes)", dev_stack::kube::VERSION);
    let cluster = Cluster::start(Lifetime::Detached)?;
    cluster.load_images(&images)?;
    println!("==> helm upgrade --install {HELM_RELEASE} deploy/helm/patient-platform (two replicas of every service)");
    cluster.install_platform(HELM_RELEASE, "0.1.0", 2, Duration::from_secs(900))?;
    let gateway = cluster.service_url(&format!("{HELM_RELEASE}-gateway"), 4004)?;
    let keycloak = cluster.service_url(&format!("{HELM_RELEASE}-keycloak"), 8080)?;
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let kubectl = dev_stack::kube::ensure(dev_stack::kube::KUBECTL)?.display().to_string();
    println!(
        r#"
The platform runs on Kubernetes (release {HELM_RELEASE}); its Services' cluster IPs answer on this machine.

  export KUBECONFIG={kubeconfig}
  {kubectl} get pods

  1. A token (client_credentials):
    TOKEN=$(curl -s {keycloak}/realms/{REALM}/protocol/openid-connect/token       -d grant_type=client_credentials -d client_id=ms-api -d client_secret=ms-api-dev-secret | jq -r .access_token)
  2. REST through the gateway Service:
    curl -H "Authorization: Bearer $TOKEN" {gateway}/api/patients

Pods' logs: /var/log/pods   Stop: cargo xtask k8s --down"#
    );
    Ok(())
}

fn audit_verify(ports: &Ports, database_url: Option<String>) -> anyhow::Result<()> {
    let url = match database_url {
        Some(url) => url,
        None => PgCluster::start_persistent(&pg_dir(), ports.pg_port, DEV_PG_PASSWORD)?.url("patient_service"),
    };
    let report = tokio::runtime::Runtime::new()?.block_on(async {
        let pool = sqlx::PgPool::connect(&url).await.context("cannot reach the patient-service database")?;
        patient_service::audit::verify_chain(&pool).await
    })?;
    match report.first_broken {
        None => {
            println!("audit trail intact: {} rows, every link verified", report.rows);
            Ok(())
        }
        Some(seq) => {
            println!("audit trail BROKEN at row seq={seq} (content, link or order does not match; {} rows read)", report.rows);
            std::process::exit(2);
        }
    }
}

fn pg_dir() -> std::path::PathBuf {
    paths::state_dir().join("postgres")
}

fn kafka_dir() -> std::path::PathBuf {
    paths::state_dir().join("kafka")
}

fn keycloak_dir() -> std::path::PathBuf {
    paths::state_dir().join("keycloak")
}

fn mailpit_dir() -> std::path::PathBuf {
    paths::state_dir().join("mailpit")
}

fn jaeger_dir() -> std::path::PathBuf {
    paths::state_dir().join("jaeger")
}

fn dirs() -> ServiceDirs {
    ServiceDirs::under(&paths::state_dir())
}

/// The services of the workspace, as `cargo build` package arguments.
const SERVICE_PACKAGES: [&str; 12] = [
    "-p",
    "billing-service",
    "-p",
    "patient-service",
    "-p",
    "analytics-service",
    "-p",
    "appointment-service",
    "-p",
    "notification-service",
    "-p",
    "gateway",
];

fn up(ports: &Ports, release: bool) -> anyhow::Result<()> {
    println!("==> PostgreSQL on 127.0.0.1:{} (data in {})", ports.pg_port, pg_dir().display());
    let pg = PgCluster::start_persistent(&pg_dir(), ports.pg_port, DEV_PG_PASSWORD)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    for db in DATABASES {
        rt.block_on(pg.ensure_database(db))?;
    }

    println!(
        "==> Kafka {} on 127.0.0.1:{} (KRaft, data in {})",
        dev_stack::kafka::VERSION,
        ports.kafka_port,
        kafka_dir().display()
    );
    Kafka::start_persistent(&kafka_dir(), ports.kafka_port, ports.kafka_controller_port)?;

    println!(
        "==> Keycloak {} on :{} (realm {REALM} imported from keycloak/realm-export.json)",
        dev_stack::keycloak::VERSION,
        ports.keycloak_port
    );
    Keycloak::start_persistent(&keycloak_dir(), ports.keycloak_port, ports.keycloak_management_port)?;

    println!(
        "==> Jaeger (traces; {}) UI on :{}, OTLP on :{}",
        dev_stack::jaeger::VERSION,
        ports.jaeger_ui_port,
        ports.jaeger_otlp_port
    );
    // Traces are optional: without Jaeger the services run and simply export nothing.
    let traces = match Jaeger::start_persistent(&jaeger_dir(), ports.jaeger_otlp_port, ports.jaeger_ui_port) {
        Ok(_) => true,
        Err(err) => {
            eprintln!("warning: no trace backend, the services export no spans: {err:#}");
            false
        }
    };

    println!(
        "==> Mailpit (mail server; {}) SMTP on :{}, UI on :{}",
        dev_stack::mailpit::VERSION,
        ports.mailpit_smtp_port,
        ports.mailpit_ui_port
    );
    Mailpit::start_persistent(&mailpit_dir(), ports.mailpit_smtp_port, ports.mailpit_ui_port)?;

    let profile = if release { "release" } else { "debug" };
    println!("==> building the services ({profile})");
    let mut build = vec!["build", "--bins"];
    if release {
        build.push("--release");
    }
    build.extend(SERVICE_PACKAGES);
    cargo(&build)?;

    let dirs = dirs().with_profile(profile);
    for spec in specs(ports, &pg, traces) {
        let pid = services::start(&spec, &dirs)?;
        services::wait_ready(&spec, &dirs, Duration::from_secs(60))?;
        println!("==> {} ready (pid {pid}, log {})", spec.name, dirs.log_file(spec.name).display());
    }
    let grpcurl = dev_stack::grpcurl::ensure()?;
    print_usage(ports, Some(&grpcurl.display().to_string()));
    Ok(())
}

fn specs(ports: &Ports, pg: &PgCluster, traces: bool) -> Vec<ServiceSpec> {
    let service_ports = ServicePorts {
        patient: ports.patient_port,
        billing_grpc: ports.billing_grpc_port,
        billing_http: ports.billing_http_port,
        analytics: ports.analytics_port,
        appointment: ports.appointment_port,
        notification: ports.notification_port,
        gateway: ports.gateway_port,
    };
    let database_url = |db: &str| pg.url(db);
    let infra = Infrastructure {
        database_url: &database_url,
        kafka_bootstrap: format!("127.0.0.1:{}", ports.kafka_port),
        keycloak_port: ports.keycloak_port,
        realm: REALM,
        smtp_port: ports.mailpit_smtp_port,
    };
    let mut specs = services::platform(service_ports, &infra);
    for spec in specs.iter_mut().filter(|_| traces) {
        spec.env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://127.0.0.1:{}", ports.jaeger_otlp_port)));
    }
    specs
}

/// The whole platform from docker-compose.yml, on the local images.
fn up_docker(ports: &Ports) -> anyhow::Result<()> {
    println!("==> Local images (Debian, PostgreSQL, Kafka, Keycloak, Mailpit, Jaeger, a Rust builder)");
    dev_stack::docker::build_images()?;
    let published = ComposePorts {
        gateway: ports.gateway_port,
        keycloak: ports.keycloak_port,
        mailpit_ui: ports.mailpit_ui_port,
        jaeger_ui: ports.jaeger_ui_port,
    };
    println!("==> docker compose up (project {COMPOSE_PROJECT}): service images, then every container healthy");
    Compose::up(COMPOSE_PROJECT, published, false)?;
    print_usage(ports, None);
    Ok(())
}

/// `grpcurl`: the local binary; None under docker compose, where billing is not published.
fn print_usage(ports: &Ports, grpcurl: Option<&str>) {
    let (gw, kc, g) = (ports.gateway_port, ports.keycloak_port, ports.billing_grpc_port);
    let grpc = match grpcurl {
        Some(grpcurl) => format!(
            r#"  3. Billing over gRPC (reflection and health need no token; every BillingService call does):
    {grpcurl} -plaintext localhost:{g} list
    {grpcurl} -plaintext localhost:{g} describe BillingService
    {grpcurl} -plaintext -H "authorization: Bearer $TOKEN" \
      -d '{{"patientId":"123e4567-e89b-12d3-a456-426614174000","name":"John Doe","email":"john.doe@example.com"}}' \
      localhost:{g} BillingService/CreateBillingAccount"#
        ),
        None => "  3. Billing over gRPC: not published under docker compose (only the gateway and Keycloak are);\n     \
                 publish 127.0.0.1:9001 in a compose override to call it with grpcurl."
            .to_owned(),
    };
    let manage = if grpcurl.is_some() {
        format!(
            "Logs: cargo xtask logs [service]  ({})   Status: cargo xtask status   Stop: cargo xtask down",
            dirs().logs.display()
        )
    } else {
        format!(
            "Logs: docker compose -p {COMPOSE_PROJECT} logs [service]   Status: docker compose -p {COMPOSE_PROJECT} ps   \
             Stop: cargo xtask down --docker"
        )
    };
    println!(
        r#"
The patient platform is up.

  1. A token for the ms-api service account (client_credentials; dev secret):
    TOKEN=$(curl -s http://localhost:{kc}/realms/{REALM}/protocol/openid-connect/token \
      -d grant_type=client_credentials -d client_id=ms-api -d client_secret=ms-api-dev-secret \
      | sed -E 's/.*"access_token":"([^"]+)".*/\1/')

  2. REST through the gateway (15 demo patients are seeded):
    curl -s -H "Authorization: Bearer $TOKEN" 'http://localhost:{gw}/api/patients?page=0&size=5' -i
    curl -s -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' http://localhost:{gw}/api/patients \
      -d '{{"name":"Ada Lovelace","email":"ada@example.com","address":"12 St James Sq, London","dateOfBirth":"1985-12-10","registeredDate":"2026-11-22"}}'
    curl -s -H "Authorization: Bearer $TOKEN" http://localhost:{gw}/api/patients/<id>/bill
    curl -s -H "Authorization: Bearer $TOKEN" http://localhost:{gw}/api/analytics/summary
    API description: http://localhost:{gw}/api/openapi.json   try it in a browser: http://localhost:{gw}/api/docs
    # appointments: clinicianId is a Keycloak user id; the answer's X-Consistency-Token lets a query wait for it
    curl -si -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' http://localhost:{gw}/api/appointments \
      -d '{{"patientId":"<id>","clinicianId":"<keycloak user id>","startsAt":"2027-06-07T09:00:00Z","endsAt":"2027-06-07T09:30:00Z"}}'
    curl -s -H "Authorization: Bearer $TOKEN" -H "X-Wait-For: <X-Consistency-Token>" \
      'http://localhost:{gw}/api/appointments/schedule?clinicianId=<keycloak user id>&date=2027-06-07&view=week'

{grpc}

  4. Users and roles: Keycloak admin console http://localhost:{kc}/admin  (admin / admin)
     Dev users of realm {REALM}: clinician/clinician-dev, analyst/analyst-dev, admin/admin-dev

  5. Traces: every request is one trace across the services, Kafka included — Jaeger UI
     http://localhost:{jaeger}  (log lines name their trace_id)

  6. Mail: every mail the platform sends (welcome, appointment confirmations, reminders) lands in
     Mailpit: http://localhost:{mail}

  {manage}
"#,
        jaeger = ports.jaeger_ui_port,
        mail = ports.mailpit_ui_port,
    );
}

fn logs(service: Option<&str>, lines: usize) -> anyhow::Result<()> {
    let names: Vec<&str> = match service {
        Some(name) if SERVICES.contains(&name) => vec![name],
        Some(name) => anyhow::bail!("unknown service {name}; one of {SERVICES:?}"),
        None => SERVICES.to_vec(),
    };
    for name in names {
        let file = dirs().log_file(name);
        println!("==> {} <==\n{}\n", file.display(), services::tail(&file, lines));
    }
    Ok(())
}

fn down() -> anyhow::Result<()> {
    for name in SERVICES.iter().rev() {
        if services::stop(name, &dirs(), Duration::from_secs(15)) {
            println!("==> stopped {name}");
        }
    }
    if Keycloak::stop_persistent(&keycloak_dir()) {
        println!("==> stopped Keycloak");
    }
    if Jaeger::stop_persistent(&jaeger_dir()) {
        println!("==> stopped Jaeger");
    }
    if Mailpit::stop_persistent(&mailpit_dir()) {
        println!("==> stopped Mailpit");
    }
    if Kafka::stop_persistent(&kafka_dir()) {
        println!("==> stopped Kafka");
    }
    if PgCluster::stop_persistent(&pg_dir())? {
        println!("==> stopped PostgreSQL");
    }
    Ok(())
}

fn status(ports: &Ports) -> anyhow::Result<()> {
    let pg = if dev_stack::net::port_in_use(ports.pg_port) && pg_dir().join("postmaster.pid").exists() {
        "running"
    } else {
        "stopped"
    };
    println!("postgres          {pg} (127.0.0.1:{})", ports.pg_port);
    let kc = match services::http_status(ports.keycloak_management_port, "/health/ready") {
        Some(200) => "ready",
        Some(_) => "starting",
        None => "stopped",
    };
    println!("keycloak          {kc} (http://localhost:{}/admin)", ports.keycloak_port);
    let kafka = if dev_stack::net::port_in_use(ports.kafka_port) { "running" } else { "stopped" };
    println!("kafka             {kafka} (127.0.0.1:{})", ports.kafka_port);
    let jaeger = if services::http_status(ports.jaeger_ui_port, "/api/services") == Some(200) { "ready" } else { "stopped" };
    println!("jaeger            {jaeger} (http://localhost:{})", ports.jaeger_ui_port);
    let mail = if services::http_status(ports.mailpit_ui_port, "/api/v1/messages") == Some(200) { "ready" } else { "stopped" };
    println!("mailpit           {mail} (http://localhost:{})", ports.mailpit_ui_port);
    for (name, port) in [
        ("billing-service", ports.billing_http_port),
        ("patient-service", ports.patient_port),
        ("analytics-service", ports.analytics_port),
        ("appointment-service", ports.appointment_port),
        ("notification-service", ports.notification_port),
        ("gateway", ports.gateway_port),
    ] {
        let state = match (dirs().running_pid(name), services::http_status(port, "/health/ready")) {
            (Some(pid), Some(200)) => format!("ready (pid {pid})"),
            (Some(pid), _) => format!("running, not ready (pid {pid})"),
            (None, _) => "stopped".to_owned(),
        };
        println!("{name:<17} {state}");
    }
    Ok(())
}

/// Release builds, the verifier's micro-benchmark, then the platform benchmark.
fn bench(args: &[String]) -> anyhow::Result<()> {
    postgres::ensure_installed()?;
    println!("==> building release binaries");
    let mut build = vec!["build", "--release", "--bins", "-p", "bench"];
    build.extend(SERVICE_PACKAGES);
    cargo(&build)?;
    println!("==> token verification micro-benchmark (criterion)");
    cargo(&["bench", "-p", "verifier", "--bench", "verify", "--", "--noplot"])?;
    let status = Command::new(services::binary_dir("release").join("bench"))
        .args(args)
        .current_dir(paths::workspace_root())
        .status()
        .context("failed to run the benchmark")?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// Test binaries that never run at the same time as one another: the fault suite (kills and
/// restarts under load, with convergence deadlines; it runs on the local launchers only) and the
/// Kubernetes suite (a node with two replicas of everything, zero failed requests over an
/// upgrade; Docker only). Their no-op runs in the other pass need not wait.
const RUN_APART: [&str; 2] = ["[local] integration-test/tests/faults.rs", "[docker] integration-test/tests/kubernetes.rs"];

fn test(args: &[String]) -> anyhow::Result<()> {
    // clap drops a leading `--` (`cargo xtask test -- --nocapture`), which matters here.
    let leading = std::env::args().skip(1).skip_while(|a| a != "test").nth(1).is_some_and(|a| a == "--");
    let args: Vec<String> = if leading && args.first().is_none_or(|a| a != "--") {
        std::iter::once("--".to_owned()).chain(args.iter().cloned()).collect()
    } else {
        args.to_vec()
    };
    let (cargo_args, binary_args) = dev_stack::suite::split_args(&args);
    // Install once up front rather than racing apt-get from parallel test binaries.
    postgres::ensure_installed()?;
    // The fault suite runs the services' real binaries: build them all first (the same
    // dependency features as the test build, so nothing is compiled twice).
    cargo(&["build", "--workspace", "--bins"])?;
    let binaries = dev_stack::suite::build(&cargo_args)?;
    let mut totals = dev_stack::suite::Totals::default();
    if dev_stack::suite::has_doc_tests(&cargo_args, &binaries) {
        dev_stack::suite::doc_tests(&cargo_args, &binary_args, &mut totals)?;
    }

    let infra = std::env::var("TEST_INFRA").ok();
    let mut ok = true;
    let mut streams = match infra.as_deref() {
        // TEST_INFRA=docker: everything on Docker (on the local images unless named otherwise).
        Some("docker") => vec![Stream { name: "docker", env: docker_suite_env()?, binaries }],
        Some("local") => vec![Stream { name: "local", env: Vec::new(), binaries }],
        // Beside the local pass, the integration suite again on the Docker backend
        // (testcontainers), with the journeys against docker compose: unless no engine can be had.
        _ => {
            let integration: Vec<_> = binaries.iter().filter(|b| b.package == "integration-test").cloned().collect();
            let mut streams = vec![Stream { name: "local", env: Vec::new(), binaries }];
            if !integration.is_empty() {
                match docker_suite_env() {
                    Ok(env) => streams.push(Stream { name: "docker", env, binaries: integration }),
                    // Skipped only where Docker cannot be had at all; any other failure fails the run.
                    Err(e) if !dev_stack::docker::obtainable() => println!("\n==> The Docker pass is skipped: {e:#}"),
                    Err(e) => {
                        println!("\n==> The Docker pass could not start: {e:#}");
                        ok = false;
                    }
                }
            }
            streams
        }
    };
    // Each pass its own screenshots and fault reports.
    let artifacts = std::env::var_os("TEST_ARTIFACTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("patient-platform-test-artifacts"));
    for stream in &mut streams {
        let dir = artifacts.join(stream.name);
        stream.env.push(("TEST_ARTIFACTS_DIR".into(), dir.display().to_string()));
        println!("==> the {} pass: {} test binaries (artifacts in {})", stream.name, stream.binaries.len(), dir.display());
    }
    let logs = paths::target_dir().join("test-logs");
    let totals = dev_stack::suite::run(&streams, &binary_args, &logs, &RUN_APART, totals)?;
    println!("\nall suites: {} passed, {} failed", totals.passed, totals.failed);
    for failure in &totals.failures {
        println!("  failed: {failure}");
    }
    if !ok || !totals.failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// A Docker engine (started when missing), the local images, and the six service images the
/// compose and Kubernetes tests run (built here, before any test runs, rather than inside a test
/// while the other pass runs beside it): the Docker pass's environment.
fn docker_suite_env() -> anyhow::Result<Vec<(String, String)>> {
    dev_stack::docker::ensure_daemon()?;
    // Images the caller named stay theirs.
    let mut env: Vec<(String, String)> = dev_stack::docker::build_images()?
        .into_iter()
        .filter(|(var, _)| std::env::var_os(var).is_none())
        .map(|(var, tag)| (var.to_owned(), tag))
        .collect();
    println!("==> building the service images");
    Compose::existing(COMPOSE_PROJECT).build_services(dev_stack::docker::SERVICE_IMAGE_TAG)?;
    env.push(("TEST_INFRA".into(), "docker".into()));
    Ok(env)
}

/// Runs the cargo that runs us, failing with its exit status.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo).args(args).current_dir(paths::workspace_root()).status().context("failed to run cargo")?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}
