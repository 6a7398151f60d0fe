//! Kernel records into proto events, with wall-clock times.

use starling_proto::v1::{
    event::Body, BpfProgramLoad, Credentials, DevFileWrite, DnsQuery, Event, EventHeader,
    FileChmod, FileOpen, FileRename, FileUnlink, MemfdCreate, ModuleLoad, PrivilegeChange,
    ProcessExec, ProcessExit, ProcessFork, Ptrace, SocketBind, SocketEndpoint, TcpAccept,
    TcpConnect, TcpListen,
};

use crate::dns;
use crate::filters::lexical_path;
use crate::raw::{FileOp, Ids, RawRecord, RecordHeader, TcpOp};

/// A rename or unlink path as it was matched against the watch list, and
/// as written when that differs (the kernel left `unmatched` paths to the
/// node, which matches their lexical form).
fn as_matched(written: String, unmatched: bool) -> (String, String) {
    if !unmatched {
        return (written, String::new());
    }
    let lexical = lexical_path(&written);
    if lexical == written {
        (written, String::new())
    } else {
        (lexical, written)
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

/// Builds the proto event for a kernel record; None for a record that is
/// no event (a cgroup's creation). The header's host id, sequence number
/// and exe paths are filled in later by the node.
pub fn to_event(record: RawRecord, clock: &BootClock) -> Option<Event> {
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
                FileOp::Rename => {
                    let (old_path, written_old_path) = as_matched(r.path, r.unmatched);
                    let (new_path, written_new_path) = as_matched(r.new_path, r.unmatched);
                    Body::FileRename(FileRename {
                        old_path,
                        new_path,
                        result: r.result,
                        path_truncated: r.truncated,
                        written_old_path,
                        written_new_path,
                    })
                }
                FileOp::Unlink => {
                    let (path, written_path) = as_matched(r.path, r.unmatched);
                    Body::FileUnlink(FileUnlink {
                        path,
                        result: r.result,
                        path_truncated: r.truncated,
                        written_path,
                    })
                }
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
        RawRecord::Bind(r) => {
            let body = Body::SocketBind(SocketBind {
                local: endpoint(r.local),
                protocol: protocol_name(r.protocol),
            });
            (r.header, body)
        }
        RawRecord::Dns(r) => {
            let mut body = DnsQuery {
                server: endpoint(r.server),
                local: endpoint(r.local),
                result: r.result,
                ..Default::default()
            };
            match r.question {
                Some(Ok(q)) => {
                    body.name = q.name;
                    body.query_type = dns::type_name(q.qtype);
                    body.id = u32::from(q.id);
                }
                Some(Err(e)) => body.error = e.to_string(),
                None => body.error = "not captured".into(),
            }
            (r.header, Body::DnsQuery(body))
        }
        RawRecord::ModuleLoad(r) => {
            let body = Body::ModuleLoad(ModuleLoad {
                name: r.name,
                taints: r.taints,
            });
            (r.header, body)
        }
        RawRecord::CgroupCreated(_) => return None,
    };
    Some(Event {
        header: Some(header(h)),
        body: Some(body),
    })
}

/// The name of an IP protocol a socket can be bound with.
fn protocol_name(protocol: u16) -> String {
    match protocol {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        262 => "mptcp".into(),
        n => n.to_string(),
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
