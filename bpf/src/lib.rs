//! Starling's sensor: C kernel programs (CO-RE, compiled by build.rs with
//! clang and embedded here), loaded and attached with aya, read from a BPF
//! ring buffer and decoded into proto events.
//!
//! The kernel side never waits for userspace: when the ring buffer is full
//! the program drops the record and counts it in the `drops` map (by reason
//! and kind), which [`Sensor::drop_counts`] reads so the node can report
//! every loss. What is reported is filtered in the kernel, from settings
//! the node can replace at runtime ([`SensorFilters`]).

pub mod cgroup;
pub mod raw;

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use starling_proto::v1::{
    event::Body, BpfProgramLoad, Credentials, DevFileWrite, Event, EventHeader, FileChmod,
    FileOpen, FileRename, FileUnlink, MemfdCreate, PrivilegeChange, ProcessExec, ProcessExit,
    ProcessFork, Ptrace, SocketEndpoint, TcpAccept, TcpConnect, TcpListen,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub use raw::{
    decode, kind_name, kind_number, BpfLoadRecord, CredOp, CredRecord, ExecRecord, ExitRecord,
    FileOp, FileRecord, ForkRecord, Ids, MemfdRecord, PtraceRecord, RawError, RawRecord,
    RecordHeader, TcpOp, TcpRecord, KINDS, KIND_NAMES,
};

/// The sensor's object, built from c/sensor.bpf.c.
static SENSOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor.bpf.o"));

/// Where a program attaches: a tracepoint, and whether the sensor can run
/// without it (tracepoints of syscalls that older kernels lack).
struct Attachment {
    program: &'static str,
    category: &'static str,
    name: &'static str,
    optional: bool,
}

const fn at(program: &'static str, category: &'static str, name: &'static str) -> Attachment {
    Attachment {
        program,
        category,
        name,
        optional: false,
    }
}

const fn optional(program: &'static str, category: &'static str, name: &'static str) -> Attachment {
    Attachment {
        program,
        category,
        name,
        optional: true,
    }
}

/// Every attachment of every program in the object. A program listed more
/// than once is loaded once and attached to each tracepoint. docs/sensor.md
/// says why each hook was chosen.
const ATTACHMENTS: &[Attachment] = &[
    at("starling_exec", "sched", "sched_process_exec"),
    at("starling_fork", "task", "task_newtask"),
    at("starling_exit", "sched", "sched_process_exit"),
    at("starling_tcp_state", "sock", "inet_sock_set_state"),
    at("starling_accept_exit", "syscalls", "sys_exit_accept"),
    at("starling_accept_exit", "syscalls", "sys_exit_accept4"),
    at("starling_open_exit", "syscalls", "sys_exit_openat"),
    optional("starling_open_exit", "syscalls", "sys_exit_open"),
    optional("starling_open_exit", "syscalls", "sys_exit_creat"),
    optional("starling_open_exit", "syscalls", "sys_exit_openat2"),
    optional(
        "starling_open_exit",
        "syscalls",
        "sys_exit_open_by_handle_at",
    ),
    optional("starling_enter_unlink", "syscalls", "sys_enter_unlink"),
    at("starling_enter_unlinkat", "syscalls", "sys_enter_unlinkat"),
    optional("starling_enter_rename", "syscalls", "sys_enter_rename"),
    optional("starling_enter_renameat", "syscalls", "sys_enter_renameat"),
    at(
        "starling_enter_renameat2",
        "syscalls",
        "sys_enter_renameat2",
    ),
    optional("starling_enter_chmod", "syscalls", "sys_enter_chmod"),
    at("starling_enter_fchmod", "syscalls", "sys_enter_fchmod"),
    at("starling_enter_fchmodat", "syscalls", "sys_enter_fchmodat"),
    optional(
        "starling_enter_fchmodat2",
        "syscalls",
        "sys_enter_fchmodat2",
    ),
    optional("starling_file_exit", "syscalls", "sys_exit_unlink"),
    at("starling_file_exit", "syscalls", "sys_exit_unlinkat"),
    optional("starling_file_exit", "syscalls", "sys_exit_rename"),
    optional("starling_file_exit", "syscalls", "sys_exit_renameat"),
    at("starling_file_exit", "syscalls", "sys_exit_renameat2"),
    optional("starling_file_exit", "syscalls", "sys_exit_chmod"),
    at("starling_file_exit", "syscalls", "sys_exit_fchmod"),
    at("starling_file_exit", "syscalls", "sys_exit_fchmodat"),
    optional("starling_file_exit", "syscalls", "sys_exit_fchmodat2"),
    at("starling_enter_setuid", "syscalls", "sys_enter_setuid"),
    at("starling_enter_setreuid", "syscalls", "sys_enter_setreuid"),
    at(
        "starling_enter_setresuid",
        "syscalls",
        "sys_enter_setresuid",
    ),
    at("starling_enter_setgid", "syscalls", "sys_enter_setgid"),
    at("starling_enter_setregid", "syscalls", "sys_enter_setregid"),
    at(
        "starling_enter_setresgid",
        "syscalls",
        "sys_enter_setresgid",
    ),
    at("starling_enter_capset", "syscalls", "sys_enter_capset"),
    at("starling_cred_exit", "syscalls", "sys_exit_setuid"),
    at("starling_cred_exit", "syscalls", "sys_exit_setreuid"),
    at("starling_cred_exit", "syscalls", "sys_exit_setresuid"),
    at("starling_cred_exit", "syscalls", "sys_exit_setgid"),
    at("starling_cred_exit", "syscalls", "sys_exit_setregid"),
    at("starling_cred_exit", "syscalls", "sys_exit_setresgid"),
    at("starling_cred_exit", "syscalls", "sys_exit_capset"),
    at("starling_enter_ptrace", "syscalls", "sys_enter_ptrace"),
    at(
        "starling_enter_memfd_create",
        "syscalls",
        "sys_enter_memfd_create",
    ),
    at("starling_enter_bpf", "syscalls", "sys_enter_bpf"),
    at("starling_tamper_exit", "syscalls", "sys_exit_ptrace"),
    at("starling_tamper_exit", "syscalls", "sys_exit_memfd_create"),
    at("starling_tamper_exit", "syscalls", "sys_exit_bpf"),
];

/// Most bytes the kernel lets wait in the ring buffer before it wakes
/// the reader.
const MAX_WAKEUP_BYTES: u32 = 256 * 1024;
/// How often the reader looks at the ring buffer without a wakeup: the
/// most a record waits when records come slower than a wakeup's worth.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Bytes of a path prefix the kernel matches (its LPM trie key).
pub const PREFIX_MAX: usize = 256;
/// Most watched (and most quiet) path prefixes (the tries' sizes).
pub const PREFIXES_MAX: usize = 1024;
/// Most allow-listed executables and cgroups (the hash maps' sizes).
pub const QUIET_MAX: usize = 1024;

/// Why a record was dropped in the kernel (enum starling_drop_reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The ring buffer was full: userspace fell behind. A loss.
    RingBufferFull = 0,
    /// Over its kind's configured rate. A loss by configuration.
    RateLimited = 1,
    /// The node's own activity or an allow-list: not wanted.
    Filtered = 2,
}

