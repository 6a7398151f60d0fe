//! Starling's sensor: C kernel programs (CO-RE, compiled by build.rs with
//! clang and embedded here), loaded and attached with aya, read from a BPF
//! ring buffer and decoded into proto events.
//!
//! The kernel side never waits for userspace: when the ring buffer is full
//! the program drops the record and counts it in the `losses` map, which
//! [`Sensor::ring_buffer_losses`] reads so the node can report every loss.

pub mod raw;

use std::io;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use starling_proto::v1::{
    event::Body, Event, EventHeader, ProcessExec, ProcessExit, ProcessFork, SocketEndpoint,
    TcpAccept, TcpConnect, TcpListen,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub use raw::{
    decode, ExecRecord, ExitRecord, ForkRecord, RawError, RawRecord, RecordHeader, TcpOp, TcpRecord,
};

/// The sensor's object, built from c/sensor.bpf.c.
static SENSOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor.bpf.o"));

/// Every program in the object and the tracepoint (category, name) it
/// attaches to. docs/sensor.md says why each hook was chosen.
const PROGRAMS: &[(&str, &str, &str)] = &[
    ("starling_exec", "sched", "sched_process_exec"),
    ("starling_fork", "task", "task_newtask"),
    ("starling_exit", "sched", "sched_process_exit"),
    ("starling_tcp_state", "sock", "inet_sock_set_state"),
    ("starling_accept", "syscalls", "sys_exit_accept"),
    ("starling_accept4", "syscalls", "sys_exit_accept4"),
];

const LOSS_SLOT_RINGBUF_FULL: u32 = 0;

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
}

/// Sensor settings taken from the node's config.
#[derive(Debug, Clone)]
pub struct SensorConfig {
    /// Ring-buffer size in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
}

impl Default for SensorConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The loaded and attached kernel programs and the ring buffer they feed.
/// Dropping it detaches the programs.
pub struct Sensor {
    ring: AsyncFd<RingBuf<MapData>>,
    losses: PerCpuArray<MapData, u64>,
    // Keeps the programs loaded and attached.
    _bpf: Ebpf,
}

impl Sensor {
    /// Loads and attaches every program. Needs root (or CAP_BPF and
    /// CAP_PERFMON) and kernel BTF.
    pub fn load(config: &SensorConfig) -> Result<Self, SensorError> {
        let size = config.ring_buffer_bytes;
        if !size.is_power_of_two() || size < 4096 {
            return Err(SensorError::BadRingBufferSize(size));
        }
        raise_memlock_limit();
        ensure_tracefs();
        let mut bpf = EbpfLoader::new()
            .set_max_entries("events", size)
            .load(SENSOR_OBJECT)
            .map_err(|e| SensorError::Load(Box::new(e)))?;

        for &(program, category, name) in PROGRAMS {
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
            tp.load().map_err(prog_err)?;
            tp.attach(category, name).map_err(prog_err)?;
        }

        let ring_map = bpf.take_map("events").ok_or(SensorError::Map {
            map: "events",
            detail: "missing from the object".into(),
        })?;
        let ring = RingBuf::try_from(ring_map).map_err(|e| SensorError::Map {
            map: "events",
            detail: e.to_string(),
        })?;
        let loss_map = bpf.take_map("losses").ok_or(SensorError::Map {
            map: "losses",
            detail: "missing from the object".into(),
        })?;
        let losses = PerCpuArray::try_from(loss_map).map_err(|e| SensorError::Map {
            map: "losses",
            detail: e.to_string(),
        })?;
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // for as long as the AsyncFd that owns the RingBuf exists.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| SensorError::Poll(e.into()))?;
        Ok(Self {
            ring,
            losses,
            _bpf: bpf,
        })
    }

    /// Waits until records are available, then appends up to `max` of them
    /// (decoded, or the decoding error) to `out`.
    pub async fn read(
        &mut self,
        max: usize,
        out: &mut Vec<Result<RawRecord, RawError>>,
    ) -> io::Result<()> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let start = out.len();
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

    /// Total records the kernel dropped because the ring buffer was full,
    /// summed over CPUs, since the sensor was loaded.
    pub fn ring_buffer_losses(&self) -> Result<u64, SensorError> {
        let values = self
            .losses
            .get(&LOSS_SLOT_RINGBUF_FULL, 0)
            .map_err(|e| SensorError::Map {
                map: "losses",
                detail: e.to_string(),
            })?;
        Ok(values.iter().sum())
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
    };
    Event {
        header: Some(header(h)),
        body: Some(body),
    }
}
