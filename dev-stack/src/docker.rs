//! Docker for machines that reach package registries but no image registry: the engine
//! (Debian's `docker.io`, started when none answers), the compose v2 CLI (built from its Go
//! module), and local equivalents of every image the compose file, the Dockerfiles and the
//! testcontainers backend name (`cargo xtask images`).
//!
//! Each local image is tagged `patient-platform-local/<name>:<version>` and handed to compose and
//! testcontainers through the same override variables a user with internet leaves unset
//! ([`overrides`]): the compose file, `Dockerfile` and `keycloak/Dockerfile` are the same files
//! either way.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context};

use crate::process;

/// The pinned compose v2 module version (`github.com/docker/compose/v2`).
pub const COMPOSE_VERSION: &str = "v2.29.7";
/// The Debian release every local image is built from.
const SUITE: &str = "bookworm";
const LOCAL: &str = "patient-platform-local";
/// This machine's CA bundle (Debian's path), which the builder image trusts.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Whether a Docker engine answers.
pub fn daemon_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
}

/// Whether a Docker engine answers or can be started here (as root).
pub fn obtainable() -> bool {
    daemon_answers() || process::is_root()
}

/// A Docker engine that answers: the running one, else (as root) Debian's `docker.io`
/// installed when missing and `dockerd` started in the background (log in the cache dir).
pub fn ensure_daemon() -> anyhow::Result<()> {
    if daemon_answers() {
        return Ok(());
    }
    if !process::is_root() {
        bail!("no Docker engine answers, and starting one needs root (start dockerd, or run as root)");
    }
    if Command::new("dockerd").arg("--version").output().is_err() {
        crate::postgres::apt_install(&["docker.io"])?;
    }
    fs::create_dir_all(crate::paths::cache_dir())?;
    let log_path = crate::paths::cache_dir().join("dockerd.log");
    let log = fs::File::create(&log_path)?;
    let mut cmd = Command::new("dockerd");
    cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let pid = process::spawn_detached(cmd)?;
    eprintln!("dev-stack: started dockerd (pid {pid}, log {})", log_path.display());
    process::wait_ready("dockerd", Duration::from_secs(60), &log_path, || process::pid_alive(pid), daemon_answers)
}

/// The compose v2 CLI, built once from its Go module into the cache (run standalone, so no
/// plugin directory is touched).
pub fn compose() -> anyhow::Result<PathBuf> {
    crate::go::build("docker-compose", "github.com/docker/compose/v2/cmd", COMPOSE_VERSION, "about 5 minutes")
}

/// One image the platform runs, by the override variable that names it.
struct Image {
    /// The variable docker-compose.yml, the Dockerfiles and the containers backend read.
    var: &'static str,
    /// The local tag (`patient-platform-local/…`).
    tag: String,
}

fn images() -> Vec<Image> {
    let image = |var, name: &str, version: &str| Image { var, tag: format!("{LOCAL}/{name}:{version}") };
    vec![
        image("RUNTIME_IMAGE", "debian", SUITE),
        image("BUILDER_IMAGE", "rust", &format!("{}-{SUITE}", rust_version().unwrap_or_else(|_| "local".into()))),
        image("POSTGRES_IMAGE", "postgres", crate::containers::POSTGRES_IMAGE.1),
        image("KAFKA_IMAGE", "kafka", crate::kafka::VERSION),
        image("KEYCLOAK_IMAGE", "keycloak", crate::keycloak::VERSION),
        image("MAILPIT_IMAGE", "mailpit", crate::mailpit::VERSION),
        image("JAEGER_IMAGE", "jaeger", crate::jaeger::IMAGE_VERSION),
    ]
}

/// The override variables naming the local images, for compose and the containers backend.
pub fn overrides() -> Vec<(&'static str, String)> {
    images().into_iter().map(|i| (i.var, i.tag)).collect()
}

/// Whether every local image has been built.
pub fn images_present() -> bool {
    images().iter().all(|i| image_exists(&i.tag))
}

