//! A fleet operator for tests and benchmarks of the task plane: one key,
//! the fleet's trust root, and each member's task state directory, with
//! what `starlingctl task publish` and `task list` do (the inbox, the
//! status file).

use std::path::{Path, PathBuf};
use std::time::Duration;

use starling_mesh::swarm::{
    ask_for_status, TaskPlaneStatus, TaskSettings, INBOX_DIR, TASK_STATUS_FILE,
};
use starling_proto::v1::{task_payload::Body, HostTags, TagChange, TargetSelector, TaskPayload};
use starling_task::sign::{sign_root, sign_task, unsigned_root, unsigned_task};
use starling_task::OperatorKeyPair;

/// The fleet's only operator, its root, and where members keep state.
pub struct Operator {
    key: OperatorKeyPair,
    root_file: PathBuf,
    states: PathBuf,
    fleet: String,
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Operator {
    /// A new key and a root of fleet `fleet` (valid a day) under `dir`.
    pub fn new(dir: &Path, fleet: &str) -> anyhow::Result<Self> {
        let key = OperatorKeyPair::generate()?;
        let root = starling_task::root::new_root(
            fleet,
            1,
            unix_secs() + 86_400,
            &[(key.public_key(), "operator".into())],
            1,
            1,
        )
        .map_err(anyhow::Error::msg)?;
        let root_file = dir.join("root.bin");
        std::fs::write(&root_file, sign_root(&unsigned_root(&root), &key)?)?;
        Ok(Self {
            key,
            root_file,
            states: dir.join("tasks"),
            fleet: fleet.into(),
        })
    }

    /// The task plane's settings of member `host` (anti-entropy every
    /// `sync`).
    pub fn settings(&self, host: &str, sync: Duration) -> TaskSettings {
        TaskSettings {
            root_file: self.root_file.clone(),
            state_dir: self.states.join(host),
            sync_interval: sync,
            local_tags: Vec::new(),
            forger_hold: starling_mesh::swarm::FORGER_HOLD,
        }
    }

    /// A signed task setting tag `tag` on every member.
    pub fn tag_task(&self, id: &str, tag: &str) -> anyhow::Result<Vec<u8>> {
        let payload = TaskPayload {
            fleet: self.fleet.clone(),
            task_id: id.into(),
            not_before: unix_secs() - 60,
            not_after: unix_secs() + 3600,
            target: Some(TargetSelector {
                all: true,
                ..Default::default()
            }),
            reason: "test".into(),
            rollout: None,
            body: Some(Body::Tags(HostTags {
                changes: vec![TagChange {
                    tag: tag.into(),
                    generation: 1,
                    remove: false,
                }],
            })),
        };
        Ok(sign_task(&unsigned_task(&payload), &self.key)?)
    }

    /// Hands a task to `host`'s task plane, as `starlingctl task publish`.
    pub fn publish(&self, host: &str, name: &str, signed: &[u8]) -> anyhow::Result<()> {
        let inbox = self.states.join(host).join(INBOX_DIR);
        let tmp = inbox.join(format!("{name}.part"));
        std::fs::write(&tmp, signed)?;
        std::fs::rename(&tmp, inbox.join(format!("{name}.task")))?;
        Ok(())
    }

    /// `host`'s task plane status, once written; asks for it to be kept
    /// fresh, as `starlingctl task status` does (callers poll).
    pub fn status(&self, host: &str) -> Option<TaskPlaneStatus> {
        let dir = self.states.join(host);
        let _ = ask_for_status(&dir);
        serde_json::from_slice(&std::fs::read(dir.join(TASK_STATUS_FILE)).ok()?).ok()
    }

    /// The state of task `id` at `host`, if it holds it.
    pub fn state(&self, host: &str, id: &str) -> Option<String> {
        self.status(host)?
            .tasks
            .into_iter()
            .find(|t| t.task_id == id)
            .map(|t| t.state)
    }
}