impl DropReason {
    /// Every reason, in the kernel's slot order.
    pub const ALL: [DropReason; 3] = [Self::RingBufferFull, Self::RateLimited, Self::Filtered];

    /// The reason's name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::RingBufferFull => "ring_buffer_full",
            Self::RateLimited => "rate_limited",
            Self::Filtered => "filtered",
        }
    }
}

/// How often one kernel program ran and for how long in total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub program: &'static str,
    pub run_count: u64,
    pub run_time: std::time::Duration,
}

/// Records dropped in the kernel since load, by reason and kind (index:
/// the kind number of [`KIND_NAMES`]), summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub counts: [[u64; KINDS]; 3],
}

impl DropCounts {
    /// Records of `kind` dropped for `reason`.
    pub fn get(&self, reason: DropReason, kind: u32) -> u64 {
        self.counts[reason as usize]
            .get(kind as usize)
            .copied()
            .unwrap_or(0)
    }

    /// All records dropped for `reason`.
    pub fn total(&self, reason: DropReason) -> u64 {
        self.counts[reason as usize].iter().sum()
    }
}

/// A rate limit for one kind of record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// A kind name of [`KIND_NAMES`].
    pub kind: String,
    /// Records per second allowed on the host, split evenly across CPUs.
    pub per_second: u64,
    /// Records allowed at once after a quiet spell, across CPUs.
    pub burst: u64,
}

