//! Real `starling-sink` and `starling-node` processes with generated
//! configs, started from the workspace's build output.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use starling_mesh::identity::{FleetCa, Role};

use crate::{free_port, wait_for};

/// Directory of the workspace binaries: STARLING_BIN_DIR, or the target
/// directory the running test binary was built into.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("STARLING_BIN_DIR") {
        return Ok(d.into());
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("test binary has no directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    Ok(dir.to_path_buf())
}

/// The path of a workspace binary, or an error saying how to build it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if !p.is_file() {
        bail!(
            "{} not found: build it first (cargo build --workspace --bins)",
            p.display()
        );
    }
    Ok(p)
}

/// CPU seconds (user, system) and RSS of one process, from /proc: what
/// the benches report for a node, a sink or themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessUsage {
    /// User CPU seconds.
    pub user: f64,
    /// System CPU seconds.
    pub system: f64,
    /// Resident memory now (VmRSS).
    pub rss_bytes: u64,
    /// The most it has been resident (VmHWM).
    pub peak_rss_bytes: u64,
}

impl ProcessUsage {
    /// The figures of process `pid` now.
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime 14, stime 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("/proc/pid/stat without a command name")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let field = |i: usize| -> anyhow::Result<f64> {
            let v: u64 = fields
                .get(i)
                .context("short /proc/pid/stat")?
                .parse()
                .context("/proc/pid/stat field")?;
            Ok(v as f64 / ticks)
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Ok(Self {
            user: field(11)?,
            system: field(12)?,
            rss_bytes: kib("VmRSS:"),
            peak_rss_bytes: kib("VmHWM:"),
        })
    }
}

/// A fleet CA and the credentials it issued, in a temporary directory.
pub struct Fleet {
    dir: tempfile::TempDir,
    ca: FleetCa,
}

impl Fleet {
    /// Creates a CA in a new temporary directory.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("starling-fleet")
            .tempdir()?;
        let ca = FleetCa::generate("test", 30)?;
        ca.pem().write(&dir.path().join("pki"), "ca")?;
        Ok(Self { dir, ca })
    }

    /// Root of the fleet's temporary directory (data dirs go below it).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("pki/ca.pem")
    }

    /// Issues and writes a certificate; returns (cert, key) paths.
    pub fn issue(&self, role: Role, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let pair = self.ca.issue(
            role,
            name,
            &["localhost".into()],
            &["127.0.0.1".parse()?],
            30,
        )?;
        Ok(pair.write(&self.dir.path().join("pki"), name)?)
    }

    /// Issues a certificate and loads it as a mesh member's enrolment, for
    /// members run in the test's own process.
    pub fn enrolment(
        &self,
        role: Role,
        name: &str,
    ) -> anyhow::Result<starling_mesh::enrol::Enrolment> {
        let (cert, key) = self.issue(role, name)?;
        Ok(starling_mesh::enrol::Enrolment::load(
            &starling_mesh::identity::TlsFiles {
                ca_cert: self.ca_cert(),
                cert,
                key,
            },
        )?)
    }

    /// Revokes the certificate issued to `name`, writing the fleet's list
    /// where hosts read it by default (`crl.pem` beside the CA).
    pub fn revoke(&self, name: &str) -> anyhow::Result<()> {
        use rustls_pki_types::pem::PemObject;
        let pki = self.dir.path().join("pki");
        let cert = rustls_pki_types::CertificateDer::from_pem_file(pki.join(format!("{name}.pem")))
            .with_context(|| format!("reading the certificate of {name}"))?;
        self.ca.revoke(&pki.join("crl.pem"), &[cert], 7)?;
        Ok(())
    }
}

