//! `starling-node` configuration (one TOML file; docs/configuration.md
//! documents every field). Unknown fields are errors, every field has a safe
//! default, and validation names the field it rejects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use starling_mesh::identity::TlsFiles;

use crate::spool::DropPolicy;

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This host's identity; must equal the name in its certificate.
    /// Default: the kernel hostname.
    pub host_id: Option<String>,
    /// Where the spool lives.
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    pub sensor: SensorSection,
    pub spool: SpoolSection,
    pub uplink: UplinkSection,
    pub mesh: MeshSection,
    /// The task plane (docs/tasks.md): it runs when the mesh is on and the
    /// trust root exists.
    pub tasks: starling_mesh::swarm::TasksConfig,
    pub metrics: MetricsSection,
}

/// Mesh membership: when enabled, the node finds its cell, takes part in
/// electing aggregators, ships through the aggregator it attaches to, and
/// relays for its cell when elected (docs/mesh.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSection {
    /// Join the mesh. When false the node ships to `uplink.sinks`.
    pub enabled: bool,
    /// libp2p listen multiaddrs.
    pub listen: Vec<String>,
    /// The multiaddr other members dial; default: the first non-loopback
    /// listen address.
    pub advertise: String,
    /// Multiaddrs of members (or sinks) to dial at start.
    pub bootstrap: Vec<String>,
    /// Cell label; empty: the cell follows from the advertised address
    /// (its /24 or /48).
    pub zone: String,
    /// May be elected aggregator.
    pub aggregator: bool,
    /// Nodes this host relays for at most while aggregator.
    pub capacity: u32,
    /// host:port of the relay's QUIC listener (port 0: any free port).
    pub relay_listen: String,
    /// host:port nodes dial to reach the relay; default: relay_listen, with
    /// an unspecified IP replaced by the advertised one.
    pub relay_advertise: String,
    /// About how many members the cell holds (tunes failure detection).
    pub expected_cell_size: u32,
    /// Seconds the cell may have no aggregator (none of its members may
    /// serve, or all that may are gone) before this node ships straight to
    /// a sink; it goes back through an aggregator as soon as one is
    /// elected. 0: never (the node keeps spooling).
    pub direct_to_sink_after_secs: u64,
}

impl MeshSection {
    /// How long the cell may have no aggregator before the node ships
    /// straight to a sink; None: never.
    pub fn direct_to_sink_after(&self) -> Option<std::time::Duration> {
        (self.direct_to_sink_after_secs > 0)
            .then(|| std::time::Duration::from_secs(self.direct_to_sink_after_secs))
    }
}

/// Certificate files issued by `starlingctl cert issue --role node`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The fleet's revocation list (`starlingctl cert revoke`); default:
    /// `crl.pem` beside `ca_cert`. Absent file: nothing is revoked.
    pub revocations: Option<PathBuf>,
}

/// Kernel sensor settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorSection {
    /// Load the BPF programs. When false (or when loading fails) the node
    /// still runs and ships what is spooled, and reports itself degraded.
    pub enabled: bool,
    /// BPF ring-buffer size in bytes; a power of two, at least 4096.
    pub ring_buffer_bytes: u32,
    /// Path prefixes whose opens, renames and unlinks are reported. Plain
    /// string prefixes ("/etc/cron" covers /etc/crontab and /etc/cron.d/);
    /// a trailing "*" is allowed and means the same; "~/" stands for every
    /// home directory in /etc/passwd.
    pub watch_paths: Vec<String>,
    /// Prefixes under watched ones that are not reported.
    pub quiet_paths: Vec<String>,
    /// Executables whose processes are not reported at all.
    pub quiet_exes: Vec<PathBuf>,
    /// cgroup2 paths ("/system.slice/backup.service") whose processes are
    /// not reported at all.
    pub quiet_cgroups: Vec<String>,
    /// Event kinds not reported (process_exec, file_open, ...).
    pub disabled_kinds: Vec<String>,
    /// Per-kind rate limits: `process_exec = { per_second = 5000, burst =
    /// 20000 }`. What is over the limit is dropped in the kernel and
    /// reported as an event_loss (RATE_LIMITED) with the count.
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    /// Leave out what the node itself does (its own opens, connects and
    /// BPF calls would otherwise be reported about itself).
    pub filter_own_activity: bool,
    /// Executables larger than this are not hashed (exe_sha256 is empty).
    pub hash_max_bytes: u64,
}

