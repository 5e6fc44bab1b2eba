//! A real single-node Kubernetes 1.32 on this machine, for the chart to be installed on
//! (`cargo xtask k8s`, and the Kubernetes end-to-end test): the control plane of
//! [`crate::kube`] (etcd, kube-apiserver) plus kube-controller-manager, kube-scheduler, a
//! kubelet on a containerd of its own (Debian's, beside Docker's), kube-proxy in iptables
//! mode, CoreDNS (built from its Go module) answering for `cluster.local`, a CNI bridge
//! (Debian's plugins) and a few hostPath PersistentVolumes for the chart's StatefulSets.
//!
//! Images come from the local Docker engine (`docker save` into the node's containerd): no
//! registry is needed. One node per machine: kube-proxy's iptables chains and the bridge are
//! the host's. Its state lives in the cache (`kube-node/`) and is wiped at every start; what a
//! killed run left behind (pods' processes, mounts, iptables chains, the bridge) is cleaned first.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::{
    kube::{self, ControlPlane},
    net, process,
};

/// The bridge the pods sit on, its subnet and the host's address on it (also the node's
/// address and the cluster's DNS server).
const BRIDGE: &str = "pp0";
const POD_SUBNET: &str = "10.244.0.0/24";
const NODE_IP: &str = "10.244.0.1";
const NODE_NAME: &str = "patient-platform-node";
/// The pause image every pod's sandbox runs (built here from `deploy/images/pause`).
const PAUSE_IMAGE: &str = "patient-platform-local/pause:3.10";
/// CoreDNS, from its Go module.
const COREDNS_VERSION: &str = "v1.12.4";
/// hostPath PersistentVolumes made for the StatefulSets' claims.
const VOLUMES: usize = 4;
/// Debian packages the node runs on.
const PACKAGES: [(&str, &str); 5] = [
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("conntrack", "conntrack"),
    ("gcc", "gcc"),
];

/// Whether the cluster ends with this process (tests) or outlives it (`cargo xtask k8s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    TiedToThisProcess,
    Detached,
}

/// A running single-node cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    lifetime: Lifetime,
}

/// Where the node keeps its state (wiped at each start; root's only: it holds the admin token
/// and the volumes).
fn node_dir() -> PathBuf {
    crate::paths::cache_dir().join("kube-node")
}

