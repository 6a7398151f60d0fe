//! Safe decoding of the records the kernel programs write into the ring
//! buffer (layouts in c/events.h). Every length field is checked against
//! the record's real size: a record is parsed, never transmuted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

use crate::dns;
pub use crate::records::{
    BindRecord, BpfLoadRecord, CgroupRecord, CredOp, CredRecord, DnsRecord, ExecRecord, ExitRecord,
    FileOp, FileRecord, ForkRecord, Ids, MemfdRecord, ModuleLoadRecord, PtraceRecord, RawRecord,
    RecordHeader, TcpOp, TcpRecord,
};

/// Bytes of the exec filename the probe captures (STARLING_FILENAME_MAX).
pub const FILENAME_MAX: usize = 512;
/// Bytes of argv the probe captures (STARLING_ARGV_MAX).
pub const ARGV_MAX: usize = 4096;
/// Bytes of a path the probes capture (STARLING_PATH_MAX), with its NUL.
pub const PATH_MAX: usize = 512;

const KIND_EXEC: u32 = 1;
const KIND_FORK: u32 = 2;
const KIND_EXIT: u32 = 3;
const KIND_TCP_CONNECT: u32 = 4;
const KIND_TCP_ACCEPT: u32 = 5;
const KIND_TCP_LISTEN: u32 = 6;
const KIND_FILE_OPEN: u32 = 7;
const KIND_FILE_RENAME: u32 = 8;
const KIND_FILE_UNLINK: u32 = 9;
const KIND_FILE_CHMOD: u32 = 10;
const KIND_DEV_WRITE: u32 = 11;
const KIND_PRIVILEGE: u32 = 12;
const KIND_PTRACE: u32 = 13;
const KIND_MEMFD: u32 = 14;
const KIND_BPF_LOAD: u32 = 15;
const KIND_SOCKET_BIND: u32 = 16;
const KIND_DNS_QUERY: u32 = 17;
const KIND_MODULE_LOAD: u32 = 18;
/// A cgroup's creation: not an event kind, so not in [`KIND_NAMES`] (it
/// cannot be disabled or rate-limited).
const KIND_CGROUP_MKDIR: u32 = 19;
/// Size of the kernel's per-kind tables (STARLING_RECORD_KINDS).
pub const KINDS: usize = 32;

/// Every record kind by number, with the name of the event it becomes
/// (the `starling-kind` name), for config, counters and logs.
pub const KIND_NAMES: [(u32, &str); 18] = [
    (KIND_EXEC, "process_exec"),
    (KIND_FORK, "process_fork"),
    (KIND_EXIT, "process_exit"),
    (KIND_TCP_CONNECT, "tcp_connect"),
    (KIND_TCP_ACCEPT, "tcp_accept"),
    (KIND_TCP_LISTEN, "tcp_listen"),
    (KIND_FILE_OPEN, "file_open"),
    (KIND_FILE_RENAME, "file_rename"),
    (KIND_FILE_UNLINK, "file_unlink"),
    (KIND_FILE_CHMOD, "file_chmod"),
    (KIND_DEV_WRITE, "dev_file_write"),
    (KIND_PRIVILEGE, "privilege_change"),
    (KIND_PTRACE, "ptrace"),
    (KIND_MEMFD, "memfd_create"),
    (KIND_BPF_LOAD, "bpf_program_load"),
    (KIND_SOCKET_BIND, "socket_bind"),
    (KIND_DNS_QUERY, "dns_query"),
    (KIND_MODULE_LOAD, "module_load"),
];

/// The kernel's number for a kind name of [`KIND_NAMES`].
pub fn kind_number(name: &str) -> Option<u32> {
    KIND_NAMES.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
}

/// The name of a kernel kind number ("unknown" for numbers it never uses).
pub fn kind_name(kind: u32) -> &'static str {
    if kind == KIND_CGROUP_MKDIR {
        return "cgroup_mkdir";
    }
    KIND_NAMES
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("unknown", |(_, n)| n)
}