/// What the kernel reports and what it leaves out. Set at load and
/// replaceable at runtime with [`Sensor::apply_filters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SensorFilters {
    /// Records caused by this process (the node itself) are not made.
    pub own_pid: Option<u32>,
    /// Kinds not reported (names of [`KIND_NAMES`]).
    pub disabled_kinds: Vec<String>,
    /// Path prefixes whose opens, renames and unlinks are reported (plain
    /// string prefixes: "/etc/cron" covers /etc/crontab and /etc/cron.d/).
    pub watched_paths: Vec<String>,
    /// Prefixes under the watched ones that are not reported.
    pub quiet_paths: Vec<String>,
    /// Executables whose processes are not reported (matched by inode).
    pub quiet_exes: Vec<PathBuf>,
    /// cgroup directories (paths in the cgroup2 hierarchy, such as
    /// "/system.slice/backup.service") whose processes are not reported.
    pub quiet_cgroups: Vec<String>,
    pub rate_limits: Vec<RateLimit>,
}

/// The kernel's settings record (struct starling_settings in events.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SettingsValue {
    own_tgid: u32,
    kinds_off: u32,
    quiet_cgroups: u32,
    quiet_exes: u32,
    quiet_paths: u32,
    wakeup_bytes: u32,
    cost_ns: [u64; KINDS],
    burst_ns: [u64; KINDS],
}

// SAFETY: repr(C), only integers, no padding the kernel could misread.
unsafe impl aya::Pod for SettingsValue {}

/// An allow-listed executable (struct starling_exe_key).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ExeKey {
    ino: u64,
    dev: u32,
    _pad: u32,
}

// SAFETY: repr(C), only integers.
unsafe impl aya::Pod for ExeKey {}

/// Why the sensor could not start. Each variant says which step failed so
/// the node can report exactly why it runs sensor-degraded.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("ring buffer size {0} must be a power of two and at least 4096 bytes")]
    BadRingBufferSize(u32),
    #[error("loading the BPF object failed (kernel BTF at /sys/kernel/btf/vmlinux and CAP_BPF/root are needed): {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {map}: {detail}")]
    Map { map: &'static str, detail: String },
    #[error("ring buffer poll registration failed: {0}")]
    Poll(#[source] io::Error),
    #[error("sensor filter: {0}")]
    Filter(String),
}

/// Sensor settings taken from the node's config.
#[derive(Debug, Clone)]
pub struct SensorConfig {
    /// Ring-buffer size in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    pub filters: SensorFilters,
}

impl Default for SensorConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 8 * 1024 * 1024,
            filters: SensorFilters::default(),
        }
    }
}