/// A label of a local image (None when the image or the label is missing).
fn label(tag: &str, key: &str) -> Option<String> {
    let format = format!("{{{{ index .Config.Labels \"{key}\" }}}}");
    let out = Command::new("docker").args(["image", "inspect", "--format", &format, tag]).output().ok()?;
    let value = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !value.is_empty() && value != "<no value>").then_some(value)
}

fn image_exists(tag: &str) -> bool {
    Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", tag]).output().is_ok_and(|o| o.status.success())
}

/// Builds (or refreshes from the build cache) every local image and returns the overrides.
/// The first run on a machine takes a few minutes: a Debian base by debootstrap, then each
/// image's packages; later runs only re-check the layers.
pub fn build_images() -> anyhow::Result<Vec<(&'static str, String)>> {
    ensure_daemon()?;
    let images = images();
    let tag_of = |var: &str| images.iter().find(|i| i.var == var).map(|i| i.tag.clone()).expect("known image");
    let base = tag_of("RUNTIME_IMAGE");
    if label(&base, RECIPE_LABEL).as_deref() != Some(BASE_RECIPE) {
        build_base(&base)?;
    }
    let recipes = crate::paths::workspace_root().join("deploy/images");
    let contexts = crate::paths::cache_dir().join("images");
    for (var, name) in [
        ("POSTGRES_IMAGE", "postgres"),
        ("KAFKA_IMAGE", "kafka"),
        ("KEYCLOAK_IMAGE", "keycloak"),
        ("MAILPIT_IMAGE", "mailpit"),
        ("JAEGER_IMAGE", "jaeger"),
        ("BUILDER_IMAGE", "rust"),
    ] {
        let context = contexts.join(name);
        let _ = fs::remove_dir_all(&context);
        copy_tree(&recipes.join(name), &context)?;
        match name {
            "kafka" => link_tree(&crate::kafka::ensure_jars()?, &context.join("libs"))?,
            "keycloak" => link_tree(&crate::keycloak::ensure_distribution()?, &context.join("keycloak"))?,
            "mailpit" => link_tree(&crate::mailpit::ensure()?, &context.join("mailpit"))?,
            "jaeger" => link_tree(&crate::jaeger::ensure()?, &context.join("jaeger"))?,
            "rust" => {
                let sysroot =
                    PathBuf::from(process::run_checked(Command::new("rustc").arg("--print").arg("sysroot"), "rustc")?.trim());
                for part in ["bin/cargo", "bin/rustc", "lib", "libexec"] {
                    link_tree(&sysroot.join(part), &context.join("toolchain").join(part))?;
                }
                fs::copy(HOST_CA_BUNDLE, context.join("machine-trust-store.crt"))
                    .with_context(|| format!("the builder image needs this machine's trust store, {HOST_CA_BUNDLE}"))?;
            }
            _ => {}
        }
        let tag = tag_of(var);
        eprintln!("dev-stack: building image {tag}");
        let mut cmd = Command::new("docker");
        cmd.args(["build", "--quiet", "--build-arg"]).arg(format!("BASE_IMAGE={base}")).arg("-t").arg(&tag).arg(&context);
        process::run_checked(cmd.env("DOCKER_BUILDKIT", "0"), &format!("docker build {tag}"))?;
        let _ = fs::remove_dir_all(&context);
    }
    // What rebuilding left behind: our images' previous versions (they carry the base's label)
    // and build cache beyond a bound, so repeated runs do not fill the disk.
    let filter = format!("label={RECIPE_LABEL}");
    let _ = Command::new("docker").args(["image", "prune", "--force", "--filter", &filter]).output();
    let _ = Command::new("docker").args(["builder", "prune", "--force", "--keep-storage", "8GB"]).output();
    Ok(images.into_iter().map(|i| (i.var, i.tag)).collect())
}