/// A child process that is killed when dropped.
struct Managed {
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Managed {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("STARLING_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("not running")
        };
        // SAFETY: sending a signal to our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        match wait_for(Duration::from_secs(20), || c.try_wait().ok().flatten()) {
            Some(s) => Ok(s),
            None => {
                let _ = c.kill();
                let _ = c.wait();
                bail!(
                    "{} did not stop within 20 s of SIGTERM",
                    self.binary.display()
                )
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reads one metric from a Prometheus endpoint. `series` is the text before
/// the value, e.g. `starling_sink_batches_total{status="PERSISTED"}`.
pub fn scrape(port: u16, series: &str) -> Option<f64> {
    samples(&metrics_page(port)?).find_map(|(name, value)| (name == series).then_some(value))
}

/// One metric of this test process itself, for tests that run a daemon's
/// library parts in process: a Prometheus recorder is installed on first
/// use (once per process) and read back.
pub fn local_metric(series: &str) -> Option<f64> {
    static RECORDER: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    let handle = RECORDER.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .ok()
    });
    let page = handle.as_ref()?.render();
    let value = samples(&page).find_map(|(name, value)| (name == series).then_some(value));
    value
}

/// The sum of every series of a Prometheus endpoint whose text starts
/// with `prefix` (e.g. all `kind`s of one drop reason); None when the
/// endpoint does not answer, 0 when no series matches.
pub fn scrape_sum(port: u16, prefix: &str) -> Option<f64> {
    Some(
        samples(&metrics_page(port)?)
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, value)| value)
            .sum(),
    )
}

fn metrics_page(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// (series, value) of each sample line of a metrics page.
fn samples(page: &str) -> impl Iterator<Item = (&str, f64)> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name, value.parse().ok()?))
        })
}

/// A `starling-sink` process.
pub struct SinkProcess {
    proc: Managed,
    /// Name in its certificate (what nodes use as server_name).
    pub name: String,
    /// UDP port of its QUIC listener.
    pub port: u16,
    /// TCP port of its metrics endpoint.
    pub metrics_port: u16,
    /// Its data directory (the local store is `store` below it).
    pub data_dir: PathBuf,
}

impl SinkProcess {
    /// Starts a sink writing to `kafka` (bootstrap servers, topic) or, when
    /// None, to its local store; waits until it is ready.
    pub fn start(fleet: &Fleet, name: &str, kafka: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let mut sink = Self::create(fleet, name, kafka)?;
        sink.restart()?;
        Ok(sink)
    }

    /// Prepares credentials, config and ports without starting the process
    /// (nodes can be pointed at a sink that is not up yet).
    pub fn create(fleet: &Fleet, name: &str, kafka: Option<(&str, &str)>) -> anyhow::Result<Self> {
        Self::create_in_mesh(fleet, name, kafka, None, "")
    }

    /// Starts a sink writing to Kafka with `kafka_toml` (lines of the
    /// `[kafka]` table, e.g. `origin_proof = true`) in its config.
    pub fn start_with_kafka_config(
        fleet: &Fleet,
        name: &str,
        kafka: (&str, &str),
        kafka_toml: &str,
    ) -> anyhow::Result<Self> {
        let mut sink = Self::create_in_mesh(fleet, name, Some(kafka), None, kafka_toml)?;
        sink.restart()?;
        Ok(sink)
    }

    /// Like [`SinkProcess::start`], and the sink joins the mesh through
    /// `bootstrap` (multiaddrs) to advertise itself.
    pub fn start_in_mesh(
        fleet: &Fleet,
        name: &str,
        kafka: Option<(&str, &str)>,
        bootstrap: &[String],
    ) -> anyhow::Result<Self> {
        let mut sink = Self::create_in_mesh(fleet, name, kafka, Some(bootstrap), "")?;
        sink.restart()?;
        Ok(sink)
    }

