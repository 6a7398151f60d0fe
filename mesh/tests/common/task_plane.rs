//! Members with a task plane on loopback, an operator with the fleet's
//! root, and how the tests hand tasks over and read states: shared by
//! the task plane's tests (tasks.rs) and the rollouts' (rollouts.rs);
//! other tests that include `common` use none of it (hence the
//! `allow(dead_code)` where it is declared).

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use starling_mesh::election::ElectionParams;
use starling_mesh::enrol::Enrolment;
use starling_mesh::identity::Role;
use starling_mesh::swarm::{
    ask_for_status, CellSettings, Mesh, MeshCommand, MeshConfig, MeshView, TaskPlaneStatus,
    TaskSettings, FORGER_HOLD, INBOX_DIR, TASK_STATUS_FILE,
};
use starling_proto::v1::config_setting::Setting;
use starling_proto::v1::task_payload::Body;
use starling_proto::v1::{
    ConfigSetting, FleetConfig, HostTags, SensorKindSwitch, TagChange, TargetSelector, TaskPayload,
};
use starling_task::root::new_root;
use starling_task::sign::{sign_root, sign_task, unsigned_root, unsigned_task};
use starling_task::OperatorKeyPair;
use tokio::sync::watch;

use super::Fleet;

pub struct Member {
    pub view: watch::Receiver<MeshView>,
    pub commands: tokio::sync::mpsc::Sender<MeshCommand>,
    pub stop: watch::Sender<bool>,
    pub state: PathBuf,
    /// The task plane's state changes (the node spools them as events).
    pub audit: tokio::sync::mpsc::Receiver<starling_proto::v1::TaskStateChange>,
}

/// The operator and the fleet's root, in a directory of their own.
pub struct Operator {
    pub key: OperatorKeyPair,
    pub root_file: PathBuf,
    pub _dir: tempfile::TempDir,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

impl Operator {
    pub fn new() -> Self {
        Self::with_seed(42)
    }

    /// An operator whose key is made from `seed`: another seed is a
    /// stranger to the fleet, with a root of its own for the same fleet.
    pub fn with_seed(seed: u8) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = OperatorKeyPair::from_seed([seed; 32]);
        let root = new_root(
            "test",
            1,
            now() + 86_400,
            &[(key.public_key(), "op".into())],
            1,
            1,
        )
        .expect("a valid root");
        let signed = sign_root(&unsigned_root(&root), &key).expect("signed root");
        let root_file = dir.path().join("root.bin");
        std::fs::write(&root_file, signed).expect("root written");
        Self {
            key,
            root_file,
            _dir: dir,
        }
    }

    pub fn task(&self, id: &str, target: TargetSelector, body: Body) -> Vec<u8> {
        let payload = TaskPayload {
            fleet: "test".into(),
            task_id: id.into(),
            not_before: now() - 60,
            not_after: now() + 3600,
            target: Some(target),
            reason: "test".into(),
            rollout: None,
            body: Some(body),
        };
        sign_task(&unsigned_task(&payload), &self.key).expect("signed task")
    }
}

pub fn every_host() -> TargetSelector {
    TargetSelector {
        all: true,
        ..Default::default()
    }
}

pub fn start(
    enrolment: Enrolment,
    bootstrap: Vec<Multiaddr>,
    op: &Operator,
    state: &Path,
    tags: &[&str],
    revocations: Option<PathBuf>,
) -> Member {
    start_in_cell_of(50, enrolment, bootstrap, op, state, tags, revocations)
}

/// [`start`] for a cell expected to hold `expected` members.
pub fn start_in_cell_of(
    expected: u32,
    enrolment: Enrolment,
    bootstrap: Vec<Multiaddr>,
    op: &Operator,
    state: &Path,
    tags: &[&str],
    revocations: Option<PathBuf>,
) -> Member {
    let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    let config = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("multiaddr")],
        bootstrap,
        cell: Some(CellSettings {
            zone: Some("test".into()),
            expected_size: expected,
            eligible: true,
            capacity: 100,
            relay: "127.0.0.1:1".into(),
            election: ElectionParams::default(),
            agent_version: "test".into(),
            tags: tags.clone(),
        }),
        revocations,
        tasks: Some(task_settings(op, state, tags)),
        ..Default::default()
    };
    run_member(enrolment, config, state)
}

/// The task plane of a member or sink of these tests.
pub fn task_settings(op: &Operator, state: &Path, local_tags: Vec<String>) -> TaskSettings {
    TaskSettings {
        root_file: op.root_file.clone(),
        state_dir: state.to_path_buf(),
        sync_interval: Duration::from_secs(2),
        local_tags,
        forger_hold: FORGER_HOLD,
    }
}

/// Starts a mesh with `config` and keeps what the tests drive it by.
pub fn run_member(enrolment: Enrolment, config: MeshConfig, state: &Path) -> Member {
    let (mut mesh, view, commands) = Mesh::start(enrolment, config).expect("mesh starts");
    let audit = mesh.take_task_events().expect("a task plane");
    let (stop, rx) = watch::channel(false);
    tokio::spawn(mesh.run(rx));
    Member {
        view,
        commands,
        stop,
        state: state.to_path_buf(),
        audit,
    }
}