/// What the host knows of the node, whatever cache it used, until the next boot: the lock, the
/// running components (`pids`) and the kernel settings to restore (`sysctl`). A `pids` file here
/// is also how a clean-up tells this node's leftovers from another Kubernetes on the host.
const HOST_MARKER: &str = "/run/patient-platform-node";
/// The cgroup every pod of the node lives under (in each hierarchy).
const CGROUP_ROOT: &str = "patient-platform-node";
/// Kernel settings the node changes (the kubelet's tunables, kube-proxy's localnet routing), put
/// back by the clean-up. IP forwarding and bridged traffic through iptables stay on: Docker
/// needs them too.
const SYSCTLS: [&str; 7] = [
    "net/ipv4/conf/all/route_localnet",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

fn pids_file() -> PathBuf {
    Path::new(HOST_MARKER).join("pids")
}

/// The host-wide lock: one start or stop at a time.
fn host_lock() -> anyhow::Result<fs::File> {
    fs::create_dir_all(HOST_MARKER)?;
    crate::go::lock(&Path::new(HOST_MARKER).join("lock"))
}

fn containerd_socket(dir: &Path) -> PathBuf {
    dir.join("containerd/containerd.sock")
}

impl Cluster {
    /// Builds or reuses the binaries, starts every component and returns once the node is
    /// Ready, DNS answers and the default service account exists.
    pub fn start(lifetime: Lifetime) -> anyhow::Result<Self> {
        if !process::is_root() {
            bail!("a Kubernetes node needs root (containerd, the bridge, iptables)");
        }
        let dir = node_dir();
        let _starting = host_lock()?;
        if !running_pids().is_empty() {
            bail!("a cluster already runs on this machine (cargo xtask k8s); stop it with `cargo xtask k8s --down`");
        }
        if !pids_file().exists() && has_kube_chains() {
            bail!("another Kubernetes' kube-proxy rules (KUBE-* iptables chains) are on this host; this node would disturb it");
        }
        let binaries = Binaries::ensure()?;
        clean_up(&dir);
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        }
        save_sysctls()?;

        let spawn = |cmd: Command| -> anyhow::Result<u32> {
            let pid = match lifetime {
                Lifetime::TiedToThisProcess => process::spawn_tied_to_this_process(cmd, libc::SIGTERM)?,
                Lifetime::Detached => process::spawn_detached(cmd)?,
            };
            let mut pids = fs::read_to_string(pids_file()).unwrap_or_default();
            pids.push_str(&format!("{pid} {}\n", start_time(pid).unwrap_or_default()));
            fs::write(pids_file(), pids)?;
            Ok(pid)
        };
        let cluster = Self { dir: dir.clone(), kubeconfig: dir.join("kubeconfig"), lifetime };
        let started = (|| {
            host_network()?;
            make_cgroup_root()?;
            ControlPlane::start(&dir, &spawn, &[])?;
            cluster.start_containerd(&binaries, &spawn)?;
            cluster.start_controllers(&binaries, &spawn)?;
            cluster.start_node(&binaries, &spawn)?;
            cluster.wait_usable()?;
            cluster.make_volumes()
        })();
        if let Err(e) = started {
            // Whatever the lifetime: a half-started node is not left behind.
            clean_up(&cluster.dir);
            return Err(e);
        }
        Ok(cluster)
    }

    /// Stops a cluster `cargo xtask k8s` left running and cleans the node; false if none ran.
    pub fn stop_running() -> anyhow::Result<bool> {
        let _stopping = host_lock()?;
        let ran = !running_pids().is_empty();
        clean_up(&node_dir());
        Ok(ran)
    }

    /// Stops this cluster and cleans the node (also done when a cluster tied to this process is
    /// dropped).
    pub fn stop(&self) {
        clean_up(&self.dir);
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `kubectl` as the cluster's admin.
    pub fn kubectl(&self) -> anyhow::Result<Command> {
        let mut cmd = Command::new(kube::ensure(kube::KUBECTL)?);
        // No call waits on an unanswering API server for ever.
        cmd.env("KUBECONFIG", &self.kubeconfig).arg("--request-timeout=30s");
        Ok(cmd)
    }

    /// `helm` against this cluster.
    pub fn helm(&self) -> anyhow::Result<Command> {
        let mut cmd = Command::new(crate::helm::ensure()?);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        Ok(cmd)
    }

    /// Copies images from the local Docker engine into the node's containerd (one stream, so
    /// layers the images share travel once).
    pub fn load_images(&self, images: &[String]) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut save = Command::new("docker")
            .arg("save")
            .args(images)
            .stdout(Stdio::piped())
            .spawn()
            .context("failed to run docker save")?;
        let stream = save.stdout.take().context("docker save gave no output")?;
        let import = self.ctr().args(["images", "import", "-"]).stdin(stream).output()?;
        let saved = save.wait()?;
        if !saved.success() || !import.status.success() {
            bail!("loading images failed ({saved}): {}", String::from_utf8_lossy(&import.stderr));
        }
        eprintln!("dev-stack: {} images loaded into the node in {:?}", images.len(), started.elapsed());
        Ok(())
    }

    /// Where the kubelet keeps the pods' logs (`<namespace>_<pod>_<uid>/<container>/<n>.log`).
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }

    /// The last lines of the logs of the pods whose name starts with `pod_prefix`: read
    /// directly, since the API server does not reach the kubelet (which serves loopback only).
    pub fn pod_logs(&self, pod_prefix: &str, lines: usize) -> String {
        let mut out = String::new();
        let Ok(entries) = fs::read_dir(self.pod_logs_dir()) else { return out };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("default_{pod_prefix}")) {
                continue;
            }
            for container in fs::read_dir(entry.path()).into_iter().flatten().flatten() {
                for log in fs::read_dir(container.path()).into_iter().flatten().flatten() {
                    out.push_str(&format!("--- {name}/{}\n", log.file_name().to_string_lossy()));
                    out.push_str(&crate::services::tail(&log.path(), lines));
                    out.push('\n');
                }
            }
        }
        out
    }

    /// `helm upgrade --install` of the platform's chart as `release` on the local images (the
    /// services' as `patient-platform/<service>:<tag>`), then waits until every Deployment has
    /// rolled out with `replicas` ready pods of each service (the autoscalers' minimum).
    pub fn install_platform(&self, release: &str, tag: &str, replicas: u32, limit: Duration) -> anyhow::Result<()> {
        let chart = crate::paths::workspace_root().join("deploy/helm/patient-platform");
        let mut sets = vec![format!("image.tag={tag}"), format!("replicas={replicas}")];
        for (var, image) in crate::docker::overrides() {
            let value = match var {
                "POSTGRES_IMAGE" => "postgres.bundled.image",
                "KAFKA_IMAGE" => "kafka.bundled.image",
                "KEYCLOAK_IMAGE" => "keycloakBundled.image",
                "MAILPIT_IMAGE" => "mailpit.image",
                _ => continue,
            };
            sets.push(format!("{value}={image}"));
        }
        let mut helm = self.helm()?;
        helm.args(["upgrade", "--install", release]).arg(&chart);
        for set in &sets {
            helm.args(["--set", set]);
        }
        process::run_checked(&mut helm, "helm upgrade --install")?;
        self.wait_rolled_out(release, replicas, limit)
    }

    /// Every Deployment of `release` rolled out (all pods on the current template and ready,
    /// none left over) with at least `replicas` pods for the platform's services, and every
    /// StatefulSet ready.
    pub fn wait_rolled_out(&self, release: &str, replicas: u32, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let selector = format!("app.kubernetes.io/instance={release}");
        let mut last = String::new();
        while start.elapsed() < limit {
            let out = self.kubectl()?.args(["get", "deployments,statefulsets", "-l", &selector, "-o", "json"]).output()?;
            if out.status.success() {
                let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                let items = list["items"].as_array().cloned().unwrap_or_default();
                let pending: Vec<String> = items
                    .iter()
                    .filter_map(|d| {
                        let name = d["metadata"]["name"].as_str().unwrap_or_default();
                        let app = d["metadata"]["labels"]["app.kubernetes.io/name"].as_str().unwrap_or_default();
                        let want = d["spec"]["replicas"].as_u64().unwrap_or(1);
                        let status = &d["status"];
                        let count = |field: &str| status[field].as_u64().unwrap_or(0);
                        let infrastructure = ["postgres", "kafka", "keycloak", "mailpit"].contains(&app);
                        let done = count("readyReplicas") == want
                            && count("updatedReplicas") == want
                            && count("replicas") == want
                            && status["observedGeneration"] == d["metadata"]["generation"]
                            && (infrastructure || want >= u64::from(replicas));
                        (!done).then(|| format!("{name} ({}/{want} ready)", count("readyReplicas")))
                    })
                    .collect();
                if !items.is_empty() && pending.is_empty() {
                    return Ok(());
                }
                last = pending.join(", ");
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        bail!("{release} not rolled out after {limit:?}: waiting for {last}")
    }

    /// `http://<cluster IP>:<port>` of a Service (reachable from this machine through kube-proxy).
    pub fn service_url(&self, service: &str, port: u16) -> anyhow::Result<String> {
        let ip = process::run_checked(
            self.kubectl()?.args(["get", "service", service, "-o", "jsonpath={.spec.clusterIP}"]),
            "kubectl get service",
        )?;
        Ok(format!("http://{}:{port}", ip.trim()))
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(containerd_socket(&self.dir)).args(["--namespace", "k8s.io"]);
        cmd
    }

    fn log(&self, name: &str) -> anyhow::Result<(fs::File, fs::File)> {
        let file = fs::File::create(self.dir.join(format!("{name}.log")))?;
        Ok((file.try_clone()?, file))
    }

    fn wait(&self, what: &str, pid: u32, limit: Duration, ready: impl Fn() -> bool) -> anyhow::Result<()> {
        process::wait_ready(what, limit, &self.dir.join(format!("{what}.log")), || process::pid_alive(pid), ready)
    }

    fn start_containerd(&self, bin: &Binaries, spawn: &dyn Fn(Command) -> anyhow::Result<u32>) -> anyhow::Result<()> {
        let dir = &self.dir;
        let cni = dir.join("cni");
        fs::create_dir_all(&cni)?;
        fs::write(
            cni.join("10-patient-platform.conflist"),
            serde_json::json!({
                "cniVersion": "0.4.0",
                "name": "patient-platform",
                "plugins": [
                    {
                        "type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false, "hairpinMode": true,
                        "ipam": {
                            "type": "host-local", "subnet": POD_SUBNET, "rangeStart": "10.244.0.10",
                            "dataDir": dir.join("cni-ipam"), "routes": [{ "dst": "0.0.0.0/0" }]
                        }
                    },
                    { "type": "loopback" }
                ]
            })
            .to_string(),
        )?;
        let config = dir.join("containerd.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\n  address = \"{socket}\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"docker.io/{PAUSE_IMAGE}\"\n  \
                 restrict_oom_score_adj = true\n  netns_mounts_under_state_dir = true\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    \
                 snapshotter = \"overlayfs\"\n    default_runtime_name = \"runc\"\n    \
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n      runtime_type = \"io.containerd.runc.v2\"\n  \
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"/usr/lib/cni\"\n    conf_dir = \"{cni}\"\n",
                root = dir.join("containerd/root").display(),
                state = dir.join("containerd/state").display(),
                socket = containerd_socket(dir).display(),
                cni = cni.display(),
            ),
        )?;
        let (out, err) = self.log("containerd")?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config).stdout(out).stderr(err);
        let pid = spawn(cmd)?;
        self.wait("containerd", pid, Duration::from_secs(30), || {
            self.ctr().args(["version"]).output().is_ok_and(|o| o.status.success())
        })?;
        self.load_images(std::slice::from_ref(&bin.pause_image))
    }

    fn start_controllers(&self, bin: &Binaries, spawn: &dyn Fn(Command) -> anyhow::Result<u32>) -> anyhow::Result<()> {
        let dir = &self.dir;
        let (out, err) = self.log("kube-controller-manager")?;
        let mut cm = Command::new(&bin.controller_manager);
        cm.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--authentication-kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--authorization-kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--service-account-private-key-file={}", dir.join("sa.key").display()))
            .arg(format!("--root-ca-file={}", dir.join("certs/apiserver.crt").display()))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", net::free_port()?))
            .arg("--cluster-name=patient-platform")
            .stdout(out)
            .stderr(err);
        spawn(cm)?;
        let (out, err) = self.log("kube-scheduler")?;
        let mut scheduler = Command::new(&bin.scheduler);
        scheduler
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--authentication-kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--authorization-kubeconfig={}", self.kubeconfig.display()))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", net::free_port()?))
            .stdout(out)
            .stderr(err);
        spawn(scheduler)?;
        Ok(())
    }

    fn start_node(&self, bin: &Binaries, spawn: &dyn Fn(Command) -> anyhow::Result<u32>) -> anyhow::Result<()> {
        let dir = &self.dir;
        let config = dir.join("kubelet.yaml");
        // Loopback only, for the host's eyes (pods cannot reach the kubelet's API), and only with a
        // token the API server vouches for.
        fs::write(
            &config,
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
                 authentication:\n  anonymous: {{enabled: false}}\n  webhook: {{enabled: true}}\n\
                 authorization: {{mode: Webhook}}\ncgroupDriver: cgroupfs\ncgroupRoot: /{CGROUP_ROOT}\npodLogsDir: {logs}\n\
                 containerRuntimeEndpoint: unix://{socket}\nfailSwapOn: false\n\
                 clusterDNS: [{NODE_IP}]\nclusterDomain: cluster.local\naddress: 127.0.0.1\nport: {port}\n\
                 readOnlyPort: 0\nhealthzBindAddress: 127.0.0.1\nhealthzPort: {healthz}\nserializeImagePulls: false\n\
                 evictionHard:\n  memory.available: \"100Mi\"\n  nodefs.available: \"1%\"\n  imagefs.available: \"1%\"\n\
                 imageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 99\nresolvConf: /etc/resolv.conf\n\
                 maxPods: 60\n",
                socket = containerd_socket(dir).display(),
                logs = self.pod_logs_dir().display(),
                port = net::free_port()?,
                healthz = net::free_port()?,
            ),
        )?;
        let (out, err) = self.log("kubelet")?;
        let mut kubelet = Command::new(&bin.kubelet);
        kubelet
            .arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--root-dir={}", dir.join("kubelet").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={NODE_IP}"))
            .stdout(out)
            .stderr(err);
        spawn(kubelet)?;

        let (out, err) = self.log("kube-proxy")?;
        let mut proxy = Command::new(&bin.proxy);
        proxy
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--cluster-cidr={POD_SUBNET}"))
            .arg("--proxy-mode=iptables")
            .arg("--conntrack-max-per-core=0")
            // NodePorts on 127.0.0.1 would need route_localnet, opening loopback to the network.
            .arg("--iptables-localhost-nodeports=false")
            .arg(format!("--healthz-bind-address=127.0.0.1:{}", net::free_port()?))
            .arg(format!("--metrics-bind-address=127.0.0.1:{}", net::free_port()?))
            .stdout(out)
            .stderr(err);
        spawn(proxy)?;

        let ready_port = net::free_port()?;
        let corefile = dir.join("Corefile");
        fs::write(
            &corefile,
            format!(
                ".:53 {{\n    bind {NODE_IP}\n    errors\n    ready 127.0.0.1:{ready_port}\n    \
                 kubernetes cluster.local in-addr.arpa ip6.arpa {{\n        kubeconfig {kubeconfig}\n        \
                 fallthrough in-addr.arpa ip6.arpa\n    }}\n    forward . /etc/resolv.conf\n    cache 30\n}}\n",
                kubeconfig = self.kubeconfig.display()
            ),
        )?;
        let (out, err) = self.log("coredns")?;
        let mut coredns = Command::new(&bin.coredns);
        coredns.arg("-conf").arg(&corefile).stdout(out).stderr(err);
        let pid = spawn(coredns)?;
        self.wait("coredns", pid, Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", ready_port))
                .and_then(|mut s| {
                    use std::io::{Read, Write};
                    s.write_all(b"GET /ready HTTP/1.0\r\n\r\n")?;
                    let mut answer = String::new();
                    s.read_to_string(&mut answer)?;
                    Ok(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"))
                })
                .unwrap_or(false)
        })
    }

    /// Node Ready, and the default service account made (pods that mount its token wait for it).
    fn wait_usable(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        let query = |args: &[&str]| {
            self.kubectl()
                .ok()
                .and_then(|mut c| c.args(args).output().ok())
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        loop {
            let ready = query(&["get", "node", NODE_NAME, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]);
            let account = query(&["get", "serviceaccount", "default", "-o", "name"]);
            if ready.as_deref() == Some("True") && account.is_some() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!(
                    "the node is not Ready after 2 minutes; kubelet log:\n{}",
                    crate::services::tail(&self.dir.join("kubelet.log"), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// hostPath PersistentVolumes (no storage class) the StatefulSets' claims bind to; open to
    /// every user, as images run as users of their own.
    fn make_volumes(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut docs = Vec::new();
        for n in 0..VOLUMES {
            let path = self.dir.join(format!("volumes/{n}"));
            fs::create_dir_all(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o1777))?;
            docs.push(serde_json::json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": { "name": format!("node-volume-{n}") },
                "spec": {
                    "capacity": { "storage": "10Gi" }, "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain", "hostPath": { "path": path, "type": "Directory" }
                }
            }));
        }
        let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": docs });
        let file = self.dir.join("volumes.json");
        fs::write(&file, list.to_string())?;
        process::run_checked(self.kubectl()?.args(["apply", "-f"]).arg(&file), "kubectl apply (volumes)").map(|_| ())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.lifetime == Lifetime::TiedToThisProcess {
            clean_up(&self.dir);
        }
    }
}

/// The cluster's binaries and the pause image, built on first use.
struct Binaries {
    controller_manager: PathBuf,
    scheduler: PathBuf,
    kubelet: PathBuf,
    proxy: PathBuf,
    coredns: PathBuf,
    pause_image: String,
}

impl Binaries {
    fn ensure() -> anyhow::Result<Self> {
        let missing: Vec<&str> = PACKAGES
            .iter()
            .filter(|(probe, _)| if probe.starts_with('/') { !Path::new(probe).exists() } else { !on_path(probe) })
            .map(|(_, package)| *package)
            .collect();
        if !missing.is_empty() {
            crate::postgres::apt_install(&missing)?;
        }
        kube::ensure(kube::API_SERVER)?;
        kube::ensure(kube::KUBECTL)?;
        Ok(Self {
            controller_manager: kube::ensure(kube::CONTROLLER_MANAGER)?,
            scheduler: kube::ensure(kube::SCHEDULER)?,
            kubelet: kube::ensure(kube::KUBELET)?,
            proxy: kube::ensure(kube::PROXY)?,
            coredns: crate::go::build("coredns", "github.com/coredns/coredns", COREDNS_VERSION, "a few minutes")?,
            pause_image: pause_image()?,
        })
    }
}

fn on_path(name: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {name}")]).output().is_ok_and(|o| o.status.success())
}

/// The sandbox image: a static `pause` (deploy/images/pause/pause.c) on an empty image.
fn pause_image() -> anyhow::Result<String> {
    crate::docker::ensure_daemon()?;
    let recipe = crate::paths::workspace_root().join("deploy/images/pause");
    let context = crate::paths::cache_dir().join("images/pause");
    fs::create_dir_all(&context)?;
    fs::copy(recipe.join("Dockerfile"), context.join("Dockerfile"))?;
    process::run_checked(
        Command::new("gcc").args(["-static", "-Os", "-o"]).arg(context.join("pause")).arg(recipe.join("pause.c")),
        "gcc pause.c",
    )?;
    process::run_checked(
        Command::new("docker").args(["build", "--quiet", "-t", PAUSE_IMAGE]).arg(&context).env("DOCKER_BUILDKIT", "0"),
        "docker build pause",
    )?;
    Ok(PAUSE_IMAGE.to_owned())
}

/// The FORWARD rule letting pods talk to each other across the bridge (Docker sets the chain's
/// policy to DROP).
const POD_TO_POD: [&str; 10] =
    ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-m", "comment", "--comment", "patient-platform-node: pod to pod", "-j"];

/// IP forwarding, bridged traffic through iptables (Services between pods on the bridge), pod
/// to pod traffic accepted, and the bridge with the node's address (CoreDNS binds it before the
/// first pod exists).
fn host_network() -> anyhow::Result<()> {
    let _ = Command::new("modprobe").arg("br_netfilter").status();
    fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IP forwarding")?;
    fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1").context("bridged traffic through iptables (br_netfilter)")?;
    process::run_checked(Command::new("iptables").arg("-I").args(POD_TO_POD).arg("ACCEPT"), "iptables (pod to pod)")?;
    let ip = |args: &[&str]| process::run_checked(Command::new("ip").args(args), "ip").map(|_| ());
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])
}

