//! The Helm chart (`deploy/helm/patient-platform`): `helm lint`, then the manifests it renders —
//! with the bundled infrastructure and with external PostgreSQL, Kafka, Keycloak and SMTP — are
//! validated offline against the Kubernetes 1.32 schemas (kubernetes-validate, strict), applied
//! with `kubectl apply --dry-run=server` to a real Kubernetes 1.32 API server (built from its Go
//! modules; an invalid document is refused, so the check is live), and checked for what the
//! platform relies on: two replicas, probes on the health endpoints, a preStop pause and the
//! connection drain inside the grace period, disruption budgets, autoscalers, credentials from
//! Secrets, and network policies that let users reach only the gateway and Keycloak.

use std::{path::PathBuf, process::Command};

use dev_stack::kube::ApiServer;
use serde_json::Value;

const KUBERNETES_VERSION: &str = "1.32.0";

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/patient-platform")
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The chart rendered with `set` values, validated offline and by a real API server's
/// server-side dry run, as JSON documents.
fn render(helm: &PathBuf, validate: &PathBuf, api: &ApiServer, set: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "pp"]).arg(chart());
    for s in set {
        cmd.args(["--set", s]);
    }
    let yaml = run(&mut cmd, "helm template");
    let dir = std::env::temp_dir().join(format!("helm-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("manifests.yaml");
    std::fs::write(&file, &yaml).unwrap();
    run(Command::new(validate).args(["--strict", "--kubernetes-version", KUBERNETES_VERSION]).arg(&file), "kubernetes-validate");
    // The validator's Python has PyYAML: it turns the documents into JSON for the checks below.
    let python = validate.parent().unwrap().join("python");
    let script = "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))";
    let json = run(Command::new(python).args(["-c", script]).arg(&file), "yaml to json");
    let docs: Vec<Value> = serde_json::from_str(&json).unwrap();
    let accepted = run(
        api.kubectl().unwrap().args(["apply", "--dry-run=server", "--validate=strict", "-o", "name", "-f"]).arg(&file),
        "kubectl apply --dry-run=server",
    );
    assert_eq!(accepted.lines().count(), docs.len(), "the API server accepts every document:\n{accepted}");
    std::fs::remove_dir_all(dir).unwrap();
    docs
}

/// The server-side dry run is a real check: the same documents with one invalid value are refused.
fn refused_by_the_api_server(api: &ApiServer, docs: &[Value]) -> String {
    let mut docs = docs.to_vec();
    let gateway = docs.iter_mut().find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "pp-gateway").unwrap();
    gateway["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 70_000.into();
    let file = std::env::temp_dir().join(format!("helm-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string()).unwrap();
    let out = api.kubectl().unwrap().args(["apply", "--dry-run=server", "-f"]).arg(&file).output().unwrap();
    std::fs::remove_file(file).unwrap();
    assert!(!out.status.success(), "a container port of 70000 passed the API server");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

const SERVICES: [&str; 6] =
    ["gateway", "patient-service", "billing-service", "analytics-service", "appointment-service", "notification-service"];

#[test]
fn the_chart_lints_and_renders_valid_manifests_for_bundled_and_external_infrastructure() {
    let helm = dev_stack::helm::ensure().expect("helm builds");
    let validate = dev_stack::python::kubernetes_validate().expect("kubernetes-validate installs");
    run(Command::new(&helm).args(["lint", "--strict"]).arg(chart()), "helm lint");
    let api = ApiServer::start_ephemeral().expect("kube-apiserver starts");

    let docs = render(&helm, &validate, &api, &[]);
    let refusal = refused_by_the_api_server(&api, &docs);
    assert!(refusal.contains("containerPort") && refusal.contains("Invalid value"), "{refusal}");
    for name in SERVICES {
        let deployment = named(&docs, "Deployment", &format!("pp-{name}"));
        // The autoscaler owns the count (from 2); an upgrade does not reset it.
        assert!(deployment["spec"].get("replicas").is_none(), "{name}");
        assert_eq!(named(&docs, "HorizontalPodAutoscaler", &format!("pp-{name}"))["spec"]["minReplicas"], 2, "{name}");
        let pod = &deployment["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health/ready", "{name}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health/live", "{name}");
        let pause = c["lifecycle"]["preStop"]["sleep"]["seconds"].as_i64().unwrap();
        let drain = c["env"].as_array().unwrap().iter().find(|e| e["name"] == "SHUTDOWN_DRAIN_MS").expect("a drain period");
        let drain: i64 = drain["value"].as_str().unwrap().parse().unwrap();
        // Longer than the gateway's upstream idle timeout: no pooled connection outlives the drain.
        assert!(
            drain > gateway::proxy::UPSTREAM_IDLE.as_millis() as i64,
            "{name}: keep-alive clients are asked to leave before the server stops"
        );
        assert!(
            pause + drain / 1000 + 10 < pod["terminationGracePeriodSeconds"].as_i64().unwrap(),
            "{name}: preStop, the drain and 10 s of in-flight work inside the grace period"
        );
        assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"]["memory"].is_string(), "{name}");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{name}");
        // No credential in plain sight: secret values come from the Secret.
        for env in c["env"].as_array().unwrap() {
            let key = env["name"].as_str().unwrap();
            if key.contains("PASSWORD") || key.contains("SECRET") {
                assert!(env["valueFrom"]["secretKeyRef"].is_object(), "{name}: {key} from a Secret");
            }
        }
        named(&docs, "PodDisruptionBudget", &format!("pp-{name}"));
    }
    // Consumers scale no further than the topics' partitions.
    assert_eq!(named(&docs, "HorizontalPodAutoscaler", "pp-analytics-service")["spec"]["maxReplicas"], 3);
    // Reachable from anywhere: the gateway and Keycloak only; every other pod names its callers.
    let mut open: Vec<&str> = of_kind(&docs, "NetworkPolicy")
        .into_iter()
        .filter(|p| p["spec"]["ingress"].as_array().is_some_and(|rules| rules.iter().any(|r| r.get("from").is_none())))
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    open.sort_unstable();
    assert_eq!(open, ["pp-gateway", "pp-keycloak"]);
    let billing = named(&docs, "NetworkPolicy", "pp-billing-service");
    assert_eq!(
        billing["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "patient-service"
    );
    // The bundled infrastructure, the realm from the repository's export.
    for (kind, name) in
        [("StatefulSet", "pp-postgres"), ("StatefulSet", "pp-kafka"), ("Deployment", "pp-keycloak"), ("Deployment", "pp-mailpit")]
    {
        named(&docs, kind, name);
    }
    let realm = named(&docs, "ConfigMap", "pp-realm")["data"]["realm-export.json"].as_str().unwrap().to_owned();
    let repo_realm =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../keycloak/realm-export.json")).unwrap();
    assert_eq!(realm.trim(), repo_realm.trim());

    // What hospitals run: their database, Kafka cluster, Keycloak and mail relay.
    let docs = render(
        &helm,
        &validate,
        &api,
        &[
            "postgres.external.host=db.hospital.example",
            "kafka.external.bootstrapServers=kafka-1.hospital.example:9092",
            "keycloak.discoveryUrl=https://sso.hospital.example/realms/patient-management",
            "keycloak.issuerUrl=https://sso.hospital.example/realms/patient-management",
            "smtp.host=smtp.hospital.example",
            "smtp.starttls=true",
            "secrets.existingSecret=patient-platform-credentials",
            "autoscaling.enabled=false",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
        ],
    );
    assert_eq!(named(&docs, "Deployment", "pp-gateway")["spec"]["replicas"], 2, "without autoscalers, two replicas");
    assert!(of_kind(&docs, "HorizontalPodAutoscaler").is_empty());
    let scraped = &named(&docs, "NetworkPolicy", "pp-billing-service")["spec"]["ingress"][0];
    assert_eq!(scraped["from"][0]["namespaceSelector"]["matchLabels"]["team"], "monitoring");
    assert_eq!(scraped["ports"][0]["port"], 4001, "metrics on the HTTP port");
    assert!(of_kind(&docs, "StatefulSet").is_empty());
    assert!(of_kind(&docs, "Secret").is_empty(), "the hospital's own Secret is used");
    assert!(docs.iter().all(|d| d["metadata"]["name"] != "pp-keycloak" && d["metadata"]["name"] != "pp-mailpit"));
    let env = &named(&docs, "Deployment", "pp-patient-service")["spec"]["template"]["spec"]["containers"][0]["env"];
    let value = |key: &str| env.as_array().unwrap().iter().find(|e| e["name"] == key).map(|e| e["value"].clone()).unwrap();
    assert!(value("DATABASE_URL").as_str().unwrap().contains("@db.hospital.example:5432/patient_service"));
    assert_eq!(value("KAFKA_BOOTSTRAP_SERVERS"), "kafka-1.hospital.example:9092");
    assert_eq!(value("OIDC_DISCOVERY_URL"), "https://sso.hospital.example/realms/patient-management");
}
