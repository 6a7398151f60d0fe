//! Safe decoding of the records the kernel programs write into the ring
//! buffer (layouts in c/events.h). Every length field is checked against
//! the record's real size: a record is parsed, never transmuted.

use thiserror::Error;

/// Bytes of the exec filename the probe captures (STARLING_FILENAME_MAX).
pub const FILENAME_MAX: usize = 512;
/// Bytes of argv the probe captures (STARLING_ARGV_MAX).
pub const ARGV_MAX: usize = 4096;

const KIND_EXEC: u32 = 1;
const OFF_FILENAME: usize = 72;
const OFF_ARGV: usize = OFF_FILENAME + FILENAME_MAX;

/// Why a kernel record could not be decoded (counted as a loss by the node).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RawError {
    #[error("record of {0} bytes is too short")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("length field {field} = {value} exceeds the record")]
    BadLength { field: &'static str, value: usize },
}

/// A process-exec record as the kernel wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    pub tgid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub ktime_ns: u64,
    pub cgroup_id: u64,
    pub comm: String,
    pub filename: String,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
}

/// Any record the kernel programs produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawRecord {
    Exec(ExecRecord),
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
    match u32_at(b, 0) {
        KIND_EXEC => decode_exec(b).map(RawRecord::Exec),
        k => Err(RawError::UnknownKind(k)),
    }
}

fn decode_exec(b: &[u8]) -> Result<ExecRecord, RawError> {
    if b.len() < OFF_ARGV {
        return Err(RawError::Short(b.len()));
    }
    let filename_len = u32_at(b, 56) as usize;
    let argv_len = u32_at(b, 60) as usize;
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
        tgid: u32_at(b, 4),
        tid: u32_at(b, 8),
        ppid: u32_at(b, 12),
        uid: u32_at(b, 16),
        gid: u32_at(b, 20),
        ktime_ns: u64_at(b, 24),
        cgroup_id: u64_at(b, 32),
        comm: c_string(&b[40..56]),
        filename: String::from_utf8_lossy(&b[OFF_FILENAME..OFF_FILENAME + filename_len])
            .into_owned(),
        argv: split_argv(&b[OFF_ARGV..OFF_ARGV + argv_len]),
        argv_truncated: u32_at(b, 64) != 0,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a record the way the kernel program lays it out.
    pub(crate) fn exec_bytes(filename: &str, argv: &[u8], truncated: bool) -> Vec<u8> {
        let mut b = vec![0u8; OFF_ARGV + argv.len()];
        b[0..4].copy_from_slice(&KIND_EXEC.to_ne_bytes());
        b[4..8].copy_from_slice(&100u32.to_ne_bytes());
        b[8..12].copy_from_slice(&101u32.to_ne_bytes());
        b[12..16].copy_from_slice(&1u32.to_ne_bytes());
        b[16..20].copy_from_slice(&1000u32.to_ne_bytes());
        b[20..24].copy_from_slice(&1000u32.to_ne_bytes());
        b[24..32].copy_from_slice(&123u64.to_ne_bytes());
        b[32..40].copy_from_slice(&7u64.to_ne_bytes());
        b[40..44].copy_from_slice(b"bash");
        b[56..60].copy_from_slice(&(filename.len() as u32).to_ne_bytes());
        b[60..64].copy_from_slice(&(argv.len() as u32).to_ne_bytes());
        b[64..68].copy_from_slice(&(truncated as u32).to_ne_bytes());
        b[OFF_FILENAME..OFF_FILENAME + filename.len()].copy_from_slice(filename.as_bytes());
        b[OFF_ARGV..].copy_from_slice(argv);
        b
    }

    #[test]
    fn decodes_exec() {
        let b = exec_bytes("/bin/ls", b"ls\0-l\0/tmp\0", false);
        let RawRecord::Exec(r) = decode(&b).unwrap();
        assert_eq!(r.filename, "/bin/ls");
        assert_eq!(r.argv, ["ls", "-l", "/tmp"]);
        assert_eq!(r.comm, "bash");
        assert_eq!((r.tgid, r.tid, r.ppid), (100, 101, 1));
        assert!(!r.argv_truncated);
    }

    #[test]
    fn empty_arguments_are_kept() {
        let b = exec_bytes("/bin/echo", b"echo\0\0x\0", false);
        let RawRecord::Exec(r) = decode(&b).unwrap();
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

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(decode(&[1, 0]), Err(RawError::Short(2)));
        assert_eq!(decode(&[9, 0, 0, 0]), Err(RawError::UnknownKind(9)));
        assert!(matches!(decode(&[1, 0, 0, 0, 5]), Err(RawError::Short(5))));
    }
}