/// A rate limit for one event kind.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Events per second allowed on the host (split evenly across CPUs).
    pub per_second: u64,
    /// Events allowed at once after a quiet spell. Default: one second's.
    pub burst: Option<u64>,
}

/// What the watch list covers when the config does not say: credentials,
/// privilege configuration, persistence points and SSH keys.
pub const DEFAULT_WATCH_PATHS: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/cron",
    "/var/spool/cron/",
    "/etc/ld.so.preload",
    "/etc/ssh/sshd_config",
    "/root/",
    "~/.ssh/",
];

impl SensorSection {
    /// The kernel filters this section asks for, with "~/" expanded against
    /// `homes` and trailing "*" removed. `own_pid` is the node's pid.
    pub fn filters(&self, homes: &[PathBuf], own_pid: u32) -> starling_bpf::SensorFilters {
        starling_bpf::SensorFilters {
            own_pid: self.filter_own_activity.then_some(own_pid),
            disabled_kinds: self.disabled_kinds.clone(),
            watched_paths: expand_prefixes(&self.watch_paths, homes),
            quiet_paths: expand_prefixes(&self.quiet_paths, homes),
            quiet_exes: self.quiet_exes.clone(),
            quiet_cgroups: self.quiet_cgroups.clone(),
            rate_limits: self
                .rate_limits
                .iter()
                .map(|(kind, l)| starling_bpf::RateLimit {
                    kind: kind.clone(),
                    per_second: l.per_second,
                    burst: l.burst.unwrap_or(l.per_second),
                })
                .collect(),
        }
    }
}

/// Expands "~/" to each home directory and drops a trailing "*".
fn expand_prefixes(prefixes: &[String], homes: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for p in prefixes {
        let p = p.strip_suffix('*').unwrap_or(p);
        match p.strip_prefix("~/") {
            Some(rest) => {
                for home in homes {
                    out.push(format!("{}/{rest}", home.display()));
                }
            }
            None => out.push(p.to_owned()),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Home directories of the accounts in a passwd file that exist and are not
/// "/" (system accounts often have "/" or /nonexistent).
pub fn home_directories(passwd: &str) -> Vec<PathBuf> {
    let mut homes: Vec<PathBuf> = passwd
        .lines()
        .filter_map(|l| l.split(':').nth(5))
        .filter(|h| h.starts_with('/') && *h != "/")
        .map(PathBuf::from)
        .filter(|h| h.is_dir())
        .collect();
    homes.sort();
    homes.dedup();
    homes
}

/// Spool settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Logical bytes of events the spool may hold before the drop policy
    /// applies.
    pub quota_bytes: u64,
    /// `drop-oldest` or `drop-newest`.
    pub drop_policy: DropPolicy,
    /// fsync every write. Without it a process crash loses nothing, but a
    /// power loss may lose the last moments of events.
    pub sync_writes: bool,
}

/// Where and how the node ships its events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkSection {
    /// Sinks to deliver to, tried in order; the next is used when one fails.
    pub sinks: Vec<SinkAddress>,
    /// Most events per batch.
    pub max_batch_events: usize,
    /// Most encoded event bytes per batch (before compression).
    pub max_batch_bytes: usize,
    /// Batches sent and not yet acknowledged.
    pub max_in_flight: usize,
    /// Seconds to wait for an ack before the batch is sent again.
    pub ack_timeout_secs: u64,
}

/// One sink endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkAddress {
    /// host:port of the sink's QUIC listener.
    pub address: String,
    /// Name the sink's certificate must carry (its `--name` or a `--dns`).
    pub server_name: String,
}

/// Prometheus exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// host:port for the /metrics endpoint; empty disables it.
    pub listen: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            host_id: None,
            data_dir: "/var/lib/starling/node".into(),
            tls: TlsConfig::default(),
            sensor: SensorSection::default(),
            spool: SpoolSection::default(),
            uplink: UplinkSection::default(),
            mesh: MeshSection::default(),
            tasks: Default::default(),
            metrics: MetricsSection::default(),
        }
    }
}

