//! Safe decoding of the records the kernel programs write into the ring
//! buffer (layouts in c/events.h). Every length field is checked against
//! the record's real size: a record is parsed, never transmuted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// Bytes of the exec filename the probe captures (STARLING_FILENAME_MAX).
pub const FILENAME_MAX: usize = 512;
/// Bytes of argv the probe captures (STARLING_ARGV_MAX).
pub const ARGV_MAX: usize = 4096;

const KIND_EXEC: u32 = 1;
const KIND_FORK: u32 = 2;
const KIND_EXIT: u32 = 3;
const KIND_TCP_CONNECT: u32 = 4;
const KIND_TCP_ACCEPT: u32 = 5;
const KIND_TCP_LISTEN: u32 = 6;
/// Size of struct starling_header, where every record's body starts.
const HEADER_LEN: usize = 56;
/// Bytes of the terminal name the probe captures (STARLING_TTY_LEN).
const TTY_LEN: usize = 32;
const OFF_TTY: usize = 72;
const OFF_FILENAME: usize = OFF_TTY + TTY_LEN;
const OFF_ARGV: usize = OFF_FILENAME + FILENAME_MAX;
const FORK_LEN: usize = HEADER_LEN + 8;
const EXIT_LEN: usize = HEADER_LEN + 8;
const TCP_LEN: usize = HEADER_LEN + 48;
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

/// Any record the kernel programs produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawRecord {
    Exec(ExecRecord),
    Fork(ForkRecord),
    Exit(ExitRecord),
    Tcp(TcpRecord),
}

impl RawRecord {
    /// The task that caused the record.
    pub fn header(&self) -> &RecordHeader {
        match self {
            Self::Exec(r) => &r.header,
            Self::Fork(r) => &r.header,
            Self::Exit(r) => &r.header,
            Self::Tcp(r) => &r.header,
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
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
        KIND_EXEC => OFF_ARGV,
        KIND_FORK => FORK_LEN,
        KIND_EXIT => EXIT_LEN,
        KIND_TCP_CONNECT | KIND_TCP_ACCEPT | KIND_TCP_LISTEN => TCP_LEN,
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
        _ => {
            let op = match kind {
                KIND_TCP_CONNECT => TcpOp::Connect,
                KIND_TCP_ACCEPT => TcpOp::Accept,
                _ => TcpOp::Listen,
            };
            RawRecord::Tcp(decode_tcp(b, header, op)?)
        }
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
    if filename_len >= FILENAME_MAX {
        return Err(RawError::BadLength {
            field: "filename_len",
            value: filename_len,
        });
    }
    if argv_len > ARGV_MAX || OFF_ARGV + argv_len > b.len() {
        return Err(RawError::BadLength {
            field: "argv_len",
            value: argv_len,
        });
    }
    Ok(ExecRecord {
        header,
        filename: String::from_utf8_lossy(&b[OFF_FILENAME..OFF_FILENAME + filename_len])
            .into_owned(),
        argv: split_argv(&b[OFF_ARGV..OFF_ARGV + argv_len]),
        argv_truncated: u32_at(b, HEADER_LEN + 8) != 0,
        tty: c_string(&b[OFF_TTY..OFF_FILENAME]),
        stdin_is_socket: u32_at(b, HEADER_LEN + 12) & 1 != 0,
        stdout_is_socket: u32_at(b, HEADER_LEN + 12) & 2 != 0,
    })
}

fn decode_tcp(b: &[u8], header: RecordHeader, op: TcpOp) -> Result<TcpRecord, RawError> {
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
    Ok(TcpRecord {
        header,
        op,
        local: SocketAddr::new(ip(HEADER_LEN + 16)?, u16_at(b, HEADER_LEN + 2)),
        remote: SocketAddr::new(ip(HEADER_LEN + 32)?, u16_at(b, HEADER_LEN + 4)),
        result: u32_at(b, HEADER_LEN + 8) as i32,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
        let mut b = record(KIND_EXEC, OFF_ARGV + argv.len());
        b[56..60].copy_from_slice(&(filename.len() as u32).to_ne_bytes());
        b[60..64].copy_from_slice(&(argv.len() as u32).to_ne_bytes());
        b[64..68].copy_from_slice(&(truncated as u32).to_ne_bytes());
        b[68..72].copy_from_slice(&2u32.to_ne_bytes());
        b[OFF_TTY..OFF_TTY + 4].copy_from_slice(b"pts3");
        b[OFF_FILENAME..OFF_FILENAME + filename.len()].copy_from_slice(filename.as_bytes());
        b[OFF_ARGV..].copy_from_slice(argv);
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
    }

    fn tcp_bytes(kind: u32, family: u16, local: &[u8], remote: &[u8], result: i32) -> Vec<u8> {
        let mut b = record(kind, TCP_LEN);
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
        for kind in [KIND_FORK, KIND_EXIT, KIND_TCP_CONNECT, KIND_EXEC] {
            let b = record(kind, HEADER_LEN);
            assert_eq!(decode(&b), Err(RawError::Short(HEADER_LEN)), "kind {kind}");
        }
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(decode(&[1, 0]), Err(RawError::Short(2)));
        assert_eq!(decode(&[9, 0, 0, 0]), Err(RawError::UnknownKind(9)));
        assert!(matches!(decode(&[1, 0, 0, 0, 5]), Err(RawError::Short(5))));
    }
}