/// The loaded and attached kernel programs and the ring buffer they feed.
/// Dropping it detaches the programs.
pub struct Sensor {
    ring: AsyncFd<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
    /// Tracepoints of optional attachments this kernel does not have.
    missing: Vec<String>,
    /// Bytes waiting in the ring buffer before the kernel wakes the reader.
    wakeup_bytes: u32,
    // Keeps the programs loaded and attached, and the filter maps.
    bpf: Ebpf,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> SensorError {
    move |e| SensorError::Map {
        map,
        detail: e.to_string(),
    }
}

impl Sensor {
    /// Loads and attaches every program. Needs root (or CAP_BPF and
    /// CAP_PERFMON) and kernel BTF.
    pub fn load(config: &SensorConfig) -> Result<Self, SensorError> {
        let size = config.ring_buffer_bytes;
        if !size.is_power_of_two() || size < 4096 {
            return Err(SensorError::BadRingBufferSize(size));
        }
        // Bad filters are refused before anything is loaded.
        let (filters, warnings) = CompiledFilters::new(&config.filters)?;
        raise_memlock_limit();
        ensure_tracefs();
        let mut bpf = EbpfLoader::new()
            .set_max_entries("events", size)
            .load(SENSOR_OBJECT)
            .map_err(|e| SensorError::Load(Box::new(e)))?;

        let mut loaded = HashSet::new();
        let mut missing = Vec::new();
        for a in ATTACHMENTS {
            let program = a.program;
            let prog_err = |e| SensorError::Program {
                program,
                source: Box::new(e),
            };
            let tp: &mut TracePoint = bpf
                .program_mut(program)
                .ok_or(SensorError::Map {
                    map: program,
                    detail: "program missing from the object".into(),
                })?
                .try_into()
                .map_err(prog_err)?;
            if loaded.insert(program) {
                tp.load().map_err(prog_err)?;
            }
            if let Err(e) = tp.attach(a.category, a.name) {
                if !a.optional {
                    return Err(prog_err(e));
                }
                tracing::info!(
                    tracepoint = %format!("{}/{}", a.category, a.name),
                    "optional tracepoint not available on this kernel: {e}"
                );
                missing.push(format!("{}/{}", a.category, a.name));
            }
        }

        let ring_map = bpf.take_map("events").ok_or(SensorError::Map {
            map: "events",
            detail: "missing from the object".into(),
        })?;
        let ring = RingBuf::try_from(ring_map).map_err(|e| SensorError::Map {
            map: "events",
            detail: e.to_string(),
        })?;
        let drop_map = bpf.take_map("drops").ok_or(SensorError::Map {
            map: "drops",
            detail: "missing from the object".into(),
        })?;
        let drops = PerCpuArray::try_from(drop_map).map_err(map_err("drops"))?;
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // for as long as the AsyncFd that owns the RingBuf exists.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| SensorError::Poll(e.into()))?;
        let mut sensor = Self {
            ring,
            drops,
            missing,
            // An eighth of the ring: a wakeup per batch, with room left for
            // the bursts that come while the reader wakes.
            wakeup_bytes: (size / 8).min(MAX_WAKEUP_BYTES),
            bpf,
        };
        sensor.install(&filters)?;
        for warning in warnings {
            tracing::warn!("sensor filter: {warning}");
        }
        Ok(sensor)
    }

    /// Tracepoints of optional hooks this kernel lacks (their events are
    /// still seen through the other hooks of the same kind where any).
    pub fn missing_tracepoints(&self) -> &[String] {
        &self.missing
    }

    /// Replaces what the kernel reports and leaves out. Unknown kinds and
    /// unusable prefixes are errors (nothing is changed); executables and
    /// cgroups that do not exist are skipped and returned as warnings.
    pub fn apply_filters(&mut self, f: &SensorFilters) -> Result<Vec<String>, SensorError> {
        let (compiled, warnings) = CompiledFilters::new(f)?;
        self.install(&compiled)?;
        Ok(warnings)
    }

    fn install(&mut self, c: &CompiledFilters) -> Result<(), SensorError> {
        let (mut value, watched, quiet, exes, cgroups) =
            (c.value, &c.watched, &c.quiet, &c.exes, &c.cgroups);
        value.wakeup_bytes = self.wakeup_bytes;
        replace_prefixes(&mut self.bpf, "watched_paths", watched)?;
        replace_prefixes(&mut self.bpf, "quiet_paths", quiet)?;
        replace_hash_keys(&mut self.bpf, "quiet_exes", exes)?;
        replace_hash_keys(&mut self.bpf, "quiet_cgroups", cgroups)?;
        let mut settings: Array<_, SettingsValue> =
            Array::try_from(self.bpf.map_mut("settings").ok_or(SensorError::Map {
                map: "settings",
                detail: "missing from the object".into(),
            })?)
            .map_err(map_err("settings"))?;
        settings.set(0, value, 0).map_err(map_err("settings"))?;
        Ok(())
    }