impl Default for MeshSection {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: vec!["/ip4/0.0.0.0/udp/7401/quic-v1".into()],
            advertise: String::new(),
            bootstrap: Vec::new(),
            zone: String::new(),
            aggregator: true,
            capacity: 2000,
            relay_listen: "0.0.0.0:7402".into(),
            relay_advertise: String::new(),
            expected_cell_size: 100,
            direct_to_sink_after_secs: starling_mesh::attach::DEFAULT_DIRECT_TO_SINK_AFTER
                .as_secs(),
        }
    }
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca_cert: "/etc/starling/pki/ca.pem".into(),
            cert: "/etc/starling/pki/node.pem".into(),
            key: "/etc/starling/pki/node.key".into(),
            revocations: None,
        }
    }
}

impl Default for SensorSection {
    fn default() -> Self {
        Self {
            enabled: true,
            ring_buffer_bytes: 8 << 20,
            watch_paths: DEFAULT_WATCH_PATHS.iter().map(|s| s.to_string()).collect(),
            quiet_paths: Vec::new(),
            quiet_exes: Vec::new(),
            quiet_cgroups: Vec::new(),
            disabled_kinds: Vec::new(),
            rate_limits: BTreeMap::new(),
            filter_own_activity: true,
            hash_max_bytes: 64 << 20,
        }
    }
}

impl Default for SpoolSection {
    fn default() -> Self {
        Self {
            quota_bytes: 1 << 30,
            drop_policy: DropPolicy::DropOldest,
            sync_writes: false,
        }
    }
}

impl Default for UplinkSection {
    fn default() -> Self {
        Self {
            sinks: Vec::new(),
            max_batch_events: 2048,
            max_batch_bytes: 1 << 20,
            max_in_flight: 4,
            ack_timeout_secs: 30,
        }
    }
}

impl TlsConfig {
    /// Where the revocation list is read from.
    pub fn revocation_list(&self) -> PathBuf {
        starling_mesh::identity::revocation_list_path(self.revocations.as_deref(), &self.ca_cert)
    }

