//! Library side of `starlingctl`: rendering events for people (a table that
//! is safe to print on a terminal) and for programs (JSON lines).

use std::time::{Duration, UNIX_EPOCH};

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
        "{:<24} {:<16} {:>8} {:<12} {:>7} {:>7} {:>5}  {}",
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
        None => String::from("(no body)"),
    };
    format!(
        "{:<24} {:<16} {:>8} {:<12} {:>7} {:>7} {:>5}  {}",
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
            })),
        };
        let row = event_row(&e);
        assert!(row.contains("web-01"), "{row}");
        assert!(row.contains("[echo 'hello world']"), "{row}");
        assert!(row.contains("parent=/bin/bash"), "{row}");
        assert!(row.contains(" 42 "), "{row}");
    }
}
