//! Starling's sensor: C kernel programs (CO-RE, compiled by build.rs with
//! clang and embedded here), loaded and attached with aya, read from a BPF
//! ring buffer and decoded into proto events.
//!
//! The kernel side never waits for userspace: when the ring buffer is full
//! the program drops the record and counts it in the `drops` map (by reason
//! and kind), which [`Sensor::drop_counts`] reads so the node can report
//! every loss. What is reported is filtered in the kernel, from settings
//! the node can replace at runtime ([`SensorFilters`]).

mod attach;
pub mod cgroup;
mod convert;
pub mod dns;
mod filters;
pub mod raw;
mod records;
mod stats;

use std::collections::HashSet;
use std::io;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use attach::ATTACHMENTS;
pub use convert::{ptrace_request_name, to_event, BootClock};
use filters::CompiledFilters;
pub use filters::{lexical_path, RateLimit, SensorFilters, PREFIXES_MAX, PREFIX_MAX, QUIET_MAX};
pub use stats::{DropCounts, DropReason, ProgramStats};

pub use raw::{
    decode, kind_name, kind_number, BindRecord, BpfLoadRecord, CgroupRecord, CredOp, CredRecord,
    DnsRecord, ExecRecord, ExitRecord, FileOp, FileRecord, ForkRecord, Ids, MemfdRecord,
    ModuleLoadRecord, PtraceRecord, RawError, RawRecord, RecordHeader, TcpOp, TcpRecord, KINDS,
    KIND_NAMES,
};

/// The sensor's object, built from c/sensor.bpf.c.
static SENSOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor.bpf.o"));

/// Most bytes the kernel lets wait in the ring buffer before it wakes
/// the reader.
const MAX_WAKEUP_BYTES: u32 = 256 * 1024;
/// How often the reader looks at the ring buffer without a wakeup: the
/// most a record waits when records come slower than a wakeup's worth.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

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

pub(crate) fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> SensorError {
    move |e| SensorError::Map {
        map,
        detail: e.to_string(),
    }
}

impl Sensor {
    /// Loads and attaches every program. Needs root (or CAP_BPF and
    /// CAP_PERFMON) and kernel BTF, and must run inside a Tokio runtime
    /// (the ring buffer is registered with its reactor).
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

    fn install(&mut self, filters: &CompiledFilters) -> Result<(), SensorError> {
        filters.install(&mut self.bpf, self.wakeup_bytes)
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