/// Size of struct starling_header, where every record's body starts.
const HEADER_LEN: usize = 56;
/// Bytes of the terminal name the probe captures (STARLING_TTY_LEN).
const TTY_LEN: usize = 32;
const OFF_TTY: usize = 80;
/// Where an exec record's packed filename, cwd and argv start.
const OFF_EXEC_DATA: usize = OFF_TTY + TTY_LEN;
const FORK_LEN: usize = HEADER_LEN + 8;
const EXIT_LEN: usize = HEADER_LEN + 8;
/// struct starling_socket_record: TCP records and binds.
const SOCKET_LEN: usize = HEADER_LEN + 48;
/// Where a DNS record's payload starts (after its captured length).
const OFF_DNS_PAYLOAD: usize = SOCKET_LEN + 8;
/// Bytes of a DNS datagram the probe captures (STARLING_DNS_CAPTURE).
const DNS_CAPTURE: usize = 272;
/// The DNS record's payload was read (STARLING_DNS_READ).
const DNS_READ: u16 = 1;
const MODULE_NAME_MAX: usize = 64;
const MODULE_LEN: usize = HEADER_LEN + 8 + MODULE_NAME_MAX;
const OFF_PATH: usize = HEADER_LEN + 24;
const OFF_PATH2: usize = OFF_PATH + PATH_MAX;
/// A file record without the second path (all but renames).
const FILE_SHORT_LEN: usize = OFF_PATH2;
const FILE_LONG_LEN: usize = OFF_PATH2 + PATH_MAX;
const CRED_LEN: usize = HEADER_LEN + 56;
const PTRACE_LEN: usize = HEADER_LEN + 16;
const MEMFD_NAME_MAX: usize = 256;
const MEMFD_LEN: usize = HEADER_LEN + 8 + MEMFD_NAME_MAX;
const BPF_LEN: usize = HEADER_LEN + 32;
/// Bytes of a cgroup path the probe captures (STARLING_CGROUP_PATH_MAX).
const CGROUP_PATH_MAX: usize = 512;
const CGROUP_LEN: usize = HEADER_LEN + 16 + CGROUP_PATH_MAX;