    /// Waits until records are available, then appends up to `max` of them
    /// (decoded, or the decoding error) to `out`.
    pub async fn read(
        &mut self,
        max: usize,
        out: &mut Vec<Result<RawRecord, RawError>>,
    ) -> io::Result<()> {
        let start = out.len();
        loop {
            // The kernel wakes the reader once a batch waits; slower
            // records are picked up by the poll.
            match tokio::time::timeout(POLL_INTERVAL, self.ring.readable_mut()).await {
                Ok(guard) => {
                    let mut guard = guard?;
                    let ring = guard.get_inner_mut();
                    while out.len() - start < max {
                        match ring.next() {
                            Some(item) => out.push(decode(&item)),
                            None => break,
                        }
                    }
                    if out.len() - start < max {
                        // Drained: wait for the next wakeup.
                        guard.clear_ready();
                    }
                }
                Err(_) => self.read_available(max, out),
            }
            if out.len() > start {
                return Ok(());
            }
        }
    }

    /// Appends up to `max` records that are in the ring buffer now, without
    /// waiting (used at shutdown so nothing already captured is lost).
    pub fn read_available(&mut self, max: usize, out: &mut Vec<Result<RawRecord, RawError>>) {
        let ring = self.ring.get_mut();
        for _ in 0..max {
            match ring.next() {
                Some(item) => out.push(decode(&item)),
                None => break,
            }
        }
    }

    /// Run count and total run time of each program, from the kernel's
    /// BPF statistics. They count only while statistics are enabled
    /// (`aya::sys::enable_stats`, or the `kernel.bpf_stats_enabled`
    /// sysctl), which costs a little per run: benchmarks turn them on.
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, SensorError> {
        let mut out: Vec<ProgramStats> = Vec::new();
        for a in ATTACHMENTS {
            if out.iter().any(|p| p.program == a.program) {
                continue;
            }
            let Some(program) = self.bpf.program(a.program) else {
                continue;
            };
            let info = program.info().map_err(|e| SensorError::Program {
                program: a.program,
                source: Box::new(e),
            })?;
            out.push(ProgramStats {
                program: a.program,
                run_count: info.run_count(),
                run_time: info.run_time(),
            });
        }
        Ok(out)
    }

