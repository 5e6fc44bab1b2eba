//! Apache Kafka as a single KRaft node (broker + controller) run from Maven Central jars:
//! `org.apache.kafka:kafka_2.13` plus a logging binding, resolved once by Maven into the cache,
//! storage formatted with `kafka.tools.StorageTool`, started with `kafka.Kafka`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

use crate::{net, process};

/// The pinned Kafka version (Scala 2.13 build).
pub const VERSION: &str = "3.9.1";
const SLF4J_VERSION: &str = "1.7.36";
const JAVA_MAJORS: [u32; 3] = [17, 21, 25];
const TEST_DIR_PREFIX: &str = "patient-platform-test-kafka-";

/// A Kafka node (running or stopped) with its own data dir and ports.
#[derive(Debug)]
pub struct Kafka {
    dir: PathBuf,
    port: u16,
    controller_port: u16,
    pid: Option<u32>,
    tied_to_process: bool,
    /// Set with the Docker backend: the broker is this container.
    container: Option<crate::containers::Started>,
}

impl Kafka {
    /// One broker per test process, started on first use.
    pub fn shared_for_tests() -> &'static Kafka {
        static KAFKA: OnceLock<Kafka> = OnceLock::new();
        KAFKA.get_or_init(|| Self::start_ephemeral().unwrap_or_else(|e| panic!("failed to start the test Kafka broker: {e:#}")))
    }

    /// A private broker on free ports in a temp dir, tied to this process' lifetime (a container
    /// with the Docker backend).
    pub fn start_ephemeral() -> anyhow::Result<Self> {
        if crate::containers::backend() == crate::containers::Backend::Docker {
            let port = net::free_port()?;
            let container = Some(crate::containers::kafka(port)?);
            return Ok(Self { dir: PathBuf::new(), port, controller_port: 0, pid: None, tied_to_process: true, container });
        }
        // A port free a moment ago can be taken before the broker binds it; then the broker
        // exits at once, and another pair of ports is tried.
        let mut attempt = 1;
        loop {
            let mut kafka = Self {
                dir: process::fresh_test_dir(TEST_DIR_PREFIX),
                port: net::free_port()?,
                controller_port: net::free_port()?,
                pid: None,
                tied_to_process: true,
                container: None,
            };
            kafka.format()?;
            match kafka.start() {
                Ok(()) => return Ok(kafka),
                Err(_) if attempt < 3 && kafka.lost_a_port() => {
                    eprintln!("Kafka could not bind its ports (attempt {attempt}); trying other ports");
                    kafka.kill();
                    let _ = fs::remove_dir_all(&kafka.dir);
                    attempt += 1;
                }
                Err(e) => {
                    kafka.kill();
                    return Err(e);
                }
            }
        }
    }

    /// True when the broker's log says a port was taken when it tried to listen.
    fn lost_a_port(&self) -> bool {
        fs::read_to_string(self.dir.join("kafka.log")).is_ok_and(|log| log.contains("Address already in use"))
    }

    /// The dev stack's broker in `dir` (formatted on first use); a no-op when it already runs.
    pub fn start_persistent(dir: &Path, port: u16, controller_port: u16) -> anyhow::Result<Self> {
        let mut kafka =
            Self { dir: dir.to_path_buf(), port, controller_port, pid: None, tied_to_process: false, container: None };
        if read_pid(dir).is_some() {
            return Ok(kafka);
        }
        for p in [port, controller_port] {
            if net::port_in_use(p) {
                bail!("port {p} is taken by another program; choose other Kafka ports");
            }
        }
        if !dir.join("logs/meta.properties").exists() {
            kafka.format()?;
        }
        kafka.start()?;
        Ok(kafka)
    }

    /// Stops the dev broker living in `dir`, if it runs.
    pub fn stop_persistent(dir: &Path) -> bool {
        match read_pid(dir) {
            Some(pid) => {
                process::terminate(pid, Duration::from_secs(30));
                let _ = fs::remove_file(dir.join("kafka.pid"));
                true
            }
            None => false,
        }
    }

    /// `host:port` for clients.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Writes the configuration and formats the storage.
    fn format(&self) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir)?;
        fs::write(self.dir.join("server.properties"), self.server_properties())?;
        fs::write(self.dir.join("log4j.properties"), LOG4J)?;
        let cluster_id = cluster_id();
        let mut cmd = self.java("kafka.tools.StorageTool")?;
        cmd.args(["format", "--ignore-formatted", "-t", &cluster_id, "-c"]).arg(self.dir.join("server.properties"));
        process::run_checked(&mut cmd, "kafka-storage format")?;
        Ok(())
    }

    /// Starts (or restarts) the broker and waits until it serves.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if let Some(started) = &self.container {
            return started.resume("Kafka Server started", Duration::from_secs(120));
        }
        let log_path = self.dir.join("kafka.log");
        let log = fs::File::create(&log_path)?;
        let mut cmd = self.java("kafka.Kafka")?;
        cmd.arg(self.dir.join("server.properties")).stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let pid = if self.tied_to_process {
            process::spawn_tied_to_this_process(cmd, libc::SIGKILL)?
        } else {
            process::spawn_detached(cmd)?
        };
        self.pid = Some(pid);
        fs::write(self.dir.join("kafka.pid"), pid.to_string())?;
        let started =
            || fs::read_to_string(&log_path).is_ok_and(|t| t.contains("Kafka Server started")) && net::port_in_use(self.port);
        process::wait_ready("Kafka", Duration::from_secs(120), &log_path, || process::pid_alive(pid), started)
    }

    /// Stops the broker (SIGTERM: controlled shutdown) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(started) = &self.container {
            let _ = started.pause();
            return;
        }
        if let Some(pid) = self.pid.take().or_else(|| read_pid(&self.dir)) {
            process::terminate(pid, Duration::from_secs(30));
        }
        let _ = fs::remove_file(self.dir.join("kafka.pid"));
    }

    /// Crashes the broker (SIGKILL: no controlled shutdown); [`Kafka::start`] recovers its logs.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take().or_else(|| read_pid(&self.dir)) {
            process::kill(pid);
        }
        let _ = fs::remove_file(self.dir.join("kafka.pid"));
    }

    fn java(&self, main_class: &str) -> anyhow::Result<Command> {
        let java_home = crate::java::java_home(&JAVA_MAJORS)?;
        let libs = ensure_jars()?;
        let mut cmd = Command::new(java_home.join("bin/java"));
        cmd.args(["-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true"])
            .arg(format!("-Dlog4j.configuration=file:{}", self.dir.join("log4j.properties").display()))
            .arg(format!("-Dkafka.logs.dir={}", self.dir.display()))
            .arg("-cp")
            .arg(format!("{}/*", libs.display()))
            .arg(main_class);
        Ok(cmd)
    }

    fn server_properties(&self) -> String {
        let (p, c) = (self.port, self.controller_port);
        format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{c}\n\
             listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{p}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             log.dirs={logs}\n\
             num.partitions=3\n\
             auto.create.topics.enable=true\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=3\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n",
            logs = self.dir.join("logs").display()
        )
    }
}