const EXEC_STDIN_SOCKET: u32 = 1;
const EXEC_STDOUT_SOCKET: u32 = 2;
const EXEC_ARGV_TRUNCATED: u32 = 4;
const EXEC_CWD_TRUNCATED: u32 = 8;
const EXEC_EXE_DELETED: u32 = 16;
const EXEC_EXE_MEMFD: u32 = 32;
const FILE_WRITE: u32 = 1;
const FILE_CREATED: u32 = 2;
const FILE_TRUNCATED: u32 = 4;
const FILE_PARENT_KNOWN: u32 = 8;
const FILE_UNMATCHED: u32 = 16;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Why a kernel record could not be decoded (counted as a loss by the node).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RawError {
    #[error("record of {0} bytes is too short")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("length field {field} = {value} exceeds the record")]
    BadLength { field: &'static str, value: usize },
    #[error("unknown address family {0}")]
    UnknownFamily(u16),
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn i32_at(b: &[u8], off: usize) -> i32 {
    u32_at(b, off) as i32
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Splits the kernel's NUL-separated argv area into arguments.
fn split_argv(area: &[u8]) -> Vec<String> {
    let area = area.strip_suffix(&[0]).unwrap_or(area);
    if area.is_empty() {
        return Vec::new();
    }
    area.split(|&c| c == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Decodes one ring-buffer record.
pub fn decode(b: &[u8]) -> Result<RawRecord, RawError> {
    if b.len() < 4 {
        return Err(RawError::Short(b.len()));
    }
    let kind = u32_at(b, 0);
    let need = match kind {
        KIND_EXEC => OFF_EXEC_DATA,
        KIND_FORK => FORK_LEN,
        KIND_EXIT => EXIT_LEN,
        KIND_TCP_CONNECT | KIND_TCP_ACCEPT | KIND_TCP_LISTEN => SOCKET_LEN,
        KIND_FILE_RENAME => FILE_LONG_LEN,
        KIND_FILE_OPEN | KIND_FILE_UNLINK | KIND_FILE_CHMOD | KIND_DEV_WRITE => FILE_SHORT_LEN,
        KIND_PRIVILEGE => CRED_LEN,
        KIND_PTRACE => PTRACE_LEN,
        KIND_MEMFD => MEMFD_LEN,
        KIND_BPF_LOAD => BPF_LEN,
        KIND_SOCKET_BIND => SOCKET_LEN,
        KIND_DNS_QUERY => OFF_DNS_PAYLOAD,
        KIND_MODULE_LOAD => MODULE_LEN,
        KIND_CGROUP_MKDIR => CGROUP_LEN,
        k => return Err(RawError::UnknownKind(k)),
    };
    if b.len() < need {
        return Err(RawError::Short(b.len()));
    }
    let header = decode_header(b);
    Ok(match kind {
        KIND_EXEC => RawRecord::Exec(decode_exec(b, header)?),
        KIND_FORK => RawRecord::Fork(ForkRecord {
            header,
            child_tgid: u32_at(b, HEADER_LEN),
        }),
        KIND_EXIT => RawRecord::Exit(ExitRecord {
            header,
            status: u32_at(b, HEADER_LEN),
        }),
        KIND_TCP_CONNECT => RawRecord::Tcp(decode_tcp(b, header, TcpOp::Connect)?),
        KIND_TCP_ACCEPT => RawRecord::Tcp(decode_tcp(b, header, TcpOp::Accept)?),
        KIND_TCP_LISTEN => RawRecord::Tcp(decode_tcp(b, header, TcpOp::Listen)?),
        KIND_FILE_OPEN => RawRecord::File(decode_file(b, header, FileOp::Open)?),
        KIND_FILE_RENAME => RawRecord::File(decode_file(b, header, FileOp::Rename)?),
        KIND_FILE_UNLINK => RawRecord::File(decode_file(b, header, FileOp::Unlink)?),
        KIND_FILE_CHMOD => RawRecord::File(decode_file(b, header, FileOp::Chmod)?),
        KIND_DEV_WRITE => RawRecord::File(decode_file(b, header, FileOp::DevWrite)?),
        KIND_PRIVILEGE => RawRecord::Cred(decode_cred(b, header)?),
        KIND_PTRACE => RawRecord::Ptrace(PtraceRecord {
            header,
            request: u64_at(b, HEADER_LEN) as i64,
            target: u32_at(b, HEADER_LEN + 8),
            result: i32_at(b, HEADER_LEN + 12),
        }),
        KIND_MEMFD => RawRecord::Memfd(MemfdRecord {
            header,
            flags: u32_at(b, HEADER_LEN),
            result: i32_at(b, HEADER_LEN + 4),
            name: c_string(&b[HEADER_LEN + 8..MEMFD_LEN]),
        }),
        KIND_BPF_LOAD => RawRecord::BpfLoad(BpfLoadRecord {
            header,
            prog_type: u32_at(b, HEADER_LEN),
            insn_count: u32_at(b, HEADER_LEN + 4),
            result: i32_at(b, HEADER_LEN + 8),
            prog_name: c_string(&b[HEADER_LEN + 16..BPF_LEN]),
        }),
        KIND_SOCKET_BIND => {
            let (local, _) = socket_ends(b)?;
            RawRecord::Bind(BindRecord {
                header,
                protocol: u16_at(b, HEADER_LEN + 6),
                local,
            })
        }
        KIND_DNS_QUERY => RawRecord::Dns(decode_dns(b, header)?),
        KIND_CGROUP_MKDIR => {
            // The length read includes the NUL; a full buffer means the
            // path was cut, and a cut path is no path.
            let read = i32_at(b, HEADER_LEN + 8);
            let path = usize::try_from(read)
                .ok()
                .filter(|&n| (2..CGROUP_PATH_MAX).contains(&n))
                .map(|n| {
                    String::from_utf8_lossy(&b[HEADER_LEN + 16..HEADER_LEN + 15 + n]).into_owned()
                })
                .filter(|p| p.starts_with('/'));
            RawRecord::CgroupCreated(CgroupRecord {
                header,
                id: u64_at(b, HEADER_LEN),
                path,
            })
        }
        _ => RawRecord::ModuleLoad(ModuleLoadRecord {
            header,
            taints: u32_at(b, HEADER_LEN),
            name: c_string(&b[HEADER_LEN + 8..MODULE_LEN]),
        }),
    })
}

/// A path field of `len` bytes at `off`, checked against the capture size.
fn path_at(b: &[u8], off: usize, len: usize, field: &'static str) -> Result<String, RawError> {
    if len >= PATH_MAX || off + len > b.len() {
        return Err(RawError::BadLength { field, value: len });
    }
    Ok(String::from_utf8_lossy(&b[off..off + len]).into_owned())
}

fn decode_file(b: &[u8], header: RecordHeader, op: FileOp) -> Result<FileRecord, RawError> {
    let flags = u32_at(b, HEADER_LEN + 4);
    let path_len = u16_at(b, HEADER_LEN + 16) as usize;
    let new_path = if op == FileOp::Rename {
        let len = u16_at(b, HEADER_LEN + 18) as usize;
        path_at(b, OFF_PATH2, len, "path2_len")?
    } else {
        String::new()
    };
    Ok(FileRecord {
        header,
        op,
        result: i32_at(b, HEADER_LEN),
        write: flags & FILE_WRITE != 0,
        created: flags & FILE_CREATED != 0,
        truncated: flags & FILE_TRUNCATED != 0,
        unmatched: flags & FILE_UNMATCHED != 0,
        mode: u32_at(b, HEADER_LEN + 8),
        parent_mode: (flags & FILE_PARENT_KNOWN != 0).then(|| u32_at(b, HEADER_LEN + 12)),
        path: path_at(b, OFF_PATH, path_len, "path_len")?,
        new_path,
    })
}

fn decode_cred(b: &[u8], header: RecordHeader) -> Result<CredRecord, RawError> {
    let op = match u32_at(b, HEADER_LEN) {
        1 => CredOp::Setuid,
        2 => CredOp::Setreuid,
        3 => CredOp::Setresuid,
        4 => CredOp::Setgid,
        5 => CredOp::Setregid,
        6 => CredOp::Setresgid,
        7 => CredOp::Capset,
        8 => CredOp::Exec,
        v => {
            return Err(RawError::BadLength {
                field: "cred op",
                value: v as usize,
            })
        }
    };
    let ids = |off: usize| Ids {
        uid: u32_at(b, off),
        euid: u32_at(b, off + 4),
        gid: u32_at(b, off + 8),
        egid: u32_at(b, off + 12),
    };
    Ok(CredRecord {
        header,
        op,
        old: ids(HEADER_LEN + 8),
        new: ids(HEADER_LEN + 24),
        old_caps: u64_at(b, HEADER_LEN + 40),
        new_caps: u64_at(b, HEADER_LEN + 48),
    })
}

/// The common header; the caller has checked `b` holds it.
fn decode_header(b: &[u8]) -> RecordHeader {
    RecordHeader {
        tgid: u32_at(b, 4),
        tid: u32_at(b, 8),
        ppid: u32_at(b, 12),
        uid: u32_at(b, 16),
        gid: u32_at(b, 20),
        ktime_ns: u64_at(b, 24),
        cgroup_id: u64_at(b, 32),
        comm: c_string(&b[40..HEADER_LEN]),
    }
}

fn decode_exec(b: &[u8], header: RecordHeader) -> Result<ExecRecord, RawError> {
    let filename_len = u32_at(b, HEADER_LEN) as usize;
    let argv_len = u32_at(b, HEADER_LEN + 4) as usize;
    let cwd_len = u32_at(b, HEADER_LEN + 8) as usize;
    let flags = u32_at(b, HEADER_LEN + 12);
    // The strings are packed: filename, cwd, argv. Each length is checked
    // against its kernel limit first, so the sums cannot overflow.
    let bad = |field, value| RawError::BadLength { field, value };
    if filename_len >= FILENAME_MAX {
        return Err(bad("filename_len", filename_len));
    }
    if cwd_len >= PATH_MAX {
        return Err(bad("cwd_len", cwd_len));
    }
    let cwd_at = OFF_EXEC_DATA + filename_len;
    let argv_at = cwd_at + cwd_len;
    if argv_at > b.len() {
        return Err(bad("cwd_len", cwd_len));
    }
    if argv_len > ARGV_MAX || argv_at + argv_len > b.len() {
        return Err(bad("argv_len", argv_len));
    }
    Ok(ExecRecord {
        header,
        filename: String::from_utf8_lossy(&b[OFF_EXEC_DATA..cwd_at]).into_owned(),
        argv: split_argv(&b[argv_at..argv_at + argv_len]),
        argv_truncated: flags & EXEC_ARGV_TRUNCATED != 0,
        tty: c_string(&b[OFF_TTY..OFF_EXEC_DATA]),
        stdin_is_socket: flags & EXEC_STDIN_SOCKET != 0,
        stdout_is_socket: flags & EXEC_STDOUT_SOCKET != 0,
        // The kernel's walk gives the root as an empty path.
        cwd: match &b[cwd_at..argv_at] {
            [] => "/".to_owned(),
            cwd => String::from_utf8_lossy(cwd).into_owned(),
        },
        cwd_truncated: flags & EXEC_CWD_TRUNCATED != 0,
        euid: u32_at(b, HEADER_LEN + 16),
        egid: u32_at(b, HEADER_LEN + 20),
        exe_deleted: flags & EXEC_EXE_DELETED != 0,
        exe_memfd: flags & EXEC_EXE_MEMFD != 0,
    })
}

/// Both ends of a struct starling_socket_record; the caller has checked
/// `b` holds one.
fn socket_ends(b: &[u8]) -> Result<(SocketAddr, SocketAddr), RawError> {
    let family = u16_at(b, HEADER_LEN);
    let ip = |off: usize| -> Result<IpAddr, RawError> {
        match family {
            AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
                b[off],
                b[off + 1],
                b[off + 2],
                b[off + 3],
            ))),
            AF_INET6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[off..off + 16]);
                Ok(IpAddr::V6(Ipv6Addr::from(a)))
            }
            f => Err(RawError::UnknownFamily(f)),
        }
    };
    Ok((
        SocketAddr::new(ip(HEADER_LEN + 16)?, u16_at(b, HEADER_LEN + 2)),
        SocketAddr::new(ip(HEADER_LEN + 32)?, u16_at(b, HEADER_LEN + 4)),
    ))
}