    /// Records the kernel dropped since the sensor was loaded, by reason
    /// and kind, summed over CPUs.
    pub fn drop_counts(&self) -> Result<DropCounts, SensorError> {
        let mut out = DropCounts::default();
        for reason in DropReason::ALL {
            for kind in 0..KINDS {
                let slot = (reason as usize * KINDS + kind) as u32;
                let values = self.drops.get(&slot, 0).map_err(map_err("drops"))?;
                out.counts[reason as usize][kind] = values.iter().sum();
            }
        }
        Ok(out)
    }
}

/// Filters checked and resolved (kinds to numbers, paths to inodes and
/// cgroup ids), ready to be written into the kernel's maps.
struct CompiledFilters {
    value: SettingsValue,
    watched: Vec<Key<[u8; PREFIX_MAX]>>,
    quiet: Vec<Key<[u8; PREFIX_MAX]>>,
    exes: Vec<ExeKey>,
    cgroups: Vec<u64>,
}

impl CompiledFilters {
    /// Checks `f` and resolves it; the warnings name what was skipped.
    fn new(f: &SensorFilters) -> Result<(Self, Vec<String>), SensorError> {
        let mut warnings = Vec::new();
        let mut value = SettingsValue {
            own_tgid: f.own_pid.unwrap_or(0),
            ..Default::default()
        };
        for name in &f.disabled_kinds {
            let kind = kind_number(name)
                .ok_or_else(|| SensorError::Filter(format!("unknown event kind {name:?}")))?;
            value.kinds_off |= 1 << kind;
        }
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| SensorError::Filter(format!("counting CPUs: {e}")))?
            .max(1) as u64;
        for limit in &f.rate_limits {
            let kind = kind_number(&limit.kind).ok_or_else(|| {
                SensorError::Filter(format!("rate limit for unknown kind {:?}", limit.kind))
            })? as usize;
            if limit.per_second == 0 {
                return Err(SensorError::Filter(format!(
                    "rate limit for {} must be at least 1 per second",
                    limit.kind
                )));
            }
            // Each CPU's bucket refills at per_second / cpus.
            let cost = 1_000_000_000u64.saturating_mul(cpus) / limit.per_second;
            value.cost_ns[kind] = cost.max(1);
            value.burst_ns[kind] = value.cost_ns[kind].saturating_mul((limit.burst / cpus).max(1));
        }
        let watched = prefix_keys(&f.watched_paths, "watched")?;
        let quiet = prefix_keys(&f.quiet_paths, "quiet")?;
        let mut exes = Vec::new();
        for path in &f.quiet_exes {
            match std::fs::metadata(path) {
                Ok(m) => exes.push(ExeKey {
                    ino: m.ino(),
                    dev: kernel_dev(m.dev()),
                    _pad: 0,
                }),
                Err(e) => warnings.push(format!("quiet exe {}: {e}; skipped", path.display())),
            }
        }
        let mut cgroups = Vec::new();
        for path in &f.quiet_cgroups {
            match cgroup::id_of(path) {
                Ok(id) => cgroups.push(id),
                Err(e) => warnings.push(format!("quiet cgroup {path}: {e}; skipped")),
            }
        }
        if exes.len() > QUIET_MAX || cgroups.len() > QUIET_MAX {
            return Err(SensorError::Filter(format!(
                "at most {QUIET_MAX} quiet executables and cgroups"
            )));
        }
        value.quiet_exes = u32::from(!exes.is_empty());
        value.quiet_cgroups = u32::from(!cgroups.is_empty());
        value.quiet_paths = u32::from(!quiet.is_empty());
        let compiled = CompiledFilters {
            value,
            watched,
            quiet,
            exes,
            cgroups,
        };
        Ok((compiled, warnings))
    }
}

/// The kernel's encoding of a device number (MKDEV: major << 20 | minor),
/// which is what inode->i_sb->s_dev holds, from the userspace st_dev.
fn kernel_dev(dev: u64) -> u32 {
    let major = libc::major(dev);
    let minor = libc::minor(dev);
    (major << 20) | (minor & 0xfffff)
}

/// LPM keys for path prefixes, checked: absolute, not empty, short enough.
fn prefix_keys(prefixes: &[String], what: &str) -> Result<Vec<Key<[u8; PREFIX_MAX]>>, SensorError> {
    if prefixes.len() > PREFIXES_MAX {
        return Err(SensorError::Filter(format!(
            "{} {what} path prefixes; at most {PREFIXES_MAX}",
            prefixes.len()
        )));
    }
    prefixes
        .iter()
        .map(|p| {
            let bytes = p.as_bytes();
            if !p.starts_with('/') || bytes.len() > PREFIX_MAX || bytes.contains(&0) {
                return Err(SensorError::Filter(format!(
                    "{what} path prefix {p:?} must be an absolute path of at most {PREFIX_MAX} bytes"
                )));
            }
            let mut data = [0u8; PREFIX_MAX];
            data[..bytes.len()].copy_from_slice(bytes);
            Ok(Key::new(bytes.len() as u32 * 8, data))
        })
        .collect()
}

/// Makes the LPM trie `name` hold exactly `keys`: the new keys go in
/// before the old ones come out, so a prefix in both is never missing.
fn replace_prefixes(
    bpf: &mut Ebpf,
    name: &'static str,
    keys: &[Key<[u8; PREFIX_MAX]>],
) -> Result<(), SensorError> {
    let mut trie: LpmTrie<_, [u8; PREFIX_MAX], u32> =
        LpmTrie::try_from(bpf.map_mut(name).ok_or(SensorError::Map {
            map: name,
            detail: "missing from the object".into(),
        })?)
        .map_err(map_err(name))?;
    let old: Vec<Key<[u8; PREFIX_MAX]>> = trie.keys().filter_map(Result::ok).collect();
    for k in keys {
        trie.insert(k, 1, 0).map_err(map_err(name))?;
    }
    let same = |a: &Key<[u8; PREFIX_MAX]>, b: &Key<[u8; PREFIX_MAX]>| {
        a.prefix_len() == b.prefix_len() && a.data() == b.data()
    };
    for k in old.iter().filter(|o| !keys.iter().any(|n| same(o, n))) {
        trie.remove(k).map_err(map_err(name))?;
    }
    Ok(())
}

