//! How a daemon (node or sink) configures its task plane: the `[tasks]`
//! section and the settings the driver runs with (docs/tasks.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// How a member takes part in the task plane.
#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// The trust root installed with the host (`starlingctl root init`).
    pub root_file: PathBuf,
    /// Where the plane keeps its ledger, the root in force, the operator's
    /// inbox and its status.
    pub state_dir: PathBuf,
    /// How often it compares notes with one peer.
    pub sync_interval: Duration,
    /// Tags from the host's own configuration.
    pub local_tags: Vec<String>,
    /// How long a peer that relayed forgeries is held off
    /// ([`super::FORGER_HOLD`] unless a test needs it shorter).
    pub forger_hold: Duration,
}

/// The `[tasks]` section of a daemon's configuration (node and sink).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// The fleet's trust root (`starlingctl root init`); default: root.bin
    /// beside the CA certificate. Without the file the task plane is off.
    pub root: Option<PathBuf>,
    /// Seconds between anti-entropy exchanges with one peer.
    pub sync_interval_secs: u64,
    /// This host's own tags (tasks can target them; the fleet's tag tasks
    /// add to them and can remove them).
    pub tags: Vec<String>,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            root: None,
            sync_interval_secs: 10,
            tags: Vec::new(),
        }
    }
}

impl TasksConfig {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.sync_interval_secs == 0 || self.sync_interval_secs > 3600 {
            return Err((
                "tasks.sync_interval_secs",
                format!("{} (1 to 3600)", self.sync_interval_secs),
            ));
        }
        if let Some(t) = self.tags.iter().find(|t| t.is_empty() || t.len() > 128) {
            return Err(("tasks.tags", format!("{t:?}: 1 to 128 bytes")));
        }
        Ok(())
    }

    /// Where the trust root is read from.
    pub fn root_file(&self, ca_cert: &Path) -> PathBuf {
        self.root.clone().unwrap_or_else(|| {
            ca_cert
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("root.bin")
        })
    }

    /// The task plane's settings for a daemon whose state lives under
    /// `data_dir`, or None (with a warning) when no trust root is
    /// installed.
    pub fn settings(&self, ca_cert: &Path, data_dir: &Path) -> Option<TaskSettings> {
        let root_file = self.root_file(ca_cert);
        if !root_file.exists() {
            tracing::warn!(root = %root_file.display(), "task plane off: no trust root (create one with `starlingctl root init` and install it beside ca.pem)");
            return None;
        }
        Some(TaskSettings {
            root_file,
            state_dir: task_state_dir(data_dir),
            sync_interval: Duration::from_secs(self.sync_interval_secs),
            local_tags: self.tags.clone(),
            forger_hold: super::FORGER_HOLD,
        })
    }
}

/// Where a daemon keeps its task plane's state.
pub fn task_state_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tasks")
}
