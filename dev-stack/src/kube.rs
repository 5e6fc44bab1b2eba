//! Kubernetes 1.32 from its Go modules, for what the chart is checked against: the binaries are
//! built once into the cache from a wrapper module that requires `k8s.io/kubernetes` and points
//! each staging module (`k8s.io/api`, `k8s.io/client-go`, …) at its published `v0.32.x`
//! release; a control plane of Debian's `etcd-server` and `kube-apiserver` answers
//! `kubectl apply --dry-run=server` (the API server's own validation, defaulting and admission).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context};

use crate::{net, process};

/// The pinned release.
pub const VERSION: &str = "v1.32.4";
/// The staging modules' release matching [`VERSION`].
const STAGING_VERSION: &str = "v0.32.4";

/// The Kubernetes commands under `k8s.io/kubernetes/cmd/` this module builds on demand.
pub const API_SERVER: &str = "kube-apiserver";
pub const KUBECTL: &str = "kubectl";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub const SCHEDULER: &str = "kube-scheduler";
pub const KUBELET: &str = "kubelet";
pub const PROXY: &str = "kube-proxy";

/// Path of `k8s.io/kubernetes/cmd/<name>` at [`VERSION`], built on first use (kube-apiserver
/// takes about 5 minutes on 2 cores, kubectl about 2).
pub fn ensure(name: &str) -> anyhow::Result<PathBuf> {
    let dir = crate::paths::cache_dir().join(format!("kubernetes-{VERSION}"));
    let bin = dir.join("bin").join(name);
    crate::go::build_once(&bin, &dir.with_file_name(format!("kubernetes-{VERSION}.lock")), || {
        fs::create_dir_all(&dir)?;
        let go = |args: &[&str], what: &str| {
            process::run_checked(
                Command::new("go")
                    .args(args)
                    .current_dir(&dir)
                    .env("CGO_ENABLED", "0")
                    // The wrapper's requirements are resolved, not fixed in advance; the staging
                    // modules' checksums are not in the public checksum database under these pins.
                    .env("GOFLAGS", "-mod=mod")
                    .env("GONOSUMDB", "k8s.io"),
                what,
            )
        };
        if !dir.join("go.sum").exists() {
            write_wrapper_module(&dir, &go)?;
        }
        eprintln!("dev-stack: building {name} {VERSION} with go (once per machine, a few minutes)");
        let tmp = format!("bin/{name}.tmp");
        // The version the binaries report (`kubectl version`, the API server's /version, which
        // Helm checks charts' kubeVersion against), as the release build stamps it.
        let (major, minor) = {
            let mut parts = VERSION.trim_start_matches('v').split('.');
            (parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
        };
        let ldflags: Vec<String> = ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"]
            .iter()
            .flat_map(|pkg| {
                [("gitVersion", VERSION), ("gitMajor", major), ("gitMinor", minor), ("gitTreeState", "clean")]
                    .map(|(var, value)| format!("-X {pkg}.{var}={value}"))
            })
            .collect();
        let ldflags = format!("-ldflags={}", ldflags.join(" "));
        go(&["build", &ldflags, "-o", &tmp, &format!("k8s.io/kubernetes/cmd/{name}")], &format!("go build {name}"))?;
        fs::rename(dir.join(&tmp), &bin)?;
        Ok(())
    })
}

/// go.mod requiring `k8s.io/kubernetes` with every `./staging/…` replace of its own go.mod
/// turned into the published module, and the requirements resolved by `go mod tidy`.
fn write_wrapper_module(dir: &Path, go: &dyn Fn(&[&str], &str) -> anyhow::Result<String>) -> anyhow::Result<()> {
    let header = "module patient-platform/kubernetes\n\ngo 1.23\n";
    fs::write(dir.join("go.mod"), header)?;
    let info = go(&["mod", "download", "-json", &format!("k8s.io/kubernetes@{VERSION}")], "go mod download kubernetes")?;
    let info: serde_json::Value = serde_json::from_str(&info).context("go mod download -json")?;
    let upstream = fs::read_to_string(info["GoMod"].as_str().context("no GoMod in go mod download's answer")?)?;
    let replaces: Vec<String> = upstream
        .lines()
        .filter_map(|line| line.trim().split_once(" => ./staging/"))
        .map(|(module, _)| format!("\t{module} => {module} {STAGING_VERSION}"))
        .collect();
    if replaces.is_empty() {
        bail!("k8s.io/kubernetes {VERSION} names no staging modules; the wrapper needs updating");
    }
    let module = format!("{header}\nrequire k8s.io/kubernetes {VERSION}\n\nreplace (\n{}\n)\n", replaces.join("\n"));
    fs::write(dir.join("go.mod"), module)?;
    let tools: String = [API_SERVER, KUBECTL].iter().map(|name| format!("\t_ \"k8s.io/kubernetes/cmd/{name}\"\n")).collect();
    fs::write(dir.join("tools.go"), format!("//go:build tools\n\npackage tools\n\nimport (\n{tools})\n"))?;
    fs::create_dir_all(dir.join("bin"))?;
    go(&["mod", "tidy"], "go mod tidy (kubernetes)").map(|_| ())
}

/// A Kubernetes control plane without nodes (etcd + kube-apiserver) on free loopback ports in
/// a temp dir, tied to this process: enough for server-side dry runs of manifests.
#[derive(Debug)]
pub struct ApiServer {
    dir: PathBuf,
    kubeconfig: PathBuf,
    /// kube-apiserver, then etcd.
    pids: Vec<u32>,
}

impl ApiServer {
    pub fn start_ephemeral() -> anyhow::Result<Self> {
        let dir = process::fresh_test_dir("patient-platform-test-kube-");
        fs::create_dir_all(&dir)?;
        let spawn = |cmd: Command| process::spawn_tied_to_this_process(cmd, libc::SIGKILL);
        let plane = ControlPlane::start(&dir, &spawn, &[])?;
        Ok(Self { dir, kubeconfig: plane.kubeconfig, pids: plane.pids })
    }

    /// `kubectl` pointed at this control plane as a cluster admin.
    pub fn kubectl(&self) -> anyhow::Result<Command> {
        let mut cmd = Command::new(ensure(KUBECTL)?);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        Ok(cmd)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for pid in &self.pids {
            process::terminate(*pid, Duration::from_secs(10));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// etcd and kube-apiserver in `dir` on free loopback ports, with one cluster-admin bearer token
/// (in `kubeconfig`) and a service-account signing key (`sa.key`).
pub(crate) struct ControlPlane {
    pub kubeconfig: PathBuf,
    /// kube-apiserver, then etcd.
    pub pids: Vec<u32>,
}

impl ControlPlane {
    pub fn start(dir: &Path, spawn: &dyn Fn(Command) -> anyhow::Result<u32>, apiserver_args: &[String]) -> anyhow::Result<Self> {
        let apiserver = ensure(API_SERVER)?;
        let kubectl = ensure(KUBECTL)?;
        if Command::new("etcd").arg("--version").output().is_err() {
            crate::postgres::apt_install(&["etcd-server"])?;
        }
        let (etcd_port, peer_port, secure_port) = (net::free_port()?, net::free_port()?, net::free_port()?);

        let etcd_log = fs::File::create(dir.join("etcd.log"))?;
        let mut etcd = Command::new("etcd");
        etcd.arg("--name=default")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"))
            .stdout(etcd_log.try_clone()?)
            .stderr(etcd_log);
        let etcd_pid = spawn(etcd)?;
        process::wait_ready(
            "etcd",
            Duration::from_secs(30),
            &dir.join("etcd.log"),
            || process::pid_alive(etcd_pid),
            || net::port_in_use(etcd_port),
        )?;

        // Service-account signing key and one bearer token with cluster-admin rights.
        let key = dir.join("sa.key");
        process::run_checked(
            Command::new("openssl").args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"]).arg(&key),
            "openssl genpkey",
        )?;
        process::run_checked(
            Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key).arg("-out").arg(dir.join("sa.pub")),
            "openssl pkey",
        )?;
        let token = random_token()?;
        fs::write(dir.join("tokens.csv"), format!("{token},cluster-admin,cluster-admin,\"system:masters\"\n"))?;

        let log = fs::File::create(dir.join("kube-apiserver.log"))?;
        let mut cmd = Command::new(apiserver);
        cmd.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={secure_port}"))
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", dir.join("sa.pub").display()))
            .arg(format!("--service-account-signing-key-file={}", key.display()))
            .arg(format!("--token-auth-file={}", dir.join("tokens.csv").display()))
            .arg("--authorization-mode=Node,RBAC")
            .args(apiserver_args)
            .stdout(log.try_clone()?)
            .stderr(log);
        let pid = spawn(cmd)?;

        let kubeconfig = dir.join("kubeconfig");
        fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: patient-platform\n  cluster:\n    server: https://127.0.0.1:{secure_port}\n    \
                 insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: patient-platform\n  \
                 context:\n    cluster: patient-platform\n    user: admin\n    namespace: default\ncurrent-context: patient-platform\n"
            ),
        )?;
        // Ready once it serves and has made the default namespace.
        let ready = || {
            Command::new(&kubectl)
                .env("KUBECONFIG", &kubeconfig)
                .args(["get", "namespace", "default", "--request-timeout=2s"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        process::wait_ready(
            "kube-apiserver",
            Duration::from_secs(120),
            &dir.join("kube-apiserver.log"),
            || process::pid_alive(pid),
            ready,
        )?;
        Ok(Self { kubeconfig, pids: vec![pid, etcd_pid] })
    }
}

/// A random bearer token (128 bits, hex) from the kernel's generator.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut bytes).context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