/// Makes the hash map `name` (value: a presence byte) hold exactly `keys`,
/// new keys in before old ones out.
fn replace_hash_keys<K: aya::Pod + PartialEq>(
    bpf: &mut Ebpf,
    name: &'static str,
    keys: &[K],
) -> Result<(), SensorError> {
    let mut map: BpfHashMap<_, K, u8> =
        BpfHashMap::try_from(bpf.map_mut(name).ok_or(SensorError::Map {
            map: name,
            detail: "missing from the object".into(),
        })?)
        .map_err(map_err(name))?;
    let old: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for k in keys {
        map.insert(k, 1, 0).map_err(map_err(name))?;
    }
    for k in old.iter().filter(|o| !keys.contains(o)) {
        map.remove(k).map_err(map_err(name))?;
    }
    Ok(())
}

fn raise_memlock_limit() {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones use
    // memory cgroups and ignore it. Failure here is not fatal: the load
    // reports the real error if memory is short.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if rc != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        );
    }
}

/// Tracepoint attachment looks up event ids in tracefs. Minimal hosts and
/// VMs often boot without it mounted; as root, mount it where the kernel
/// documents it. Failure is left for the attach step to report.
fn ensure_tracefs() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("tracefs"))
    {
        return;
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        tracing::info!("mounted tracefs at /sys/kernel/tracing");
    } else {
        tracing::debug!("could not mount tracefs: {}", io::Error::last_os_error());
    }
}

/// Converts kernel boot-time timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    boot_unix_ns: u64,
}

impl BootClock {
    /// Reads the current offset between CLOCK_REALTIME and CLOCK_BOOTTIME.
    pub fn now() -> Self {
        let real = clock_ns(libc::CLOCK_REALTIME);
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        Self {
            boot_unix_ns: real.saturating_sub(boot),
        }
    }

