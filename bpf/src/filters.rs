//! The kernel-side filters: what the node's config asks for, checked and
//! resolved in userspace, then written into the object's settings record,
//! tries and hash maps (docs/sensor.md, "In-kernel filters").

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, Map};
use aya::Ebpf;

use crate::raw::{kind_number, KINDS};
use crate::{cgroup, map_err, SensorError};

/// Bytes of a path prefix the kernel matches (its LPM trie key); the map
/// sizes live with the checks that keep configurations within them.
pub const PREFIX_MAX: usize = starling_proto::sensor_limits::PREFIX_BYTES;
/// Most watched (and most quiet) path prefixes (the tries' sizes).
pub const PREFIXES_MAX: usize = starling_proto::sensor_limits::PREFIXES;
/// Most allow-listed executables and cgroups (the hash maps' sizes).
pub const QUIET_MAX: usize = starling_proto::sensor_limits::QUIET_ENTRIES;

/// A rate limit for one kind of record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// A kind name of [`crate::KIND_NAMES`].
    pub kind: String,
    /// Records per second allowed on the host, split evenly across CPUs.
    pub per_second: u64,
    /// Records allowed at once after a quiet spell, across CPUs.
    pub burst: u64,
}

/// What the kernel reports and what it leaves out. Set at load and
/// replaceable at runtime with [`crate::Sensor::apply_filters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SensorFilters {
    /// Records caused by this process (the node itself) are not made.
    pub own_pid: Option<u32>,
    /// Kinds not reported (names of [`crate::KIND_NAMES`]).
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

impl SensorFilters {
    /// Whether `path` is under a watched prefix and not under a quiet one,
    /// or, failing that, `path` with a "/" after it (a directory renamed
    /// or removed is named without its slash): the kernel's test for
    /// renames and unlinks, for the paths it leaves to the node
    /// ([`crate::FileRecord::unmatched`]).
    pub fn watches(&self, path: &str) -> bool {
        let under = |prefixes: &[String], p: &str| prefixes.iter().any(|x| p.starts_with(x));
        let dir = format!("{path}/");
        let matched = [path, dir.as_str()]
            .into_iter()
            .find(|p| under(&self.watched_paths, p));
        matched.is_some_and(|p| !under(&self.quiet_paths, p))
    }
}

/// `path` with its empty and "." components dropped and each ".." taking
/// off the component before it ("/tmp/../etc//shadow" is "/etc/shadow").
/// This is text: where a ".." follows a symbolic link, the kernel goes to
/// the link target's parent instead. The node matches this form of the
/// paths the kernel could not match as the caller wrote them.
pub fn lexical_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    if parts.is_empty() {
        return "/".to_owned();
    }
    parts
        .iter()
        .fold(String::with_capacity(path.len()), |mut out, p| {
            out.push('/');
            out.push_str(p);
            out
        })
}

/// The kernel's settings record (struct starling_settings in events.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SettingsValue {
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

/// Filters checked and resolved (kinds to numbers, paths to inodes and
/// cgroup ids), ready to be written into the kernel's maps.
pub(crate) struct CompiledFilters {
    value: SettingsValue,
    watched: Vec<Key<[u8; PREFIX_MAX]>>,
    quiet: Vec<Key<[u8; PREFIX_MAX]>>,
    exes: Vec<ExeKey>,
    cgroups: Vec<u64>,
}

impl CompiledFilters {
    /// Checks `f` and resolves it; the warnings name what was skipped.
    pub(crate) fn new(f: &SensorFilters) -> Result<(Self, Vec<String>), SensorError> {
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

    /// Writes the filters into the object's maps; the ring buffer's wakeup
    /// threshold goes into the same settings record.
    pub(crate) fn install(&self, bpf: &mut Ebpf, wakeup_bytes: u32) -> Result<(), SensorError> {
        replace_prefixes(bpf, "watched_paths", &self.watched)?;
        replace_prefixes(bpf, "quiet_paths", &self.quiet)?;
        replace_hash_keys(bpf, "quiet_exes", &self.exes)?;
        replace_hash_keys(bpf, "quiet_cgroups", &self.cgroups)?;
        let mut settings: Array<_, SettingsValue> =
            Array::try_from(map_mut(bpf, "settings")?).map_err(map_err("settings"))?;
        let value = SettingsValue {
            wakeup_bytes,
            ..self.value
        };
        settings.set(0, value, 0).map_err(map_err("settings"))?;
        Ok(())
    }
}

/// A map of the object, by name.
fn map_mut<'a>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, SensorError> {
    bpf.map_mut(name).ok_or(SensorError::Map {
        map: name,
        detail: "missing from the object".into(),
    })
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
        LpmTrie::try_from(map_mut(bpf, name)?).map_err(map_err(name))?;
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
        BpfHashMap::try_from(map_mut(bpf, name)?).map_err(map_err(name))?;
    let old: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for k in keys {
        map.insert(k, 1, 0).map_err(map_err(name))?;
    }
    for k in old.iter().filter(|o| !keys.contains(o)) {
        map.remove(k).map_err(map_err(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_paths_drop_empty_and_dot_components_and_resolve_dot_dot() {
        for (written, lexical) in [
            ("/etc/shadow", "/etc/shadow"),
            ("/etc//shadow", "/etc/shadow"),
            ("/etc/./shadow", "/etc/shadow"),
            ("/tmp/../etc/shadow", "/etc/shadow"),
            ("/tmp/a/b/../../../etc/cron.d/x", "/etc/cron.d/x"),
            ("/../../etc/shadow", "/etc/shadow"),
            ("/root/.ssh/", "/root/.ssh"),
            ("/root/.ssh/.", "/root/.ssh"),
            ("/root/..", "/"),
            ("/", "/"),
            ("/a/...", "/a/..."),
        ] {
            assert_eq!(lexical_path(written), lexical, "{written}");
        }
    }

    #[test]
    fn watches_matches_prefixes_directories_without_their_slash_and_quiet_paths() {
        let f = SensorFilters {
            watched_paths: vec!["/etc/cron".into(), "/root/.ssh/".into()],
            quiet_paths: vec!["/etc/cron.d/quiet".into()],
            ..Default::default()
        };
        assert!(f.watches("/etc/crontab"));
        assert!(f.watches("/etc/cron.d/job"));
        assert!(f.watches("/root/.ssh/authorized_keys"));
        // The directory itself, as rename(2) names it.
        assert!(f.watches("/root/.ssh"));
        assert!(!f.watches("/root/.sshx"));
        assert!(!f.watches("/etc/passwd"));
        assert!(!f.watches("/etc/cron.d/quiet-job"));
        assert!(!SensorFilters::default().watches("/etc/shadow"));
    }
}
