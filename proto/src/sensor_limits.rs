//! What the kernel sensor can hold: its maps' sizes and the shape of a
//! path prefix it matches. One home for three checks that must agree:
//! the sensor's own (bpf), the node's local configuration and the task
//! check every host runs on a fleet configuration task. A fleet setting
//! that passes the task check is then one every sensor loads, instead of
//! a task reported `applied` whose filters the sensor refused.

/// Bytes of a path prefix the kernel matches (its LPM trie key).
pub const PREFIX_BYTES: usize = 256;
/// Most watched, and most quiet, path prefixes (the tries' sizes).
pub const PREFIXES: usize = 1024;
/// Most allow-listed executables, and most cgroups (the hash maps' sizes).
pub const QUIET_ENTRIES: usize = 1024;
/// Bytes a configured prefix may take: a `~/` prefix becomes one per home
/// directory, and this leaves 64 bytes for the home.
pub const CONFIGURED_PREFIX_BYTES: usize = PREFIX_BYTES - 64;
/// Longest allow-listed executable or cgroup path (Linux's PATH_MAX).
pub const QUIET_PATH_BYTES: usize = 4096;

/// Checks a list of watched or quiet path prefixes as configured: each an
/// absolute path or one under every home (`~/`), at most
/// [`CONFIGURED_PREFIX_BYTES`], and at most [`PREFIXES`] of them. A `~/`
/// prefix on a host with many homes can still expand beyond the trie; the
/// sensor refuses that, and the node logs it.
pub fn check_prefixes(values: &[String]) -> Result<(), String> {
    if values.len() > PREFIXES {
        return Err(format!("{} prefixes; at most {PREFIXES}", values.len()));
    }
    for p in values {
        let ok = (p.starts_with('/') || p.starts_with("~/"))
            && p.len() <= CONFIGURED_PREFIX_BYTES
            && !p.contains('\0');
        if !ok {
            return Err(format!(
                "{p:?}: a prefix is an absolute path or starts with ~/, at most {CONFIGURED_PREFIX_BYTES} bytes"
            ));
        }
    }
    Ok(())
}

/// Checks a list of allow-listed executables: absolute paths (a relative
/// one would be looked up from wherever the node runs) of at most
/// [`QUIET_PATH_BYTES`], and at most [`QUIET_ENTRIES`].
pub fn check_quiet_exes(values: &[String]) -> Result<(), String> {
    check_quiet(values, true)
}

/// Checks a list of allow-listed cgroups: paths in the cgroup2 hierarchy
/// (`/system.slice/backup.service`; the leading `/` may be left out) of at
/// most [`QUIET_PATH_BYTES`], and at most [`QUIET_ENTRIES`].
pub fn check_quiet_cgroups(values: &[String]) -> Result<(), String> {
    check_quiet(values, false)
}

fn check_quiet(values: &[String], absolute: bool) -> Result<(), String> {
    if values.len() > QUIET_ENTRIES {
        return Err(format!("{} entries; at most {QUIET_ENTRIES}", values.len()));
    }
    let bad = |v: &String| {
        v.is_empty()
            || (absolute && !v.starts_with('/'))
            || v.len() > QUIET_PATH_BYTES
            || v.contains('\0')
    };
    match values.iter().find(|v| bad(v)) {
        Some(v) => Err(format!(
            "{:?}: {}a path of 1 to {QUIET_PATH_BYTES} bytes",
            v.chars().take(80).collect::<String>(),
            if absolute { "an absolute " } else { "" }
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prefixes_are_absolute_or_under_homes_and_fit_the_trie() {
        assert!(check_prefixes(&strings(&["/etc/", "~/.ssh/", "/etc/cron*"])).is_ok());
        for bad in ["etc/shadow", "", "~user/x", "/a\0b"] {
            assert!(check_prefixes(&strings(&[bad])).is_err(), "{bad:?}");
        }
        let long = format!("/{}", "a".repeat(CONFIGURED_PREFIX_BYTES));
        assert!(check_prefixes(&[long]).is_err());
        let many = vec!["/x".to_string(); PREFIXES + 1];
        assert!(check_prefixes(&many).unwrap_err().contains("at most 1024"));
        assert!(check_prefixes(&many[..PREFIXES]).is_ok());
    }

    #[test]
    fn quiet_lists_fit_the_maps_and_executables_are_absolute() {
        assert!(check_quiet_exes(&strings(&["/usr/bin/updatedb"])).is_ok());
        assert!(check_quiet_exes(&strings(&["updatedb"])).is_err());
        assert!(check_quiet_cgroups(&strings(&["/system.slice/x", "user.slice"])).is_ok());
        assert!(check_quiet_cgroups(&strings(&[""])).is_err());
        let long = format!("/{}", "a".repeat(QUIET_PATH_BYTES));
        assert!(check_quiet_exes(std::slice::from_ref(&long)).is_err());
        assert!(check_quiet_cgroups(&[long]).is_err());
        let many = vec!["/x".to_string(); QUIET_ENTRIES + 1];
        assert!(check_quiet_exes(&many).is_err());
        assert!(check_quiet_cgroups(&many).is_err());
        assert!(check_quiet_cgroups(&many[..QUIET_ENTRIES]).is_ok());
    }
}