/// A sink's mesh (no cell; it holds every cell's summary and answers
/// members' questions for the fleet's view), bootstrapping from
/// `bootstrap`, with its task plane in `state`.
pub fn start_sink(fleet: &Fleet, op: &Operator, state: &Path, bootstrap: Vec<Multiaddr>) -> Member {
    std::fs::create_dir_all(state).expect("sink state dir");
    let config = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("multiaddr")],
        bootstrap,
        sink_ingress: Some("127.0.0.1:1".into()),
        tasks: Some(task_settings(op, state, Vec::new())),
        ..Default::default()
    };
    run_member(fleet.enrol(Role::Sink, "sink"), config, state)
}

/// Starts members named `names`, each bootstrapping from the first, in a
/// cell expected to hold `expected`; member i has tags `tags_of(i)` and
/// its revocation list at `crl_of(name)`.
pub async fn start_group(
    fleet: &Fleet,
    op: &Operator,
    states: &Path,
    names: &[String],
    expected: u32,
    tags_of: impl Fn(usize) -> Vec<&'static str>,
    crl_of: impl Fn(&str) -> Option<PathBuf>,
) -> Vec<Member> {
    let mut members: Vec<Member> = Vec::new();
    let mut bootstrap = Vec::new();
    for (i, name) in names.iter().enumerate() {
        std::fs::create_dir_all(states.join(name)).expect("state dir");
        let mut member = start_in_cell_of(
            expected,
            fleet.enrol(Role::Node, name),
            bootstrap.clone(),
            op,
            &states.join(name),
            &tags_of(i),
            crl_of(name),
        );
        if i == 0 {
            bootstrap.push(listen_addr(&mut member).await);
        }
        members.push(member);
    }
    members
}

/// [`start_group`] of `n` members named `prefix0`, `prefix1`, ..., in a
/// cell expected to hold `expected`, without tags or revocation lists.
pub async fn start_plain(
    fleet: &Fleet,
    op: &Operator,
    states: &Path,
    prefix: &str,
    n: usize,
    expected: u32,
) -> Vec<Member> {
    let names = named(prefix, n, 1);
    start_group(fleet, op, states, &names, expected, |_| vec![], |_| None).await
}

pub fn named(prefix: &str, n: usize, width: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:0width$}")).collect()
}

/// A member's status, asked to be kept fresh (callers poll), as
/// `starlingctl task status` asks.
pub fn status(m: &Member) -> Option<TaskPlaneStatus> {
    let _ = ask_for_status(&m.state);
    status_unasked(m)
}

/// A member's status file as it stands, without asking for a fresh one.
pub fn status_unasked(m: &Member) -> Option<TaskPlaneStatus> {
    let bytes = std::fs::read(m.state.join(TASK_STATUS_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn state_of(m: &Member, task: &str) -> Option<String> {
    status(m)?
        .tasks
        .into_iter()
        .find(|t| t.task_id == task)
        .map(|t| t.state)
}

/// Hands a task to a member as `starlingctl task publish` does; returns
/// the member's verdict.
pub async fn publish(m: &Member, name: &str, signed: &[u8]) -> serde_json::Value {
    let inbox = m.state.join(INBOX_DIR);
    let tmp = inbox.join(format!("{name}.part"));
    std::fs::write(&tmp, signed).expect("inbox write");
    std::fs::rename(&tmp, inbox.join(format!("{name}.task"))).expect("inbox rename");
    let result = inbox.join(format!("{name}.result"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(bytes) = std::fs::read(&result) {
            return serde_json::from_slice(&bytes).expect("result is JSON");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no result for {name}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until `ok` holds for every member, or panics naming the first
/// that it does not hold for.
pub async fn wait_all(members: &[Member], what: &str, secs: u64, ok: impl Fn(&Member) -> bool) {
    wait_each(members, what, secs, |_, m| ok(m)).await
}

/// [`wait_all`] with each member's index, for conditions that depend on
/// which member it is.
pub async fn wait_each(
    members: &[Member],
    what: &str,
    secs: u64,
    ok: impl Fn(usize, &Member) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let missing: Vec<usize> = (0..members.len())
            .filter(|i| !ok(*i, &members[*i]))
            .collect();
        if missing.is_empty() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}: {} members not there (first: {:?})",
                missing.len(),
                status(&members[missing[0]])
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn listen_addr(member: &mut Member) -> Multiaddr {
    member
        .view
        .wait_for(|v| !v.listen_addrs.is_empty())
        .await
        .expect("listening")
        .listen_addrs[0]
        .clone()
}

/// A task body setting `tag` (generation 1).
pub fn set_tag(tag: &str) -> Body {
    Body::Tags(HostTags {
        changes: vec![TagChange {
            tag: tag.into(),
            generation: 1,
            remove: false,
        }],
    })
}

pub fn dns_off() -> Body {
    Body::Config(FleetConfig {
        settings: vec![ConfigSetting {
            generation: 1,
            reset: false,
            setting: Some(Setting::SensorKind(SensorKindSwitch {
                kind: "dns_query".into(),
                enabled: false,
            })),
        }],
    })
}