    /// Unix time in nanoseconds of a `bpf_ktime_get_boot_ns()` timestamp.
    pub fn to_unix_ns(&self, ktime_ns: u64) -> u64 {
        self.boot_unix_ns.saturating_add(ktime_ns)
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Builds the proto event for a kernel record. The header's host id,
/// sequence number and exe paths are filled in later by the node.
pub fn to_event(record: RawRecord, clock: &BootClock) -> Event {
    let header = |h: RecordHeader| EventHeader {
        host_id: String::new(),
        seq: 0,
        ktime_ns: h.ktime_ns,
        time_unix_ns: clock.to_unix_ns(h.ktime_ns),
        pid: h.tgid,
        tid: h.tid,
        ppid: h.ppid,
        uid: h.uid,
        gid: h.gid,
        comm: h.comm,
        exe: String::new(),
        cgroup_id: h.cgroup_id,
        ..Default::default()
    };
    let endpoint = |a: std::net::SocketAddr| {
        Some(SocketEndpoint {
            address: a.ip().to_string(),
            port: u32::from(a.port()),
        })
    };
    let (h, body) = match record {
        RawRecord::Exec(r) => (
            r.header,
            Body::ProcessExec(ProcessExec {
                filename: r.filename,
                argv: r.argv,
                argv_truncated: r.argv_truncated,
                parent_exe: String::new(),
                tty: r.tty,
                stdin_is_socket: r.stdin_is_socket,
                stdout_is_socket: r.stdout_is_socket,
                cwd: r.cwd,
                cwd_truncated: r.cwd_truncated,
                euid: r.euid,
                egid: r.egid,
                exe_deleted: r.exe_deleted,
                exe_memfd: r.exe_memfd,
                ancestry: Vec::new(),
                exe_sha256: String::new(),
            }),
        ),
        RawRecord::Fork(r) => (
            r.header,
            Body::ProcessFork(ProcessFork {
                child_pid: r.child_tgid,
            }),
        ),
        RawRecord::Exit(r) => {
            let body = Body::ProcessExit(ProcessExit {
                exit_code: r.exit_code().unwrap_or(0),
                signal: r.signal().unwrap_or(0),
                core_dumped: r.core_dumped(),
            });
            (r.header, body)
        }
        RawRecord::Tcp(r) => {
            let body = match r.op {
                TcpOp::Connect => Body::TcpConnect(TcpConnect {
                    local: endpoint(r.local),
                    remote: endpoint(r.remote),
                    result: r.result,
                }),
                TcpOp::Accept => Body::TcpAccept(TcpAccept {
                    local: endpoint(r.local),
                    remote: endpoint(r.remote),
                }),
                TcpOp::Listen => Body::TcpListen(TcpListen {
                    local: endpoint(r.local),
                }),
            };
            (r.header, body)
        }
        RawRecord::File(r) => {
            let body = match r.op {
                FileOp::Open => Body::FileOpen(FileOpen {
                    path: r.path,
                    write: r.write,
                    created: r.created,
                    mode: r.mode,
                    path_truncated: r.truncated,
                }),
                FileOp::Rename => Body::FileRename(FileRename {
                    old_path: r.path,
                    new_path: r.new_path,
                    result: r.result,
                    path_truncated: r.truncated,
                }),
                FileOp::Unlink => Body::FileUnlink(FileUnlink {
                    path: r.path,
                    result: r.result,
                    path_truncated: r.truncated,
                }),
                FileOp::Chmod => Body::FileChmod(FileChmod {
                    path: r.path,
                    mode: r.mode,
                    parent_mode: r.parent_mode.unwrap_or(0),
                    path_truncated: r.truncated,
                }),
                FileOp::DevWrite => Body::DevFileWrite(DevFileWrite {
                    path: r.path,
                    created: r.created,
                    path_truncated: r.truncated,
                }),
            };
            (r.header, body)
        }
        RawRecord::Cred(r) => {
            let creds = |ids: Ids, caps: u64| Credentials {
                uid: ids.uid,
                euid: ids.euid,
                gid: ids.gid,
                egid: ids.egid,
                capabilities: caps,
            };
            let body = Body::PrivilegeChange(PrivilegeChange {
                call: r.op.name().to_owned(),
                before: Some(creds(r.old, r.old_caps)),
                after: Some(creds(r.new, r.new_caps)),
            });
            (r.header, body)
        }
        RawRecord::Ptrace(r) => {
            let body = Body::Ptrace(Ptrace {
                request: ptrace_request_name(r.request),
                target_pid: r.target,
                result: r.result,
            });
            (r.header, body)
        }
        RawRecord::Memfd(r) => {
            let body = Body::MemfdCreate(MemfdCreate {
                name: r.name,
                flags: r.flags,
                result: r.result,
            });
            (r.header, body)
        }
        RawRecord::BpfLoad(r) => {
            let body = Body::BpfProgramLoad(BpfProgramLoad {
                prog_type: r.prog_type,
                prog_name: r.prog_name,
                insn_count: r.insn_count,
                result: r.result,
            });
            (r.header, body)
        }
    };
    Event {
        header: Some(header(h)),
        body: Some(body),
    }
}

/// The name of a ptrace request the sensor reports.
pub fn ptrace_request_name(request: i64) -> String {
    match request {
        4 => "PTRACE_POKETEXT".into(),
        5 => "PTRACE_POKEDATA".into(),
        6 => "PTRACE_POKEUSER".into(),
        13 => "PTRACE_SETREGS".into(),
        16 => "PTRACE_ATTACH".into(),
        0x4205 => "PTRACE_SETREGSET".into(),
        0x4206 => "PTRACE_SEIZE".into(),
        n => n.to_string(),
    }
}
