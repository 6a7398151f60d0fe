//! Facts about the machine and the agent's own use of it, for the
//! heartbeat a member sends with its task report (docs/tasks.md, "The
//! fleet's hosts"). Read from /proc and /etc/os-release; a fact that
//! cannot be read is left empty rather than failing the member.

use std::time::Instant;

/// What does not change while the agent runs.
#[derive(Debug, Clone, Default)]
pub struct MachineFacts {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// `PRETTY_NAME` of /etc/os-release (or /usr/lib/os-release).
    pub os: String,
    /// Machine architecture the agent was built for.
    pub arch: String,
}

impl MachineFacts {
    /// Reads the facts of this machine.
    pub fn read() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let os = ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| pretty_name(&text))
            .unwrap_or_default();
        Self {
            kernel,
            os,
            arch: std::env::consts::ARCH.to_owned(),
        }
    }
}

/// `PRETTY_NAME` of an os-release file, unquoted.
fn pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?;
        Some(value.trim().trim_matches('"').trim_matches('\'').to_owned())
    })
}

/// The agent's CPU between two samples, and its resident memory.
#[derive(Debug)]
pub struct ProcessUsage {
    last: Option<(u64, Instant)>,
    ticks_per_second: f64,
    page_bytes: u64,
}

impl Default for ProcessUsage {
    fn default() -> Self {
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Self {
            last: None,
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_bytes: if page > 0 { page as u64 } else { 4096 },
        }
    }
}

impl ProcessUsage {
    /// CPU since the last sample (percent of one core; 0 on the first)
    /// and resident bytes now.
    pub fn sample(&mut self) -> (f32, u64) {
        let now = Instant::now();
        let ticks = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| cpu_ticks(&s));
        let cpu = match (ticks, self.last) {
            (Some(t), Some((before, at))) => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    (t.saturating_sub(before) as f64 / self.ticks_per_second / secs * 100.0) as f32
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        if let Some(t) = ticks {
            self.last = Some((t, now));
        }
        let rss = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| pages * self.page_bytes);
        (cpu, rss)
    }
}

/// utime + stime of a /proc/<pid>/stat line (fields 14 and 15; the
/// command name in parentheses may hold spaces).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_pretty_name_is_unquoted() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(pretty_name("ID=x\n"), None);
    }

    #[test]
    fn cpu_ticks_survive_a_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(12));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_machine_has_facts_and_this_process_uses_memory() {
        let facts = MachineFacts::read();
        assert!(!facts.kernel.is_empty());
        assert_eq!(facts.arch, std::env::consts::ARCH);
        let mut usage = ProcessUsage::default();
        let (first_cpu, rss) = usage.sample();
        assert_eq!(first_cpu, 0.0);
        assert!(rss > 0);
    }
}