    fn create_in_mesh(
        fleet: &Fleet,
        name: &str,
        kafka: Option<(&str, &str)>,
        mesh: Option<&[String]>,
        kafka_toml: &str,
    ) -> anyhow::Result<Self> {
        let (cert, key) = fleet.issue(Role::Sink, name)?;
        let port = free_port();
        let metrics_port = free_port();
        let dir = fleet.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let mut config = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {data:?}\n[tls]\nca_cert = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            data = dir.join("data"),
            ca = fleet.ca_cert(),
        );
        if let Some((brokers, topic)) = kafka {
            config.push_str(&format!(
                "[kafka]\nbrokers = {brokers:?}\ntopic = {topic:?}\npartitions = 3\ndelivery_timeout_ms = 10000\n{kafka_toml}\n"
            ));
        }
        if let Some(bootstrap) = mesh {
            config.push_str(&format!(
                "[mesh]\nenabled = true\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nbootstrap = {bootstrap:?}\n"
            ));
        }
        let config_path = dir.join("sink.toml");
        std::fs::write(&config_path, config)?;
        Ok(Self {
            proc: Managed {
                binary: binary("starling-sink")?,
                config: config_path,
                log: dir.join("sink.log"),
                child: None,
            },
            name: name.into(),
            port,
            metrics_port,
            data_dir: dir.join("data"),
        })
    }

    /// Starts the process again with the same config and waits until ready.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let before = self.proc.log().matches("sink ready").count();
        self.proc.spawn()?;
        let ready = wait_for(Duration::from_secs(30), || {
            (self.proc.log().matches("sink ready").count() > before).then_some(())
        });
        if ready.is_none() {
            bail!(
                "sink {} did not become ready:\n{}",
                self.name,
                self.proc.log()
            );
        }
        Ok(())
    }

    /// host:port for node configs.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The local store directory.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// Kills the process with SIGKILL.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Stops with SIGTERM and waits.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.proc.terminate()
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// One metric of this sink.
    pub fn metric(&self, series: &str) -> Option<f64> {
        scrape(self.metrics_port, series)
    }

    /// Everything the process logged.
    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// A `starling-node` process.
pub struct NodeProcess {
    proc: Managed,
    /// Its host id (and certificate name).
    pub host_id: String,
    /// TCP port of its metrics endpoint.
    pub metrics_port: u16,
    sensor: bool,
    data_dir: PathBuf,
}

/// How a node process joins the mesh.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Multiaddrs to dial at start.
    pub bootstrap: Vec<String>,
    /// Cell label.
    pub zone: String,
    /// May be elected aggregator.
    pub aggregator: bool,
    /// UDP port of its libp2p QUIC listener (0: any).
    pub listen_port: u16,
    pub expected_cell_size: u32,
    /// `mesh.direct_to_sink_after_secs`; None: the daemon's default.
    pub direct_to_sink_after_secs: Option<u64>,
}

/// The aggregators a cell of `names` in `zone` elects when every member is
/// eligible and idle: the election is deterministic, so a test knows them
/// before it starts the members.
pub fn predicted_aggregators(zone: &str, names: &[String]) -> Vec<String> {
    use starling_mesh::election::{elect, ElectionParams, Member};
    let members: Vec<Member> = names
        .iter()
        .map(|n| Member {
            id: n.clone(),
            eligible: true,
            incumbent: false,
            load: 0.0,
        })
        .collect();
    elect(
        &format!("zone:{zone}"),
        &members,
        &ElectionParams::default(),
    )
}

impl MeshOptions {
    /// The multiaddr a node started with these options listens on.
    pub fn listen_addr(&self) -> String {
        format!("/ip4/127.0.0.1/udp/{}/quic-v1", self.listen_port)
    }
}

impl NodeProcess {
    /// Starts a node shipping to `sinks` ((address, server name) pairs).
    /// With `sensor`, waits until the kernel sensor is up.
    pub fn start(
        fleet: &Fleet,
        host_id: &str,
        sinks: &[(String, String)],
        sensor: bool,
    ) -> anyhow::Result<Self> {
        Self::start_with(fleet, host_id, sinks, sensor, None, "")
    }

    /// Starts a node with its sensor on and `sensor_toml` (lines of the
    /// `[sensor]` table, e.g. `watch_paths = [...]`) in its config.
    pub fn start_with_sensor_config(
        fleet: &Fleet,
        host_id: &str,
        sinks: &[(String, String)],
        sensor_toml: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(fleet, host_id, sinks, true, None, sensor_toml)
    }

    /// Starts a mesh member: it finds its cell through `mesh.bootstrap` and
    /// ships through the aggregator it attaches to.
    pub fn start_in_mesh(
        fleet: &Fleet,
        host_id: &str,
        mesh: &MeshOptions,
        sensor: bool,
    ) -> anyhow::Result<Self> {
        Self::start_with(fleet, host_id, &[], sensor, Some(mesh), "")
    }