fn decode_tcp(b: &[u8], header: RecordHeader, op: TcpOp) -> Result<TcpRecord, RawError> {
    let (local, remote) = socket_ends(b)?;
    Ok(TcpRecord {
        header,
        op,
        local,
        remote,
        result: i32_at(b, HEADER_LEN + 8),
    })
}

fn decode_dns(b: &[u8], header: RecordHeader) -> Result<DnsRecord, RawError> {
    let (local, server) = socket_ends(b)?;
    let captured = u16_at(b, SOCKET_LEN) as usize;
    if captured > DNS_CAPTURE || OFF_DNS_PAYLOAD + captured > b.len() {
        return Err(RawError::BadLength {
            field: "captured",
            value: captured,
        });
    }
    let payload = &b[OFF_DNS_PAYLOAD..OFF_DNS_PAYLOAD + captured];
    Ok(DnsRecord {
        header,
        local,
        server,
        result: i32_at(b, HEADER_LEN + 8),
        question: (u16_at(b, SOCKET_LEN + 2) & DNS_READ != 0).then(|| dns::parse_query(payload)),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_kernel_kinds_are_the_sensor_kinds_starlingctl_offers() {
        let mut kernel: Vec<&str> = KIND_NAMES.iter().map(|(_, n)| *n).collect();
        let mut offered = starling_proto::SENSOR_KINDS.to_vec();
        kernel.sort_unstable();
        offered.sort_unstable();
        assert_eq!(kernel, offered);
    }

    /// A record of `len` bytes of kind `kind` with a filled-in header.
    fn record(kind: u32, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0..4].copy_from_slice(&kind.to_ne_bytes());
        b[4..8].copy_from_slice(&100u32.to_ne_bytes());
        b[8..12].copy_from_slice(&101u32.to_ne_bytes());
        b[12..16].copy_from_slice(&1u32.to_ne_bytes());
        b[16..20].copy_from_slice(&1000u32.to_ne_bytes());
        b[20..24].copy_from_slice(&1000u32.to_ne_bytes());
        b[24..32].copy_from_slice(&123u64.to_ne_bytes());
        b[32..40].copy_from_slice(&7u64.to_ne_bytes());
        b[40..44].copy_from_slice(b"bash");
        b
    }

    /// Builds an exec record the way the kernel program lays it out.
    pub(crate) fn exec_bytes(filename: &str, argv: &[u8], truncated: bool) -> Vec<u8> {
        let cwd = b"/tmp";
        let mut b = record(KIND_EXEC, OFF_EXEC_DATA);
        b[56..60].copy_from_slice(&(filename.len() as u32).to_ne_bytes());
        b[60..64].copy_from_slice(&(argv.len() as u32).to_ne_bytes());
        b[64..68].copy_from_slice(&(cwd.len() as u32).to_ne_bytes());
        let flags = EXEC_STDOUT_SOCKET | if truncated { EXEC_ARGV_TRUNCATED } else { 0 };
        b[68..72].copy_from_slice(&flags.to_ne_bytes());
        b[OFF_TTY..OFF_TTY + 4].copy_from_slice(b"pts3");
        b.extend_from_slice(filename.as_bytes());
        b.extend_from_slice(cwd);
        b.extend_from_slice(argv);
        b
    }

    #[test]
    fn decodes_exec() {
        let b = exec_bytes("/bin/ls", b"ls\0-l\0/tmp\0", false);
        let Ok(RawRecord::Exec(r)) = decode(&b) else {
            panic!("not an exec record")
        };
        assert_eq!(r.filename, "/bin/ls");
        assert_eq!(r.argv, ["ls", "-l", "/tmp"]);
        assert_eq!(r.header.comm, "bash");
        assert_eq!(r.tty, "pts3");
        assert_eq!(r.cwd, "/tmp");
        assert!(!r.stdin_is_socket && r.stdout_is_socket);
        assert_eq!((r.header.tgid, r.header.tid, r.header.ppid), (100, 101, 1));
        assert!(!r.argv_truncated);
    }

    #[test]
    fn empty_arguments_are_kept() {
        let b = exec_bytes("/bin/echo", b"echo\0\0x\0", false);
        let Ok(RawRecord::Exec(r)) = decode(&b) else {
            panic!("not an exec record")
        };
        assert_eq!(r.argv, ["echo", "", "x"]);
    }

    #[test]
    fn lengths_beyond_the_record_are_rejected() {
        let mut b = exec_bytes("/bin/ls", b"ls\0", false);
        b[60..64].copy_from_slice(&100u32.to_ne_bytes());
        assert!(matches!(decode(&b), Err(RawError::BadLength { .. })));
        let mut b = exec_bytes("/bin/ls", b"ls\0", false);
        b[56..60].copy_from_slice(&5000u32.to_ne_bytes());
        assert!(matches!(decode(&b), Err(RawError::BadLength { .. })));
        // Each length fits alone, but together they pass the end.
        let mut b = exec_bytes("/bin/ls", b"ls\0", false);
        b[64..68].copy_from_slice(&500u32.to_ne_bytes());
        assert!(matches!(decode(&b), Err(RawError::BadLength { .. })));
        let mut b = exec_bytes("/bin/ls", b"ls\0", false);
        b[56..60].copy_from_slice(&511u32.to_ne_bytes());
        b[64..68].copy_from_slice(&511u32.to_ne_bytes());
        assert!(matches!(decode(&b), Err(RawError::BadLength { .. })));
    }

    fn tcp_bytes(kind: u32, family: u16, local: &[u8], remote: &[u8], result: i32) -> Vec<u8> {
        let mut b = record(kind, SOCKET_LEN);
        b[56..58].copy_from_slice(&family.to_ne_bytes());
        b[58..60].copy_from_slice(&8080u16.to_ne_bytes());
        b[60..62].copy_from_slice(&40000u16.to_ne_bytes());
        b[64..68].copy_from_slice(&result.to_ne_bytes());
        b[72..72 + local.len()].copy_from_slice(local);
        b[88..88 + remote.len()].copy_from_slice(remote);
        b
    }

    #[test]
    fn decodes_tcp_records_of_both_families() {
        let b = tcp_bytes(
            KIND_TCP_CONNECT,
            AF_INET,
            &[10, 0, 0, 1],
            &[10, 0, 0, 2],
            -111,
        );
        let Ok(RawRecord::Tcp(r)) = decode(&b) else {
            panic!("not a tcp record")
        };
        assert_eq!(r.op, TcpOp::Connect);
        assert_eq!(r.local, "10.0.0.1:8080".parse().unwrap());
        assert_eq!(r.remote, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(r.result, -111);
        let v6 = Ipv6Addr::LOCALHOST.octets();
        let b = tcp_bytes(KIND_TCP_ACCEPT, AF_INET6, &v6, &v6, 0);
        let Ok(RawRecord::Tcp(r)) = decode(&b) else {
            panic!("not a tcp record")
        };
        assert_eq!(
            (r.op, r.remote),
            (TcpOp::Accept, "[::1]:40000".parse().unwrap())
        );
        let b = tcp_bytes(KIND_TCP_LISTEN, 1, &[], &[], 0);
        assert_eq!(decode(&b), Err(RawError::UnknownFamily(1)));
    }

    #[test]
    fn exit_status_splits_into_code_and_signal() {
        let exit = |status: u32| ExitRecord {
            header: decode_header(&record(KIND_EXIT, EXIT_LEN)),
            status,
        };
        assert_eq!(
            (exit(7 << 8).exit_code(), exit(7 << 8).signal()),
            (Some(7), None)
        );
        let killed = exit(9);
        assert_eq!((killed.exit_code(), killed.signal()), (None, Some(9)));
        assert!(exit(11 | 0x80).core_dumped());
        let mut b = record(KIND_EXIT, EXIT_LEN);
        b[56..60].copy_from_slice(&(3u32 << 8).to_ne_bytes());
        assert_eq!(decode(&b), Ok(RawRecord::Exit(exit(3 << 8))));
    }

    #[test]
    fn every_kind_checks_its_length() {
        for (kind, _) in KIND_NAMES {
            let b = record(kind, HEADER_LEN);
            assert_eq!(decode(&b), Err(RawError::Short(HEADER_LEN)), "kind {kind}");
        }
    }

    fn file_bytes(kind: u32, path: &str, new_path: &str, flags: u32) -> Vec<u8> {
        let len = if kind == KIND_FILE_RENAME {
            FILE_LONG_LEN
        } else {
            FILE_SHORT_LEN
        };
        let mut b = record(kind, len);
        b[56..60].copy_from_slice(&(-2i32).to_ne_bytes());
        b[60..64].copy_from_slice(&flags.to_ne_bytes());
        b[64..68].copy_from_slice(&0o100644u32.to_ne_bytes());
        b[68..72].copy_from_slice(&0o41777u32.to_ne_bytes());
        b[72..74].copy_from_slice(&(path.len() as u16).to_ne_bytes());
        b[74..76].copy_from_slice(&(new_path.len() as u16).to_ne_bytes());
        b[OFF_PATH..OFF_PATH + path.len()].copy_from_slice(path.as_bytes());
        if kind == KIND_FILE_RENAME {
            b[OFF_PATH2..OFF_PATH2 + new_path.len()].copy_from_slice(new_path.as_bytes());
        }
        b
    }

    #[test]
    fn decodes_file_records() {
        let b = file_bytes(KIND_FILE_OPEN, "/etc/shadow", "", FILE_WRITE | FILE_CREATED);
        let Ok(RawRecord::File(r)) = decode(&b) else {
            panic!("not a file record")
        };
        assert_eq!((r.op, r.path.as_str()), (FileOp::Open, "/etc/shadow"));
        assert!(r.write && r.created && !r.truncated);
        assert_eq!((r.mode, r.parent_mode), (0o100644, None));
        let b = file_bytes(KIND_FILE_RENAME, "/tmp/x", "/etc/cron.d/x", 0);
        let Ok(RawRecord::File(r)) = decode(&b) else {
            panic!("not a file record")
        };
        assert_eq!((r.op, r.result), (FileOp::Rename, -2));
        assert_eq!(r.new_path, "/etc/cron.d/x");
        let b = file_bytes(KIND_FILE_CHMOD, "/tmp/x", "", FILE_PARENT_KNOWN);
        let Ok(RawRecord::File(r)) = decode(&b) else {
            panic!("not a file record")
        };
        assert_eq!(r.parent_mode, Some(0o41777));
        let mut b = file_bytes(KIND_FILE_UNLINK, "/etc/x", "", 0);
        b[72..74].copy_from_slice(&600u16.to_ne_bytes());
        assert!(matches!(decode(&b), Err(RawError::BadLength { .. })));
        // A short record cannot carry the second path a rename needs.
        let mut b = file_bytes(KIND_FILE_UNLINK, "/etc/x", "", 0);
        b[0..4].copy_from_slice(&KIND_FILE_RENAME.to_ne_bytes());
        assert_eq!(decode(&b), Err(RawError::Short(FILE_SHORT_LEN)));
    }

    #[test]
    fn decodes_privilege_and_tampering_records() {
        let mut b = record(KIND_PRIVILEGE, CRED_LEN);
        b[56..60].copy_from_slice(&3u32.to_ne_bytes());
        for (i, v) in [1000u32, 1000, 1000, 1000, 0, 0, 1000, 1000]
            .iter()
            .enumerate()
        {
            b[64 + 4 * i..68 + 4 * i].copy_from_slice(&v.to_ne_bytes());
        }
        b[104..112].copy_from_slice(&u64::MAX.to_ne_bytes());
        let Ok(RawRecord::Cred(r)) = decode(&b) else {
            panic!("not a cred record")
        };
        assert_eq!(r.op, CredOp::Setresuid);
        assert_eq!(
            (r.old.uid, r.new.uid, r.new.euid, r.new.gid),
            (1000, 0, 0, 1000)
        );
        assert_eq!((r.old_caps, r.new_caps), (0, u64::MAX));
        b[56..60].copy_from_slice(&99u32.to_ne_bytes());
        assert!(decode(&b).is_err());

        let mut b = record(KIND_MEMFD, MEMFD_LEN);
        b[56..60].copy_from_slice(&1u32.to_ne_bytes());
        b[60..64].copy_from_slice(&5i32.to_ne_bytes());
        b[64..68].copy_from_slice(b"pay\0");
        let Ok(RawRecord::Memfd(r)) = decode(&b) else {
            panic!("not a memfd record")
        };
        assert_eq!((r.name.as_str(), r.flags, r.result), ("pay", 1, 5));

        let mut b = record(KIND_BPF_LOAD, BPF_LEN);
        b[56..60].copy_from_slice(&1u32.to_ne_bytes());
        b[60..64].copy_from_slice(&2u32.to_ne_bytes());
        b[64..68].copy_from_slice(&(-1i32).to_ne_bytes());
        b[72..76].copy_from_slice(b"prog");
        let Ok(RawRecord::BpfLoad(r)) = decode(&b) else {
            panic!("not a bpf record")
        };
        assert_eq!((r.prog_type, r.insn_count, r.result), (1, 2, -1));
        assert_eq!(r.prog_name, "prog");

        let mut b = record(KIND_PTRACE, PTRACE_LEN);
        b[56..64].copy_from_slice(&16i64.to_ne_bytes());
        b[64..68].copy_from_slice(&4242u32.to_ne_bytes());
        let Ok(RawRecord::Ptrace(r)) = decode(&b) else {
            panic!("not a ptrace record")
        };
        assert_eq!((r.request, r.target, r.result), (16, 4242, 0));
    }

    #[test]
    fn decodes_bind_dns_and_module_records() {
        let v6 = Ipv6Addr::LOCALHOST.octets();
        let mut b = tcp_bytes(KIND_SOCKET_BIND, AF_INET6, &v6, &[0; 16], 0);
        b[62..64].copy_from_slice(&17u16.to_ne_bytes());
        let Ok(RawRecord::Bind(r)) = decode(&b) else {
            panic!("not a bind record")
        };
        assert_eq!((r.protocol, r.local), (17, "[::1]:8080".parse().unwrap()));

        let query = crate::dns::tests::query(0x0102, &[b"example", b"org"], 16);
        let dns_read = |captured: u16, payload: &[u8], flags: u16| {
            let mut b = tcp_bytes(
                KIND_DNS_QUERY,
                AF_INET,
                &[127, 0, 0, 1],
                &[10, 0, 0, 53],
                40,
            );
            b.extend_from_slice(&captured.to_ne_bytes());
            b.extend_from_slice(&flags.to_ne_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(payload);
            b
        };
        let dns = |captured: u16, payload: &[u8]| dns_read(captured, payload, DNS_READ);
        let Ok(RawRecord::Dns(r)) = decode(&dns(query.len() as u16, &query)) else {
            panic!("not a dns record")
        };
        assert_eq!(r.server, "10.0.0.53:40000".parse().unwrap());
        assert_eq!(r.result, 40);
        let Some(Ok(q)) = r.question else {
            panic!("no question: {:?}", r.question)
        };
        assert_eq!(
            (q.id, q.name.as_str(), q.qtype),
            (0x0102, "example.org", 16)
        );
        // Nothing read: a send the sensor does not read. An empty datagram
        // that was read is not a query.
        let Ok(RawRecord::Dns(r)) = decode(&dns_read(0, &[], 0)) else {
            panic!("not a dns record")
        };
        assert_eq!(r.question, None);
        let Ok(RawRecord::Dns(r)) = decode(&dns(0, &[])) else {
            panic!("not a dns record")
        };
        assert_eq!(r.question, Some(Err(crate::dns::DnsError::Short(0))));
        // A captured length past the record, or past the capture size.
        assert!(matches!(
            decode(&dns(query.len() as u16 + 1, &query)),
            Err(RawError::BadLength { .. })
        ));
        let big = vec![0u8; DNS_CAPTURE + 1];
        assert!(matches!(
            decode(&dns(big.len() as u16, &big)),
            Err(RawError::BadLength { .. })
        ));

        let mut b = record(KIND_MODULE_LOAD, MODULE_LEN);
        b[56..60].copy_from_slice(&0x3000u32.to_ne_bytes());
        b[64..70].copy_from_slice(b"nf_tab");
        let Ok(RawRecord::ModuleLoad(r)) = decode(&b) else {
            panic!("not a module record")
        };
        assert_eq!((r.name.as_str(), r.taints), ("nf_tab", 0x3000));
    }

    #[test]
    fn kind_names_round_trip() {
        for (kind, name) in KIND_NAMES {
            assert_eq!(kind_number(name), Some(kind));
            assert_eq!(kind_name(kind), name);
            assert!((kind as usize) < KINDS);
        }
        assert_eq!(kind_number("nope"), None);
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(decode(&[1, 0]), Err(RawError::Short(2)));
        assert_eq!(decode(&[99, 0, 0, 0]), Err(RawError::UnknownKind(99)));
        assert!(matches!(decode(&[1, 0, 0, 0, 5]), Err(RawError::Short(5))));
    }
}
