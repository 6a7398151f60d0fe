//! The records the kernel programs produce, as Rust values: what
//! [`crate::raw::decode`] returns and [`crate::to_event`] turns into proto
//! events.

use std::net::SocketAddr;

use crate::dns::{DnsError, DnsQuestion};

/// The task that caused a record, as every record starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub tgid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub ktime_ns: u64,
    pub cgroup_id: u64,
    pub comm: String,
}

/// A process-exec record as the kernel wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    pub header: RecordHeader,
    pub filename: String,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    /// The controlling terminal ("pts0"), empty when there is none.
    pub tty: String,
    pub stdin_is_socket: bool,
    pub stdout_is_socket: bool,
    /// The working directory, as the process sees it.
    pub cwd: String,
    /// True when cwd was deeper than the kernel walks and lost its top.
    pub cwd_truncated: bool,
    /// Effective ids after the exec (differ from uid/gid for set-id files).
    pub euid: u32,
    pub egid: u32,
    /// The image is a file with no links left (deleted, or anonymous).
    pub exe_deleted: bool,
    /// The image was created by memfd_create: it never had a path.
    pub exe_memfd: bool,
}

/// A new process; the header is its parent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkRecord {
    pub header: RecordHeader,
    pub child_tgid: u32,
}

/// The end of a process, with the wait status its parent sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    pub header: RecordHeader,
    pub status: u32,
}

impl ExitRecord {
    /// The exit code when the process exited (not killed by a signal).
    pub fn exit_code(&self) -> Option<i32> {
        (self.status & 0x7f == 0).then_some(((self.status >> 8) & 0xff) as i32)
    }

    /// The signal that killed the process, if one did.
    pub fn signal(&self) -> Option<u32> {
        let sig = self.status & 0x7f;
        (sig != 0).then_some(sig)
    }

    /// Whether the killing signal dumped core.
    pub fn core_dumped(&self) -> bool {
        self.status & 0x80 != 0
    }
}

/// What a TCP record reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOp {
    /// An outgoing connect finished (see `result`).
    Connect,
    /// accept() returned a connection.
    Accept,
    /// A socket started listening.
    Listen,
}

/// A TCP connect, accept or listen with both ends of the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRecord {
    pub header: RecordHeader,
    pub op: TcpOp,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// For a connect, 0 or the negated errno it failed with; else 0.
    pub result: i32,
}

/// What a file record reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    /// An open of a watched path.
    Open,
    /// A rename from or to a watched path (`new_path` is set).
    Rename,
    /// An unlink of a watched path.
    Unlink,
    /// A chmod that set an execute bit.
    Chmod,
    /// A regular file on /dev opened for writing.
    DevWrite,
}

/// A file event; which fields mean something depends on `op`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub header: RecordHeader,
    pub op: FileOp,
    /// Open: the fd. Rename and unlink: 0 or the negated errno.
    pub result: i32,
    /// Open: opened for writing.
    pub write: bool,
    /// Open: the open created the file.
    pub created: bool,
    /// A path was longer or deeper than the kernel captures.
    pub truncated: bool,
    /// Rename and unlink: a path as the caller wrote it has ".", ".." or
    /// empty components, so the kernel did not match it against the watch
    /// list; [`crate::SensorFilters::watches`] on its [`crate::lexical_path`]
    /// decides.
    pub unmatched: bool,
    /// Open: the inode's mode. Chmod: the mode set.
    pub mode: u32,
    /// Chmod: the parent directory's mode, when the kernel knew it.
    pub parent_mode: Option<u32>,
    pub path: String,
    /// Rename: the new path; else empty.
    pub new_path: String,
}

/// Which call changed credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredOp {
    Setuid,
    Setreuid,
    Setresuid,
    Setgid,
    Setregid,
    Setresgid,
    Capset,
    /// An exec of a set-user-id or set-group-id file.
    Exec,
}

