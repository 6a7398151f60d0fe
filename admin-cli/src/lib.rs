//! Library side of `starlingctl`: rendering events for people (a table that
//! is safe to print on a terminal) and for programs (JSON lines), the
//! task plane's files ([`tasks`]) and the fleet's hosts ([`fleet`]).

pub mod fleet;
pub mod rollout;
pub mod tasks;

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

/// `--data-dir` of the commands that read a running node's files (its
/// mesh and task status, its task inbox).
#[derive(Debug, Clone, clap::Args)]
pub struct NodeDataDir {
    /// The node's data directory (its `data_dir`).
    #[arg(
        long,
        env = "STARLING_NODE_DATA",
        default_value = "/var/lib/starling/node"
    )]
    pub data_dir: PathBuf,
}

use starling_proto::v1::{event::Body, event_loss::Reason, Event};

/// Makes untrusted text safe for a terminal: control characters (escape
/// sequences included) become `\xNN`.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Quotes an argument the way a shell user would read it back.
pub fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        sanitize(arg)
    } else {
        format!("'{}'", sanitize(&arg.replace('\'', r"'\''")))
    }
}

/// Header line of [`event_row`]'s table.
pub fn table_header() -> String {
    format!(
        "{:<24} {:<16} {:>8} {:<16} {:>7} {:>7} {:>5}  {}",
        "TIME", "HOST", "SEQ", "KIND", "PID", "PPID", "UID", "DETAIL"
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// "address:port" of a socket end, with brackets around IPv6 addresses.
fn endpoint(e: &Option<starling_proto::v1::SocketEndpoint>) -> String {
    match e {
        Some(e) if e.address.contains(':') => format!("[{}]:{}", sanitize(&e.address), e.port),
        Some(e) => format!("{}:{}", sanitize(&e.address), e.port),
        None => "?".into(),
    }
}

/// `detail`, followed by the error when `result` is a negated errno.
/// A path, and how the caller wrote it when that was different
/// ("/etc/shadow (as /tmp/../etc/shadow)").
fn as_written(path: &str, written: &str) -> String {
    if written.is_empty() {
        sanitize(path)
    } else {
        format!("{} (as {})", sanitize(path), sanitize(written))
    }
}

fn with_result(detail: String, result: i32) -> String {
    if result < 0 {
        format!(
            "{detail}  failed: {}",
            std::io::Error::from_raw_os_error(-result)
        )
    } else {
        detail
    }
}

/// One human-readable line for an event.
pub fn event_row(e: &Event) -> String {
    let h = e.header.clone().unwrap_or_default();
    let time = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(h.time_unix_ns));
    let detail = match &e.body {
        Some(Body::ProcessExec(x)) => {
            let argv: Vec<String> = x.argv.iter().map(|a| shell_quote(a)).collect();
            let mut d = format!("{}  [{}]", sanitize(&x.filename), argv.join(" "));
            if x.argv_truncated {
                d.push_str(" (argv truncated)");
            }
            if !x.parent_exe.is_empty() {
                d.push_str(&format!("  parent={}", sanitize(&x.parent_exe)));
            }
            if !x.cwd.is_empty() {
                d.push_str(&format!("  cwd={}", sanitize(&x.cwd)));
            }
            if !x.tty.is_empty() {
                d.push_str(&format!("  tty={}", sanitize(&x.tty)));
            }
            if x.exe_memfd {
                d.push_str("  exe=memfd");
            } else if x.exe_deleted {
                d.push_str("  exe=deleted");
            }
            match (x.stdin_is_socket, x.stdout_is_socket) {
                (true, true) => d.push_str("  stdin+stdout=socket"),
                (true, false) => d.push_str("  stdin=socket"),
                (false, true) => d.push_str("  stdout=socket"),
                (false, false) => {}
            }
            d
        }
        Some(Body::EventLoss(l)) => {
            let reason = Reason::try_from(l.reason)
                .map(|r| r.as_str_name())
                .unwrap_or("REASON_UNSPECIFIED");
            let mut d = format!("{} events lost: {reason}", l.count);
            if l.first_seq > 0 {
                d.push_str(&format!(" (seq {}..={})", l.first_seq, l.last_seq));
            }
            d
        }
        Some(Body::ProcessFork(f)) => format!("child pid {}", f.child_pid),
        Some(Body::ProcessExit(x)) => match x.signal {
            0 => format!("exit code {}", x.exit_code),
            sig if x.core_dumped => format!("killed by signal {sig} (core dumped)"),
            sig => format!("killed by signal {sig}"),
        },
        Some(Body::TcpConnect(c)) => {
            let mut d = format!("{} -> {}", endpoint(&c.local), endpoint(&c.remote));
            if c.result != 0 {
                d.push_str(&format!(
                    "  failed: {}",
                    std::io::Error::from_raw_os_error(-c.result)
                ));
            }
            d
        }
        Some(Body::TcpAccept(a)) => {
            format!("{} <- {}", endpoint(&a.local), endpoint(&a.remote))
        }
        Some(Body::TcpListen(l)) => format!("listening on {}", endpoint(&l.local)),
        Some(Body::FileOpen(f)) => {
            let how = match (f.created, f.write) {
                (true, _) => "created",
                (false, true) => "opened for writing",
                (false, false) => "opened",
            };
            format!("{}  {how}", sanitize(&f.path))
        }
        Some(Body::FileRename(f)) => with_result(
            format!(
                "{} -> {}",
                as_written(&f.old_path, &f.written_old_path),
                as_written(&f.new_path, &f.written_new_path)
            ),
            f.result,
        ),
        Some(Body::FileUnlink(f)) => with_result(as_written(&f.path, &f.written_path), f.result),
        Some(Body::FileChmod(f)) => format!(
            "{}  mode {:o} (directory {:o})",
            sanitize(&f.path),
            f.mode & 0o7777,
            f.parent_mode & 0o7777
        ),
        Some(Body::DevFileWrite(f)) => {
            format!("{}  regular file written on /dev", sanitize(&f.path))
        }
        Some(Body::PrivilegeChange(p)) => {
            let ids = |c: &Option<starling_proto::v1::Credentials>| {
                c.as_ref().map_or("?".to_owned(), |c| {
                    format!(
                        "uid={} euid={} gid={} egid={}",
                        c.uid, c.euid, c.gid, c.egid
                    )
                })
            };
            format!(
                "{}: {} -> {}",
                sanitize(&p.call),
                ids(&p.before),
                ids(&p.after)
            )
        }
        Some(Body::Ptrace(p)) => with_result(
            format!("{} pid {}", sanitize(&p.request), p.target_pid),
            p.result.min(0),
        ),
        Some(Body::MemfdCreate(m)) => {
            with_result(format!("memfd {:?}", sanitize(&m.name)), m.result.min(0))
        }
        Some(Body::BpfProgramLoad(b)) => with_result(
            format!(
                "program {:?} type {} ({} instructions)",
                sanitize(&b.prog_name),
                b.prog_type,
                b.insn_count
            ),
            b.result.min(0),
        ),
        Some(Body::SocketBind(b)) => {
            format!("{} bound to {}", sanitize(&b.protocol), endpoint(&b.local))
        }
        Some(Body::DnsQuery(d)) => {
            let question = if d.error.is_empty() {
                format!("{} {}", sanitize(&d.query_type), sanitize(&d.name))
            } else {
                format!("({})", sanitize(&d.error))
            };
            with_result(
                format!("{question}  to {}", endpoint(&d.server)),
                d.result.min(0),
            )
        }
        Some(Body::ModuleLoad(m)) => {
            format!(
                "module {:?} loaded (taints {:#x})",
                sanitize(&m.name),
                m.taints
            )
        }
        Some(Body::TaskState(t)) => {
            let detail = if t.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", sanitize(&t.detail))
            };
            format!(
                "task {} ({}) {}{detail}",
                sanitize(&t.task_id),
                sanitize(&t.kind),
                sanitize(&t.state)
            )
        }
        None => String::from("(no body)"),
    };
    let context = match &h.container {
        Some(c) if !c.pod_name.is_empty() => {
            format!(
                "  [pod {}/{} {}]",
                sanitize(&c.pod_namespace),
                sanitize(&c.pod_name),
                sanitize(&c.container_name)
            )
        }
        // Docker's short form of an id: its first 12 digits.
        Some(c) => format!(
            "  [{} {}]",
            sanitize(&c.runtime),
            sanitize(&c.id.chars().take(12).collect::<String>())
        ),
        None => String::new(),
    };
    let detail = detail + &context;
    format!(
        "{:<24} {:<16} {:>8} {:<16} {:>7} {:>7} {:>5}  {}",
        time.to_string(),
        truncate(&sanitize(&h.host_id), 16),
        h.seq,
        starling_proto::event_kind(e),
        h.pid,
        h.ppid,
        h.uid,
        detail
    )
}

