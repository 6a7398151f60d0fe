//! `starling-sink` configuration (docs/configuration.md documents every
//! field). Without a `[kafka]` section the sink writes to its embedded local
//! store, which `starlingctl events tail` reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use starling_mesh::identity::TlsFiles;

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

/// The whole sink configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// host:port of the QUIC listener (UDP).
    pub listen: String,
    /// Directory of the local store (used when `[kafka]` is absent).
    pub data_dir: PathBuf,
    pub tls: TlsSection,
    /// Deliver to Kafka. Absent: write to the embedded local store.
    pub kafka: Option<KafkaSection>,
    pub local_store: LocalStoreSection,
    pub limits: LimitsSection,
    pub origin: OriginSection,
    pub mesh: MeshSection,
    /// The task plane (docs/tasks.md): with the mesh on and the trust root
    /// installed, the sink takes the fleet's revocation lists and root
    /// rotations from it (it applies no sensor settings).
    pub tasks: starling_mesh::swarm::TasksConfig,
    pub metrics: MetricsSection,
}

/// How the sink checks that the host a batch names signed it
/// (docs/mesh.md, "Data-plane trust").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginSection {
    /// A batch signed longer ago than this, or this far ahead of the
    /// sink's clock, is refused (REJECT_CLOCK; the node corrects its clock
    /// from the receipt and signs again). Persisted batches are remembered
    /// for at least this long, so a replay within it is recognised.
    pub max_batch_age_secs: u64,
    /// Most persisted batches remembered to recognise replays (about 40
    /// bytes each).
    pub replay_window_batches: usize,
    /// Host certificates remembered once verified (per generation of two).
    pub credential_cache: usize,
}

impl Default for OriginSection {
    fn default() -> Self {
        Self {
            max_batch_age_secs: 600,
            replay_window_batches: 1_000_000,
            credential_cache: starling_mesh::origin::DEFAULT_CREDENTIAL_CACHE,
        }
    }
}

/// Mesh membership: the sink announces itself so aggregators find it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSection {
    /// Join the mesh and advertise this sink.
    pub enabled: bool,
    /// libp2p listen multiaddrs.
    pub listen: Vec<String>,
    /// Multiaddrs of mesh members to dial at start.
    pub bootstrap: Vec<String>,
    /// host:port aggregators dial to reach the ingress; default: `listen`,
    /// with an unspecified IP replaced by this host's primary address.
    pub ingress_advertise: String,
}

impl Default for MeshSection {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: vec!["/ip4/0.0.0.0/udp/7401/quic-v1".into()],
            bootstrap: Vec::new(),
            ingress_advertise: String::new(),
        }
    }
}

/// Certificate files issued by `starlingctl cert issue --role sink`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The fleet's revocation list (`starlingctl cert revoke`); default:
    /// `crl.pem` beside `ca_cert`. Absent file: nothing is revoked.
    pub revocations: Option<PathBuf>,
}

/// Kafka producer settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap servers, comma-separated host:port.
    pub brokers: String,
    /// Topic that receives one message per event.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Create the topic at start if it does not exist.
    #[serde(default = "yes")]
    pub create_topic: bool,
    /// Partitions of a topic the sink creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of a topic the sink creates.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// How long the producer keeps trying one message before the batch is
    /// answered RETRY (the node then sends it again).
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout_ms: u32,
    /// Also write the event's kind, sequence number, host and schema in
    /// every message's headers (`starling-kind`, `starling-seq`,
    /// `starling-host`, `starling-schema`), for consumers that route or
    /// deduplicate without decoding the event; off by default, as they
    /// cost the sink 15-50 % more CPU per event and the broker about 100
    /// bytes per message (docs/decisions.md, "Kafka").
    #[serde(default)]
    pub routing_headers: bool,
    /// Also write the origin's signed header, signature and certificate in
    /// every message's headers, so consumers can check the signature
    /// themselves (docs/events.md, "Checking the origin").
    #[serde(default)]
    pub origin_proof: bool,
    /// Extra librdkafka properties (security.protocol, sasl.*, ssl.*, ...).
    /// `enable.idempotence` and `acks` cannot be weakened here.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Embedded local store settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalStoreSection {
    /// Most events kept; the oldest are deleted beyond this.
    pub max_events: u64,
}

/// Resource limits of the ingress.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// Most concurrent batches (streams) per connection.
    pub max_streams_per_connection: u32,
}

/// Prometheus exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// host:port for the /metrics endpoint; empty disables it.
    pub listen: String,
}