    fn start_with(
        fleet: &Fleet,
        host_id: &str,
        sinks: &[(String, String)],
        sensor: bool,
        mesh: Option<&MeshOptions>,
        sensor_toml: &str,
    ) -> anyhow::Result<Self> {
        let (cert, key) = fleet.issue(Role::Node, host_id)?;
        let metrics_port = free_port();
        let dir = fleet.path().join(host_id);
        std::fs::create_dir_all(&dir)?;
        let mut config = format!(
            "host_id = {host_id:?}\ndata_dir = {data:?}\n[tls]\nca_cert = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n[sensor]\nenabled = {sensor}\n{sensor_toml}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            data = dir.join("data"),
            ca = fleet.ca_cert(),
        );
        for (address, name) in sinks {
            config.push_str(&format!(
                "[[uplink.sinks]]\naddress = {address:?}\nserver_name = {name:?}\n"
            ));
        }
        if let Some(m) = mesh {
            config.push_str(&format!(
                "[mesh]\nenabled = true\nlisten = [\"/ip4/127.0.0.1/udp/{port}/quic-v1\"]\nbootstrap = {bootstrap:?}\nzone = {zone:?}\naggregator = {aggregator}\nrelay_listen = \"127.0.0.1:0\"\nexpected_cell_size = {size}\n",
                port = m.listen_port,
                bootstrap = m.bootstrap,
                zone = m.zone,
                aggregator = m.aggregator,
                size = m.expected_cell_size,
            ));
            if let Some(secs) = m.direct_to_sink_after_secs {
                config.push_str(&format!("direct_to_sink_after_secs = {secs}\n"));
            }
        }
        let config_path = dir.join("node.toml");
        std::fs::write(&config_path, config)?;
        let mut node = Self {
            proc: Managed {
                binary: binary("starling-node")?,
                config: config_path,
                log: dir.join("node.log"),
                child: None,
            },
            host_id: host_id.into(),
            metrics_port,
            sensor,
            data_dir: dir.join("data"),
        };
        node.restart()?;
        Ok(node)
    }

    /// Starts the process again and waits until its metrics answer (and,
    /// with the sensor enabled, until the sensor is up).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.spawn()?;
        let want_sensor = self.sensor;
        let ready = wait_for(Duration::from_secs(30), || {
            let up = scrape(self.metrics_port, "starling_node_sensor_up")?;
            (!want_sensor || up == 1.0).then_some(())
        });
        if ready.is_none() {
            bail!(
                "node {} did not become ready:\n{}",
                self.host_id,
                self.proc.log()
            );
        }
        Ok(())
    }

    /// Kills the process with SIGKILL.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Stops with SIGTERM and waits.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.proc.terminate()
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.proc.alive()
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Its config file (rewrite it and send SIGHUP to reload the sensor
    /// filters).
    pub fn config_path(&self) -> &Path {
        &self.proc.config
    }

    /// One metric of this node.
    pub fn metric(&self, series: &str) -> Option<f64> {
        scrape(self.metrics_port, series)
    }

    /// The mesh status the node last wrote (None before the first, or
    /// without the mesh).
    pub fn mesh_status(&self) -> Option<starling_mesh::status::MeshStatus> {
        let path = self.data_dir.join(starling_mesh::status::STATUS_FILE);
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// True once every record the sensor has read is in the spool (or was
    /// filtered by the node, or undecodable), read from one metrics page so
    /// the counters agree in time: the sensor counts a chunk as observed
    /// before it writes it and as spooled after. Loss events count as
    /// spooled, so a run with kernel drops may see this a chunk early.
    pub fn spool_caught_up(&self) -> Option<bool> {
        let page = metrics_page(self.metrics_port)?;
        let (mut observed, mut spooled, mut left_out) = (0.0, 0.0, 0.0);
        for (name, value) in samples(&page) {
            if name == "starling_node_events_observed_total" {
                observed = value;
            } else if name == "starling_node_events_spooled_total" {
                spooled = value;
            } else if (name.starts_with("starling_node_events_filtered_total")
                && name.contains("by=\"node\""))
                || name.starts_with("starling_node_events_dropped_total{reason=\"decode_error\"")
            {
                left_out += value;
            }
        }
        Some(spooled + left_out >= observed)
    }

    /// Highest sequence number assigned so far.
    pub fn last_seq(&self) -> Option<u64> {
        self.metric("starling_node_spool_next_seq")
            .map(|n| n as u64 - 1)
    }

    /// Everything the process logged.
    pub fn log(&self) -> String {
        self.proc.log()
    }
}