const LOG4J: &str = "log4j.rootLogger=INFO, stdout\n\
log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n\
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n\
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n\
log4j.logger.kafka=INFO\nlog4j.logger.org.apache.kafka=WARN\nlog4j.logger.state.change.logger=WARN\n";

/// The broker's jars in the cache, resolved by Maven from Maven Central on first use.
pub fn ensure_jars() -> anyhow::Result<PathBuf> {
    let home = crate::paths::cache_dir().join(format!("kafka-{VERSION}"));
    let libs = home.join("libs");
    if home.join(".resolved").exists() {
        return Ok(libs);
    }
    if Command::new("mvn").arg("-v").output().is_err() && process::is_root() {
        crate::postgres::apt_install(&["maven"])?;
    }
    fs::create_dir_all(&home)?;
    let pom = format!(
        r#"<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.dev-stack</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{VERSION}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>{SLF4J_VERSION}</version></dependency>
  </dependencies>
</project>
"#
    );
    fs::write(home.join("pom.xml"), pom)?;
    eprintln!("dev-stack: resolving Kafka {VERSION} jars with Maven (once per machine)");
    let scratch = home.join(format!("libs.part-{}", std::process::id()));
    process::run_checked(
        Command::new("mvn")
            .current_dir(&home)
            .args(["-B", "-q", "dependency:copy-dependencies", "-DincludeScope=runtime"])
            .arg(format!("-DoutputDirectory={}", scratch.display())),
        "mvn dependency:copy-dependencies",
    )
    .context("failed to resolve the Kafka jars")?;
    let _ = fs::remove_dir_all(&libs);
    fs::rename(&scratch, &libs)?;
    fs::write(home.join(".resolved"), VERSION)?;
    Ok(libs)
}

fn read_pid(dir: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(dir.join("kafka.pid")).ok()?.trim().parse().ok()?;
    process::pid_alive(pid).then_some(pid)
}

/// A KRaft cluster id: 16 bytes, base64url without padding, never starting with `-`.
fn cluster_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let mut bytes = nanos.to_le_bytes();
    bytes[12..16].copy_from_slice(&std::process::id().to_le_bytes());
    // The first character must not be `-` (kafka-storage would read the id as an option): with
    // the top bit clear the first base64 digit is one of A-Z a-f.
    bytes[0] &= 0x7f;
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_ids_never_look_like_an_option() {
        for _ in 0..2_000 {
            let id = super::cluster_id();
            assert_eq!(id.len(), 22, "16 bytes");
            assert!(id.starts_with(|c: char| c.is_ascii_alphabetic()), "{id}");
        }
    }
}