/// The kubelet's cgroup root in every hierarchy (it must exist before the kubelet starts).
fn make_cgroup_root() -> anyhow::Result<()> {
    for hierarchy in cgroup_hierarchies() {
        let root = hierarchy.join(CGROUP_ROOT);
        fs::create_dir_all(&root).with_context(|| format!("creating the node's cgroup in {}", hierarchy.display()))?;
        // cgroup v1's cpuset starts a new group with no CPUs and no memory nodes: the host's.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let mine = root.join(file);
            if fs::read_to_string(&mine).is_ok_and(|v| v.trim().is_empty()) {
                fs::write(&mine, fs::read_to_string(hierarchy.join(file))?.trim())?;
            }
        }
    }
    Ok(())
}

/// The kernel settings the node may change, as they were before its first start since the last
/// clean-up.
fn save_sysctls() -> anyhow::Result<()> {
    let file = Path::new(HOST_MARKER).join("sysctl");
    if file.exists() {
        return Ok(());
    }
    let saved: String = SYSCTLS
        .iter()
        .filter_map(|key| Some(format!("{key} {}\n", fs::read_to_string(Path::new("/proc/sys").join(key)).ok()?.trim())))
        .collect();
    fs::write(file, saved).context("saving the kernel settings")
}

fn restore_sysctls() {
    let file = Path::new(HOST_MARKER).join("sysctl");
    for line in fs::read_to_string(&file).unwrap_or_default().lines() {
        if let Some((key, value)) = line.split_once(' ') {
            if SYSCTLS.contains(&key) {
                let _ = fs::write(Path::new("/proc/sys").join(key), value);
            }
        }
    }
    let _ = fs::remove_file(file);
}