/// A person's view of one member's mesh status: who it is and where its
/// events go, its cell's aggregators and members, the sinks, and the
/// control traffic. `now_ms` dates the status (Unix milliseconds).
pub fn render_mesh_status(s: &starling_mesh::status::MeshStatus, now_ms: u64) -> String {
    use std::fmt::Write;
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |m| format!("{m:.1} ms"));
    let mut out = String::new();
    let age = now_ms.saturating_sub(s.written_at_ms) as f64 / 1000.0;
    let _ = writeln!(
        out,
        "host {}  peer {}  (status {age:.1} s old)",
        sanitize(&s.host),
        truncate(&s.peer_id, 16)
    );
    match &s.uplink {
        Some(u) => {
            let what = if u.role == "sink" {
                "sink"
            } else {
                "aggregator"
            };
            let _ = writeln!(
                out,
                "uplink  -> {} ({what}) at {}",
                sanitize(&u.to),
                sanitize(&u.address)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "uplink  -> none: no aggregator or sink reachable; events stay spooled"
            );
        }
    }
    if s.is_aggregator {
        let _ = writeln!(
            out,
            "role    aggregator of its cell, {} nodes attached",
            s.relay_nodes
        );
    }
    match &s.cell {
        None => {
            let _ = writeln!(out, "cell    not joined yet");
        }
        Some(c) => {
            let _ = writeln!(
                out,
                "cell    {}  {} members, {} aggregators\n",
                sanitize(&c.name),
                c.members.len(),
                c.aggregators.len()
            );
            let _ = writeln!(
                out,
                "AGGREGATORS\n{:<24} {:>5} {:>9} {:>9} {:<22} {:>9}",
                "HOST", "LOAD", "ATTACHED", "CAPACITY", "RELAY", "RTT"
            );
            for a in &c.aggregators {
                let m = c.members.iter().find(|m| &m.host == a);
                let _ = writeln!(
                    out,
                    "{:<24} {:>4}% {:>9} {:>9} {:<22} {:>9}",
                    truncate(&sanitize(a), 24),
                    m.map_or(0, |m| m.load_pct),
                    m.map_or(0, |m| m.attached),
                    m.map_or(0, |m| m.capacity),
                    truncate(&m.map(|m| sanitize(&m.relay)).unwrap_or_default(), 22),
                    ms(m.and_then(|m| m.rtt_ms)),
                );
            }
            let _ = writeln!(
                out,
                "\nMEMBERS\n{:<24} {:<11} {:>5} {:<10} {:>9}",
                "HOST", "ROLE", "LOAD", "VERSION", "RTT"
            );
            for m in &c.members {
                let role = if c.aggregators.contains(&m.host) {
                    "aggregator"
                } else if !m.known {
                    "(joining)"
                } else {
                    "node"
                };
                let _ = writeln!(
                    out,
                    "{:<24} {:<11} {:>4}% {:<10} {:>9}",
                    truncate(&sanitize(&m.host), 24),
                    role,
                    m.load_pct,
                    truncate(&sanitize(&m.agent_version), 10),
                    ms(m.rtt_ms)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nSINKS\n{:<24} {:<22} {:>5} {:>9} {:>7}",
        "NAME", "INGRESS", "LOAD", "RTT", "HEARD"
    );
    if s.sinks.is_empty() {
        let _ = writeln!(out, "(none heard yet)");
    }
    for k in &s.sinks {
        let _ = writeln!(
            out,
            "{:<24} {:<22} {:>4}% {:>9} {:>6.0}s",
            truncate(&sanitize(&k.name), 24),
            truncate(&sanitize(&k.ingress), 22),
            k.load_pct,
            ms(k.rtt_ms),
            k.heard_secs_ago
        );
    }
    let c = &s.control;
    let _ = writeln!(
        out,
        "\npeers   {} admitted, {} refused, {} in the DHT; referred to {} cell-mates, referred {} dialers\ncontrol membership {} B in / {} B out ({} dropped), gossip {} B in\nhealth  {}",
        s.admitted_peers,
        s.refused_peers,
        s.dht_peers,
        c.referred_to,
        c.referrals_given,
        c.swim_bytes_in,
        c.swim_bytes_out,
        c.swim_dropped,
        c.gossip_bytes_in,
        match c.local_health {
            0 => "ok".to_owned(),
            n => format!("busy (score {n} of 8: suspicion timeouts stretched {}x)", 1 + n),
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::v1::{EventHeader, ProcessExec};

    #[test]
    fn terminal_escapes_are_neutralised() {
        assert_eq!(sanitize("a\u{1b}[2Jb"), "a\\x1b[2Jb");
        assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
        assert_eq!(shell_quote("--flag=1"), "--flag=1");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn exec_row_shows_argv_and_parent() {
        let e = Event {
            header: Some(EventHeader {
                host_id: "web-01".into(),
                seq: 42,
                pid: 10,
                ppid: 9,
                ..Default::default()
            }),
            body: Some(Body::ProcessExec(ProcessExec {
                filename: "/bin/echo".into(),
                argv: vec!["echo".into(), "hello world".into()],
                argv_truncated: false,
                parent_exe: "/bin/bash".into(),
                tty: String::new(),
                stdin_is_socket: true,
                stdout_is_socket: true,
                cwd: "/srv".into(),
                exe_memfd: true,
                ..Default::default()
            })),
        };
        let row = event_row(&e);
        assert!(row.contains("cwd=/srv"), "{row}");
        assert!(row.contains("exe=memfd"), "{row}");
        assert!(row.contains("web-01"), "{row}");
        assert!(row.contains("[echo 'hello world']"), "{row}");
        assert!(row.contains("parent=/bin/bash"), "{row}");
        assert!(row.contains("stdin+stdout=socket"), "{row}");
        assert!(row.contains(" 42 "), "{row}");
    }

    #[test]
    fn file_privilege_and_tampering_rows_say_what_happened() {
        use starling_proto::v1::{
            BpfProgramLoad, Container, Credentials, FileRename, PrivilegeChange, Ptrace,
        };
        let event = |body: Body| Event {
            header: Some(EventHeader {
                container: Some(Container {
                    id: "4c1b2e3f4c1b2e3f00".into(),
                    runtime: "docker".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            body: Some(body),
        };
        let row = event_row(&event(Body::FileRename(FileRename {
            old_path: "/tmp/x".into(),
            new_path: "/etc/cron.d/x".into(),
            result: -13,
            path_truncated: false,
            written_new_path: "/tmp/../etc/cron.d/x".into(),
            ..Default::default()
        })));
        assert!(
            row.contains("/tmp/x -> /etc/cron.d/x (as /tmp/../etc/cron.d/x)"),
            "{row}"
        );
        assert!(row.contains("failed: Permission denied"), "{row}");
        assert!(row.contains("[docker 4c1b2e3f4c1b]"), "{row}");
        let creds = |uid| Credentials {
            uid,
            euid: uid,
            ..Default::default()
        };
        let row = event_row(&event(Body::PrivilegeChange(PrivilegeChange {
            call: "setresuid".into(),
            before: Some(creds(1000)),
            after: Some(creds(0)),
        })));
        assert!(row.contains("setresuid: uid=1000 euid=1000"), "{row}");
        assert!(row.contains("-> uid=0 euid=0"), "{row}");
        let row = event_row(&event(Body::Ptrace(Ptrace {
            request: "PTRACE_ATTACH".into(),
            target_pid: 77,
            result: 0,
        })));
        assert!(row.contains("PTRACE_ATTACH pid 77"), "{row}");
        assert!(!row.contains("failed"), "{row}");
        let row = event_row(&event(Body::BpfProgramLoad(BpfProgramLoad {
            prog_type: 1,
            prog_name: "x".into(),
            insn_count: 2,
            result: 5,
        })));
        assert!(row.contains("type 1 (2 instructions)"), "{row}");
    }

    #[test]
    fn dns_bind_and_module_rows_say_what_happened() {
        use starling_proto::v1::{DnsQuery, ModuleLoad, SocketBind, SocketEndpoint};
        let ep = |address: &str, port| {
            Some(SocketEndpoint {
                address: address.into(),
                port,
            })
        };
        let row = |body| {
            event_row(&Event {
                header: Some(Default::default()),
                body: Some(body),
            })
        };
        let dns = row(Body::DnsQuery(DnsQuery {
            server: ep("::1", 53),
            name: "evil.example".into(),
            query_type: "TXT".into(),
            result: 40,
            ..Default::default()
        }));
        assert!(dns.contains("TXT evil.example  to [::1]:53"), "{dns}");
        let broken = row(Body::DnsQuery(DnsQuery {
            server: ep("10.0.0.1", 53),
            error: "no question".into(),
            result: -101,
            ..Default::default()
        }));
        assert!(
            broken.contains("(no question)  to 10.0.0.1:53  failed"),
            "{broken}"
        );
        let bind = row(Body::SocketBind(SocketBind {
            local: ep("0.0.0.0", 8080),
            protocol: "udp".into(),
        }));
        assert!(bind.contains("udp bound to 0.0.0.0:8080"), "{bind}");
        let module = row(Body::ModuleLoad(ModuleLoad {
            name: "nf_x".into(),
            taints: 0x3000,
        }));
        assert!(
            module.contains("module \"nf_x\" loaded (taints 0x3000)"),
            "{module}"
        );
    }

    #[test]
    fn network_and_exit_rows_name_both_ends_and_the_outcome() {
        use starling_proto::v1::{ProcessExit, SocketEndpoint, TcpConnect};
        let ep = |address: &str, port| {
            Some(SocketEndpoint {
                address: address.into(),
                port,
            })
        };
        let event = |body| Event {
            header: Some(EventHeader::default()),
            body: Some(body),
        };
        let row = event_row(&event(Body::TcpConnect(TcpConnect {
            local: ep("::1", 40000),
            remote: ep("::1", 22),
            result: -111,
        })));
        assert!(row.contains("[::1]:40000 -> [::1]:22"), "{row}");
        assert!(row.contains("failed: Connection refused"), "{row}");
        let row = event_row(&event(Body::ProcessExit(ProcessExit {
            exit_code: 0,
            signal: 11,
            core_dumped: true,
        })));
        assert!(row.contains("killed by signal 11 (core dumped)"), "{row}");
    }
}