    /// The paths as the identity module wants them.
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            ca_cert: self.ca_cert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl NodeConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.into(),
                message,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(h) = &self.host_id {
            starling_proto::batch::check_host_id(h)
                .map_err(|e| invalid("host_id", e.to_string()))?;
        }
        if self.tasks.sync_interval_secs == 0 || self.tasks.sync_interval_secs > 3600 {
            return Err(invalid(
                "tasks.sync_interval_secs",
                format!("{} (1 to 3600)", self.tasks.sync_interval_secs),
            ));
        }
        if let Some(t) = self
            .tasks
            .tags
            .iter()
            .find(|t| t.is_empty() || t.len() > 128)
        {
            return Err(invalid("tasks.tags", format!("{t:?}: 1 to 128 bytes")));
        }
        let rb = self.sensor.ring_buffer_bytes;
        if !rb.is_power_of_two() || rb < 4096 {
            return Err(invalid(
                "sensor.ring_buffer_bytes",
                format!("{rb} is not a power of two of at least 4096"),
            ));
        }
        for kind in self
            .sensor
            .disabled_kinds
            .iter()
            .chain(self.sensor.rate_limits.keys())
        {
            if starling_bpf::kind_number(kind).is_none() {
                let known: Vec<&str> = starling_bpf::KIND_NAMES.iter().map(|(_, n)| *n).collect();
                return Err(invalid(
                    "sensor",
                    format!("unknown event kind {kind:?}; known: {}", known.join(", ")),
                ));
            }
        }
        for (kind, l) in &self.sensor.rate_limits {
            if l.per_second == 0 || l.burst == Some(0) {
                return Err(invalid(
                    "sensor.rate_limits",
                    format!("{kind}: per_second and burst must be at least 1"),
                ));
            }
        }
        use starling_proto::sensor_limits as limits;
        limits::check_prefixes(&self.sensor.watch_paths)
            .map_err(|e| invalid("sensor.watch_paths", e))?;
        limits::check_prefixes(&self.sensor.quiet_paths)
            .map_err(|e| invalid("sensor.quiet_paths", e))?;
        let exes: Vec<String> = (self.sensor.quiet_exes.iter())
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        limits::check_quiet_exes(&exes).map_err(|e| invalid("sensor.quiet_exes", e))?;
        limits::check_quiet_cgroups(&self.sensor.quiet_cgroups)
            .map_err(|e| invalid("sensor.quiet_cgroups", e))?;
        if self.spool.quota_bytes < 1 << 20 {
            return Err(invalid(
                "spool.quota_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.mesh.enabled {
            if !self.uplink.sinks.is_empty() {
                return Err(invalid(
                    "uplink.sinks",
                    "with mesh.enabled the node finds sinks through the mesh; remove uplink.sinks",
                ));
            }
            self.validate_mesh()?;
        } else if self.uplink.sinks.is_empty() {
            return Err(invalid(
                "uplink.sinks",
                "at least one sink is needed (or set mesh.enabled)",
            ));
        }
        for s in &self.uplink.sinks {
            if !s.address.contains(':') {
                return Err(invalid(
                    "uplink.sinks.address",
                    format!("{:?} is not host:port", s.address),
                ));
            }
            if s.server_name.is_empty() {
                return Err(invalid("uplink.sinks.server_name", "must not be empty"));
            }
        }
        let max_events = starling_proto::limits::MAX_BATCH_EVENTS;
        if self.uplink.max_batch_events == 0 || self.uplink.max_batch_events > max_events {
            return Err(invalid(
                "uplink.max_batch_events",
                format!("must be between 1 and {max_events}"),
            ));
        }
        // Leave room for framing and incompressible data under the receiver's limit.
        let max_bytes = starling_proto::limits::MAX_BATCH_BYTES / 2;
        if self.uplink.max_batch_bytes < 4096 || self.uplink.max_batch_bytes > max_bytes {
            return Err(invalid(
                "uplink.max_batch_bytes",
                format!("must be between 4096 and {max_bytes}"),
            ));
        }
        if self.uplink.max_in_flight == 0 || self.uplink.max_in_flight > 64 {
            return Err(invalid("uplink.max_in_flight", "must be between 1 and 64"));
        }
        if self.uplink.ack_timeout_secs == 0 {
            return Err(invalid("uplink.ack_timeout_secs", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_mesh(&self) -> Result<(), ConfigError> {
        let mesh = &self.mesh;
        let addr = |field: &'static str, a: &str| {
            a.parse::<starling_mesh::Multiaddr>()
                .map(|_| ())
                .map_err(|e| invalid(field, format!("{a:?}: {e}")))
        };
        if mesh.listen.is_empty() {
            return Err(invalid("mesh.listen", "at least one address is needed"));
        }
        for a in &mesh.listen {
            addr("mesh.listen", a)?;
        }
        for a in &mesh.bootstrap {
            addr("mesh.bootstrap", a)?;
        }
        if !mesh.advertise.is_empty() {
            addr("mesh.advertise", &mesh.advertise)?;
        }
        if mesh.aggregator {
            mesh.relay_listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| {
                    invalid("mesh.relay_listen", format!("{:?}: {e}", mesh.relay_listen))
                })?;
            if mesh.capacity == 0 {
                return Err(invalid("mesh.capacity", "must be at least 1"));
            }
        }
        if !mesh.relay_advertise.is_empty() && !mesh.relay_advertise.contains(':') {
            return Err(invalid("mesh.relay_advertise", "must be host:port"));
        }
        if mesh.zone.len() > 64 {
            return Err(invalid("mesh.zone", "at most 64 characters"));
        }
        if mesh.direct_to_sink_after_secs > 86_400 {
            return Err(invalid(
                "mesh.direct_to_sink_after_secs",
                "at most 86400 (a day); 0 turns it off",
            ));
        }
        Ok(())
    }

    /// The host id: configured, or the kernel hostname.
    pub fn resolve_host_id(&self) -> Result<String, ConfigError> {
        if let Some(h) = &self.host_id {
            return Ok(h.clone());
        }
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_err(|source| ConfigError::Read {
                path: "/proc/sys/kernel/hostname".into(),
                source,
            })?
            .trim()
            .to_owned();
        starling_proto::batch::check_host_id(&name).map_err(|e| {
            invalid(
                "host_id",
                format!("not set, and the hostname is not usable: {e}"),
            )
        })?;
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[uplink.sinks]]
address = "127.0.0.1:7400"
server_name = "sink-1"
"#;

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = NodeConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.spool.drop_policy, DropPolicy::DropOldest);
        assert!(c.sensor.enabled);
        assert_eq!(c.uplink.sinks.len(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        let e = NodeConfig::parse(&format!("{MINIMAL}\n[sensor]\nring_buffer_bytes = 5000\n"))
            .unwrap_err();
        assert!(e.to_string().starts_with("sensor.ring_buffer_bytes"), "{e}");
        let e = NodeConfig::parse("").unwrap_err();
        assert!(e.to_string().starts_with("uplink.sinks"), "{e}");
        let e = NodeConfig::parse(&format!("{MINIMAL}\n[mesh]\nenabled = true\n")).unwrap_err();
        assert!(e.to_string().starts_with("uplink.sinks"), "{e}");
        let e = NodeConfig::parse("[mesh]\nenabled = true\nbootstrap = [\"not an address\"]\n")
            .unwrap_err();
        assert!(e.to_string().starts_with("mesh.bootstrap"), "{e}");
        let c = NodeConfig::parse("[mesh]\nenabled = true\n").unwrap();
        assert!(c.mesh.aggregator && c.uplink.sinks.is_empty());
        assert_eq!(
            c.mesh.direct_to_sink_after(),
            Some(std::time::Duration::from_secs(30))
        );
        let c =
            NodeConfig::parse("[mesh]\nenabled = true\ndirect_to_sink_after_secs = 0\n").unwrap();
        assert_eq!(c.mesh.direct_to_sink_after(), None, "0 turns it off");
        let e = NodeConfig::parse("[mesh]\nenabled = true\ndirect_to_sink_after_secs = 90000\n")
            .unwrap_err();
        assert!(
            e.to_string().starts_with("mesh.direct_to_sink_after_secs"),
            "{e}"
        );
        let e = NodeConfig::parse(&format!(
            "{MINIMAL}\n[spool]\ndrop_policy = \"sometimes\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("drop_policy"), "{e}");
        let e = NodeConfig::parse(&format!("{MINIMAL}\nunknown_knob = 1\n")).unwrap_err();
        assert!(e.to_string().contains("unknown_knob"), "{e}");
    }

    #[test]
    fn sensor_filters_expand_homes_and_globs() {
        let c = NodeConfig::parse(&format!(
            "{MINIMAL}\n[sensor]\nwatch_paths = [\"/etc/cron*\", \"~/.ssh/\"]\n\
             disabled_kinds = [\"tcp_accept\"]\n\
             [sensor.rate_limits]\nprocess_exec = {{ per_second = 100 }}\n"
        ))
        .expect("valid");
        let homes = [PathBuf::from("/root"), PathBuf::from("/home/ann")];
        let f = c.sensor.filters(&homes, 42);
        assert_eq!(
            f.watched_paths,
            ["/etc/cron", "/home/ann/.ssh/", "/root/.ssh/"]
        );
        assert_eq!(f.own_pid, Some(42));
        assert_eq!(f.disabled_kinds, ["tcp_accept"]);
        assert_eq!(f.rate_limits[0].kind, "process_exec");
        assert_eq!(
            (f.rate_limits[0].per_second, f.rate_limits[0].burst),
            (100, 100)
        );
        assert!(home_directories("root:x:0:0::/root:/bin/sh\nbin:x:2:2::/:/bin/false\nno:x:3:3::/nonexistent-home:/bin/false\n")
            .contains(&PathBuf::from("/root")));
        assert_eq!(
            home_directories("bin:x:2:2::/:/bin/false\n"),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn unknown_kinds_and_relative_prefixes_are_refused() {
        let e = NodeConfig::parse(&format!(
            "{MINIMAL}\n[sensor]\ndisabled_kinds = [\"exec\"]\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("unknown event kind \"exec\""), "{e}");
        let e = NodeConfig::parse(&format!(
            "{MINIMAL}\n[sensor]\nwatch_paths = [\"etc/shadow\"]\n"
        ))
        .unwrap_err();
        assert!(e.to_string().starts_with("sensor.watch_paths"), "{e}");
        let e = NodeConfig::parse(&format!(
            "{MINIMAL}\n[sensor.rate_limits]\nfile_open = {{ per_second = 0 }}\n"
        ))
        .unwrap_err();
        assert!(e.to_string().starts_with("sensor.rate_limits"), "{e}");
    }
}