/// A process' start time (clock ticks since boot, `/proc/<pid>/stat` field 22): with the pid, it
/// names the process, so a recorded pid reused by another process is not mistaken for ours.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// The node's components still running (as recorded at their start: pid and start time).
fn running_pids() -> Vec<u32> {
    fs::read_to_string(pids_file())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, started) = l.trim().split_once(' ')?;
            let pid: u32 = pid.parse().ok()?;
            (process::pid_alive(pid) && start_time(pid) == started.parse().ok()).then_some(pid)
        })
        .collect()
}

/// Whether kube-proxy's (or the kubelet's) chains are in the host's tables.
fn has_kube_chains() -> bool {
    Command::new("iptables-save")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with(":KUBE-")))
}

/// Everything a node (running, or killed) leaves on the host, undone: its processes (newest
/// first: CoreDNS, kube-proxy, the kubelet, …, etcd), the pods' processes and cgroups (under the
/// node's own cgroup root), the container shims of its containerd, the mounts and network
/// namespaces under its state dir, kube-proxy's iptables chains (only if this node ran since the
/// last clean-up: its `pids` record), the bridge, the kernel settings and the state dir.
fn clean_up(dir: &Path) {
    let ran = pids_file().exists();
    let mut pids = running_pids();
    pids.reverse();
    for pid in pids {
        process::terminate(pid, Duration::from_secs(10));
    }
    for _ in 0..5 {
        if kill_cgroup_processes(CGROUP_ROOT) == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let socket = containerd_socket(dir).display().to_string();
    for pid in processes_with_argument(&socket) {
        process::kill(pid);
    }
    unmount_under(&format!("{}/", dir.display()));
    remove_cgroups(CGROUP_ROOT);
    if ran {
        // Only an already built kube-proxy: a clean-up never starts a build.
        let proxy = crate::paths::cache_dir().join(format!("kubernetes-{}/bin/{}", kube::VERSION, kube::PROXY));
        if proxy.exists() {
            let _ = Command::new(proxy).arg("--cleanup").output();
        }
        remove_kube_chains();
    }
    while Command::new("iptables").arg("-D").args(POD_TO_POD).arg("ACCEPT").output().is_ok_and(|o| o.status.success()) {}
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
    // The kubelet's links to the pods' logs, where they point into the node's dir.
    for link in fs::read_dir("/var/log/containers").into_iter().flatten().flatten() {
        if fs::read_link(link.path()).is_ok_and(|target| target.starts_with(dir)) {
            let _ = fs::remove_file(link.path());
        }
    }
    restore_sysctls();
    let _ = fs::remove_dir_all(dir);
    let _ = fs::remove_file(pids_file());
}

/// What `kube-proxy --cleanup` leaves: the kubelet's and kube-proxy's own chains (KUBE-FIREWALL,
/// the canaries, KUBE-MARK-MASQ) and the jumps to them, in every table, IPv4 and IPv6.
fn remove_kube_chains() {
    for tool in ["iptables", "ip6tables"] {
        for table in ["filter", "nat", "mangle"] {
            let Ok(out) = Command::new(format!("{tool}-save")).args(["-t", table]).output() else { continue };
            let rules = String::from_utf8_lossy(&out.stdout).into_owned();
            // Jumps from the built-in chains first, then the chains themselves.
            for rule in rules.lines().filter_map(|l| l.strip_prefix("-A ")) {
                if !rule.starts_with("KUBE-") && rule.contains("-j KUBE-") {
                    let _ = Command::new(tool).args(["-t", table, "-D"]).args(save_words(rule)).output();
                }
            }
            let chains: Vec<&str> =
                rules.lines().filter_map(|l| l.strip_prefix(':')?.split(' ').next()).filter(|c| c.starts_with("KUBE-")).collect();
            for flag in ["-F", "-X"] {
                for chain in &chains {
                    let _ = Command::new(tool).args(["-t", table, flag, chain]).output();
                }
            }
        }
    }
}

/// The words of an `iptables-save` rule: split on spaces, except inside double quotes (comments),
/// where `\"` stands for a quote. No shell is involved.
fn save_words(rule: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut chars) = (Vec::new(), String::new(), false, rule.chars());
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => word.extend(chars.next()),
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The mounted cgroup hierarchies (each v1 controller's, v2's unified one).
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            matches!(kind, "cgroup" | "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// The node's `<hierarchy>/<name>` directories.
fn cgroup_roots(name: &str) -> Vec<PathBuf> {
    cgroup_hierarchies().into_iter().map(|h| h.join(name)).filter(|p| p.is_dir()).collect()
}

/// SIGKILLs every process in the cgroups under `name`; returns how many there were.
fn kill_cgroup_processes(name: &str) -> usize {
    let mut killed = 0;
    for root in cgroup_roots(name) {
        for procs in walk(&root).into_iter().map(|d| d.join("cgroup.procs")) {
            for pid in fs::read_to_string(procs).unwrap_or_default().lines().filter_map(|l| l.parse::<u32>().ok()) {
                process::kill(pid);
                killed += 1;
            }
        }
    }
    killed
}

fn remove_cgroups(name: &str) {
    for root in cgroup_roots(name) {
        let mut dirs = walk(&root);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = fs::remove_dir(d);
        }
    }
}

/// `root` and the directories below it.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let children: Vec<PathBuf> =
            fs::read_dir(&out[i]).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        out.extend(children);
        i += 1;
    }
    out
}

/// Processes whose command line has `arg` as one of its arguments (the container shims of this
/// node's containerd name its socket).
fn processes_with_argument(arg: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes() || a.ends_with(arg.as_bytes())))
        })
        .collect()
}

/// Lazily unmounts every mount point under `prefix`, deepest first.
fn unmount_under(prefix: &str) {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(prefix)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).output();
    }
}