fn default_topic() -> String {
    "starling.events".into()
}
fn yes() -> bool {
    true
}
fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    1
}
fn default_delivery_timeout() -> u32 {
    30_000
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:7400".into(),
            data_dir: "/var/lib/starling/sink".into(),
            tls: TlsSection::default(),
            kafka: None,
            local_store: LocalStoreSection::default(),
            limits: LimitsSection::default(),
            origin: OriginSection::default(),
            mesh: MeshSection::default(),
            tasks: Default::default(),
            metrics: MetricsSection::default(),
        }
    }
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            ca_cert: "/etc/starling/pki/ca.pem".into(),
            cert: "/etc/starling/pki/sink.pem".into(),
            key: "/etc/starling/pki/sink.key".into(),
            revocations: None,
        }
    }
}

impl Default for LocalStoreSection {
    fn default() -> Self {
        Self {
            max_events: 1_000_000,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_streams_per_connection: 64,
        }
    }
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9465".into(),
        }
    }
}

impl TlsSection {
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

/// librdkafka properties that would break the durability contract.
const PROTECTED: &[&str] = &[
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "bootstrap.servers",
];

impl SinkConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.into(),
                message,
            },
            other => other,
        })
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
        self.tasks
            .validate()
            .map_err(|(field, reason)| invalid(field, reason))?;
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "listen",
                format!("{:?} is not ip:port", self.listen),
            ));
        }
        if let Some(k) = &self.kafka {
            if k.brokers.trim().is_empty() {
                return Err(invalid("kafka.brokers", "must not be empty"));
            }
            if k.topic.is_empty() || k.topic.len() > 249 {
                return Err(invalid("kafka.topic", "must be 1 to 249 characters"));
            }
            if k.partitions < 1 {
                return Err(invalid("kafka.partitions", "must be at least 1"));
            }
            if k.replication_factor < 1 {
                return Err(invalid("kafka.replication_factor", "must be at least 1"));
            }
            if k.delivery_timeout_ms < 1000 {
                return Err(invalid(
                    "kafka.delivery_timeout_ms",
                    "must be at least 1000",
                ));
            }
            for key in k.properties.keys() {
                if PROTECTED.contains(&key.as_str()) {
                    return Err(invalid(
                        "kafka.properties",
                        format!("{key} is set by the sink (idempotent, acks=all) and cannot be overridden"),
                    ));
                }
            }
        }
        if self.local_store.max_events < 1000 {
            return Err(invalid("local_store.max_events", "must be at least 1000"));
        }
        if self.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if !(1..=1024).contains(&self.limits.max_streams_per_connection) {
            return Err(invalid(
                "limits.max_streams_per_connection",
                "must be between 1 and 1024",
            ));
        }
        if !(10..=86_400).contains(&self.origin.max_batch_age_secs) {
            return Err(invalid(
                "origin.max_batch_age_secs",
                "must be between 10 and 86400",
            ));
        }
        if self.origin.replay_window_batches < 1000 {
            return Err(invalid(
                "origin.replay_window_batches",
                "must be at least 1000",
            ));
        }
        if self.origin.credential_cache == 0 {
            return Err(invalid("origin.credential_cache", "must be at least 1"));
        }
        if self.mesh.enabled {
            for (field, list) in [
                ("mesh.listen", &self.mesh.listen),
                ("mesh.bootstrap", &self.mesh.bootstrap),
            ] {
                for a in list {
                    a.parse::<starling_mesh::Multiaddr>()
                        .map_err(|e| invalid(field, format!("{a:?}: {e}")))?;
                }
            }
            if self.mesh.listen.is_empty() {
                return Err(invalid("mesh.listen", "at least one address is needed"));
            }
            if !self.mesh.ingress_advertise.is_empty() && !self.mesh.ingress_advertise.contains(':')
            {
                return Err(invalid("mesh.ingress_advertise", "must be host:port"));
            }
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "metrics.listen",
                format!("{:?} is not ip:port", self.metrics.listen),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_uses_the_local_store() {
        let c = SinkConfig::parse("").unwrap();
        assert!(c.kafka.is_none());
        assert_eq!(c.listen, "0.0.0.0:7400");
    }

    #[test]
    fn kafka_defaults_and_protected_properties() {
        let c = SinkConfig::parse("[kafka]\nbrokers = \"k:9092\"\n").unwrap();
        let k = c.kafka.unwrap();
        assert_eq!(k.topic, "starling.events");
        let e =
            SinkConfig::parse("[kafka]\nbrokers = \"k:9092\"\n[kafka.properties]\nacks = \"1\"\n")
                .unwrap_err();
        assert!(e.to_string().starts_with("kafka.properties"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = SinkConfig::parse("listen = \"nowhere\"").unwrap_err();
        assert!(e.to_string().starts_with("listen"), "{e}");
        let e = SinkConfig::parse("[limits]\nmax_streams_per_connection = 0\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("limits.max_streams_per_connection"),
            "{e}"
        );
    }
}