impl CredOp {
    /// The call's name, as in the proto event.
    pub fn name(self) -> &'static str {
        match self {
            Self::Setuid => "setuid",
            Self::Setreuid => "setreuid",
            Self::Setresuid => "setresuid",
            Self::Setgid => "setgid",
            Self::Setregid => "setregid",
            Self::Setresgid => "setresgid",
            Self::Capset => "capset",
            Self::Exec => "exec",
        }
    }
}

/// Real and effective ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ids {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
}

/// A process gained root ids or new effective capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredRecord {
    pub header: RecordHeader,
    pub op: CredOp,
    pub old: Ids,
    pub new: Ids,
    /// Effective capability sets before and after (bit n: capability n).
    pub old_caps: u64,
    pub new_caps: u64,
}

/// A ptrace request that takes over or writes into a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtraceRecord {
    pub header: RecordHeader,
    pub request: i64,
    /// The pid the request named.
    pub target: u32,
    pub result: i32,
}

/// memfd_create(): an anonymous, executable-capable file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemfdRecord {
    pub header: RecordHeader,
    pub name: String,
    pub flags: u32,
    /// The fd, or the negated errno.
    pub result: i32,
}

/// bpf(BPF_PROG_LOAD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfLoadRecord {
    pub header: RecordHeader,
    /// enum bpf_prog_type (1 socket filter, 2 kprobe, 5 tracepoint, ...).
    pub prog_type: u32,
    pub insn_count: u32,
    pub prog_name: String,
    /// The program fd, or the negated errno.
    pub result: i32,
}

/// A successful bind() of an inet socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindRecord {
    pub header: RecordHeader,
    /// IP protocol number (6 TCP, 17 UDP, ...).
    pub protocol: u16,
    /// The bound address; a requested port 0 is the port the kernel chose.
    pub local: SocketAddr,
}

/// A UDP datagram sent to port 53.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    pub header: RecordHeader,
    pub local: SocketAddr,
    pub server: SocketAddr,
    /// Bytes sent, or the negated errno.
    pub result: i32,
    /// The question, or why the datagram has none; `None` when the send
    /// went through a call whose buffer the sensor does not read.
    pub question: Option<Result<DnsQuestion, DnsError>>,
}

/// A kernel module was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLoadRecord {
    pub header: RecordHeader,
    pub name: String,
    /// The module's taint flags (TAINT_* bits: 12 out-of-tree, 13 unsigned).
    pub taints: u32,
}

/// A cgroup was created in the cgroup2 hierarchy. Not an event: the node
/// remembers its path for the processes that will run in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRecord {
    /// The task that created it.
    pub header: RecordHeader,
    /// Its cgroup2 id (what event headers carry as `cgroup_id`).
    pub id: u64,
    /// Its path from the hierarchy's root ("/kubepods.slice/..."); None
    /// when it was longer than the sensor captures.
    pub path: Option<String>,
}

/// Any record the kernel programs produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawRecord {
    Exec(ExecRecord),
    Fork(ForkRecord),
    Exit(ExitRecord),
    Tcp(TcpRecord),
    File(FileRecord),
    Cred(CredRecord),
    Ptrace(PtraceRecord),
    Memfd(MemfdRecord),
    BpfLoad(BpfLoadRecord),
    Bind(BindRecord),
    Dns(DnsRecord),
    ModuleLoad(ModuleLoadRecord),
    /// Not an event; [`crate::to_event`] gives none for it.
    CgroupCreated(CgroupRecord),
}

impl RawRecord {
    /// The task that caused the record.
    pub fn header(&self) -> &RecordHeader {
        match self {
            Self::Exec(r) => &r.header,
            Self::Fork(r) => &r.header,
            Self::Exit(r) => &r.header,
            Self::Tcp(r) => &r.header,
            Self::File(r) => &r.header,
            Self::Cred(r) => &r.header,
            Self::Ptrace(r) => &r.header,
            Self::Memfd(r) => &r.header,
            Self::BpfLoad(r) => &r.header,
            Self::Bind(r) => &r.header,
            Self::Dns(r) => &r.header,
            Self::ModuleLoad(r) => &r.header,
            Self::CgroupCreated(r) => &r.header,
        }
    }
}