/// The Debian base: `debootstrap --variant=minbase` into a scratch dir, imported as an image.
fn build_base(tag: &str) -> anyhow::Result<()> {
    if Command::new("debootstrap").arg("--version").output().is_err() {
        crate::postgres::apt_install(&["debootstrap"])?;
    }
    let root = crate::paths::cache_dir().join(format!("images/rootfs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root)?;
    eprintln!("dev-stack: debootstrap {SUITE} for the base image (once per machine, about a minute)");
    let built = process::run_checked(
        Command::new("debootstrap").args(["--variant=minbase", SUITE]).arg(&root).arg("http://deb.debian.org/debian"),
        "debootstrap",
    )
    .and_then(|_| {
        // Slim, as the official `-slim` images are: apt keeps no package caches, dpkg installs
        // no docs, man pages or translations, and the bootstrap's own are gone.
        fs::write(root.join("etc/apt/apt.conf.d/docker-clean"), APT_CLEAN)?;
        fs::write(root.join("etc/apt/apt.conf.d/docker-no-recommends"), "APT::Install-Recommends \"false\";\n")?;
        fs::write(root.join("etc/dpkg/dpkg.cfg.d/docker"), DPKG_SLIM)?;
        for leftover in
            ["var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"]
        {
            let _ = fs::remove_dir_all(root.join(leftover));
            fs::create_dir_all(root.join(leftover))?;
        }
        fs::create_dir_all(root.join("var/cache/apt/archives/partial"))?;
        // Java's alternatives link its man page there even when man pages are excluded.
        fs::create_dir_all(root.join("usr/share/man/man1"))?;
        let import = format!(
            "tar -C '{}' -c . | docker import --change 'CMD [\"bash\"]' \
             --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
             --change 'LABEL {RECIPE_LABEL}={BASE_RECIPE}' - '{tag}'",
            root.display()
        );
        process::run_checked(Command::new("sh").arg("-c").arg(import), "docker import").map(|_| ())
    });
    let _ = fs::remove_dir_all(&root);
    built
}

/// The label naming the base image's recipe; a changed recipe rebuilds the base (and so every
/// image on it).
const RECIPE_LABEL: &str = "org.patient-platform.recipe";
const BASE_RECIPE: &str = "debootstrap-minbase-slim-3";

const APT_CLEAN: &str = r#"DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"#;

const DPKG_SLIM: &str = "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n\
path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n\
path-exclude /usr/share/groff/*\npath-exclude /usr/share/lintian/*\n";

fn rust_version() -> anyhow::Result<String> {
    let out = process::run_checked(Command::new("rustc").arg("--version"), "rustc --version")?;
    let full = out.split_whitespace().nth(1).context("unexpected rustc --version")?;
    // `1.95.0` → `1.95`, as the official image's tag.
    Ok(full.rsplit_once('.').map_or(full, |(minor, _)| minor).to_owned())
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    process::run_checked(Command::new("cp").arg("-a").arg(from).arg(to), "copy of an image recipe").map(|_| ())
}

/// Hard links (copies across file systems) `from` at `to`, for a build context.
fn link_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    let linked = Command::new("cp").arg("-al").arg(from).arg(to).output().is_ok_and(|o| o.status.success());
    if !linked {
        let _ = fs::remove_dir_all(to).or_else(|_| fs::remove_file(to));
        process::run_checked(Command::new("cp").arg("-a").arg(from).arg(to), "copy into a build context")?;
    }
    Ok(())
}

/// The platform's services, as docker-compose.yml and the Helm chart name them.
pub const SERVICES: [&str; 6] =
    ["billing-service", "patient-service", "analytics-service", "appointment-service", "notification-service", "gateway"];

/// The service images' tag: docker-compose.yml's default (`SERVICE_IMAGE_TAG`) and the chart's.
pub const SERVICE_IMAGE_TAG: &str = "0.1.0";

/// Host ports a compose stack publishes (the compose file's `*_PORT` overrides).
#[derive(Debug, Clone, Copy)]
pub struct ComposePorts {
    pub gateway: u16,
    pub keycloak: u16,
    pub mailpit_ui: u16,
    pub jaeger_ui: u16,
}

impl ComposePorts {
    /// The compose file's defaults (SPEC §1).
    pub const DEFAULT: Self = Self { gateway: 4004, keycloak: 8080, mailpit_ui: 8025, jaeger_ui: 16686 };

    /// Free ports, for a stack beside a developer's.
    pub fn free() -> anyhow::Result<Self> {
        Ok(Self {
            gateway: crate::net::free_port()?,
            keycloak: crate::net::free_port()?,
            mailpit_ui: crate::net::free_port()?,
            jaeger_ui: crate::net::free_port()?,
        })
    }
}

/// The platform from docker-compose.yml under one compose project, on the local images when
/// they are built (else the official ones).
#[derive(Debug)]
pub struct Compose {
    project: String,
    pub ports: ComposePorts,
    /// `down -v` (containers, networks, volumes, the project's service images) when dropped.
    remove_on_drop: bool,
}

impl Compose {
    /// `docker compose up --build --wait`: builds the service images and returns once every
    /// container is healthy (or fails with the last lines of each service's log).
    pub fn up(project: &str, ports: ComposePorts, remove_on_drop: bool) -> anyhow::Result<Self> {
        ensure_daemon()?;
        let stack = Self { project: project.to_owned(), ports, remove_on_drop };
        let mut cmd = stack.command()?;
        cmd.args(["up", "--detach", "--build", "--wait", "--wait-timeout", "900"]);
        eprintln!("dev-stack: docker compose up ({project}); the first build of the service images takes several minutes");
        let status = cmd.status().context("failed to run docker compose")?;
        if !status.success() {
            let logs = stack.logs(60);
            bail!("docker compose up failed ({status}); the services' last log lines:\n{logs}");
        }
        Ok(stack)
    }

    /// A project started earlier (for `down`).
    pub fn existing(project: &str) -> Self {
        Self { project: project.to_owned(), ports: ComposePorts::DEFAULT, remove_on_drop: false }
    }

    /// Builds the six service images from the one Dockerfile (on the local builder and runtime
    /// images when built) without starting anything, tagged `patient-platform/<service>:<tag>`:
    /// the names the Helm chart runs.
    pub fn build_services(&self, tag: &str) -> anyhow::Result<Vec<String>> {
        ensure_daemon()?;
        let mut cmd = self.command()?;
        cmd.env("SERVICE_IMAGE_TAG", tag).arg("build");
        let status = cmd.status().context("failed to run docker compose build")?;
        if !status.success() {
            bail!("docker compose build failed ({status})");
        }
        Ok(SERVICES.iter().map(|s| format!("patient-platform/{s}:{tag}")).collect())
    }

    /// The last `lines` lines of every service's log.
    pub fn logs(&self, lines: usize) -> String {
        self.command()
            .ok()
            .and_then(|mut cmd| cmd.args(["logs", "--no-color", "--tail", &lines.to_string()]).output().ok())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Stops and removes the project's containers and networks; with `volumes`, its data too.
    pub fn down(&self, volumes: bool) -> anyhow::Result<()> {
        let mut cmd = self.command()?;
        cmd.args(["down", "--remove-orphans"]);
        if volumes {
            cmd.args(["--volumes", "--rmi", "local"]);
        }
        process::run_checked(&mut cmd, "docker compose down").map(|_| ())
    }

    fn command(&self) -> anyhow::Result<Command> {
        let mut cmd = Command::new(compose()?);
        let root = crate::paths::workspace_root();
        cmd.current_dir(&root)
            .arg("--project-name")
            .arg(&self.project)
            .arg("--file")
            .arg(root.join("docker-compose.yml"))
            .env("GATEWAY_PORT", self.ports.gateway.to_string())
            .env("KEYCLOAK_PORT", self.ports.keycloak.to_string())
            .env("MAILPIT_UI_PORT", self.ports.mailpit_ui.to_string())
            .env("JAEGER_UI_PORT", self.ports.jaeger_ui.to_string());
        if self.remove_on_drop {
            // A throwaway stack (the tests'): published on loopback only.
            cmd.env("PUBLISH_ADDRESS", "127.0.0.1");
        }
        if images_present() {
            for (var, tag) in overrides() {
                if std::env::var_os(var).is_none() {
                    cmd.env(var, tag);
                }
            }
        }
        Ok(cmd)
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if self.remove_on_drop {
            if let Err(e) = self.down(true) {
                eprintln!("dev-stack: {e:#}");
            }
        }
    }
}
