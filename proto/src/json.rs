//! JSON view of events, for `starlingctl --json` and for consumers that do
//! not speak protobuf. Field names follow the proto field names; the shape is
//! documented in docs/events.md and only grows by adding fields.

use serde_json::{json, Map, Value};

use crate::v1::{event::Body, event_loss::Reason, Event, SocketEndpoint};

fn endpoint(e: &Option<SocketEndpoint>) -> Value {
    match e {
        Some(e) => json!({ "address": e.address, "port": e.port }),
        None => Value::Null,
    }
}

/// Maps an event to its JSON view.
pub fn event_to_json(event: &Event) -> Value {
    let mut out = Map::new();
    out.insert("kind".into(), json!(crate::event_kind(event)));
    if let Some(h) = &event.header {
        out.insert(
            "header".into(),
            json!({
                "host_id": h.host_id,
                "seq": h.seq,
                "ktime_ns": h.ktime_ns,
                "time_unix_ns": h.time_unix_ns,
                "pid": h.pid,
                "tid": h.tid,
                "ppid": h.ppid,
                "uid": h.uid,
                "gid": h.gid,
                "comm": h.comm,
                "exe": h.exe,
                "cgroup_id": h.cgroup_id,
            }),
        );
    }
    match &event.body {
        Some(Body::ProcessExec(e)) => {
            out.insert(
                "process_exec".into(),
                json!({
                    "filename": e.filename,
                    "argv": e.argv,
                    "argv_truncated": e.argv_truncated,
                    "parent_exe": e.parent_exe,
                    "tty": e.tty,
                    "stdin_is_socket": e.stdin_is_socket,
                    "stdout_is_socket": e.stdout_is_socket,
                }),
            );
        }
        Some(Body::EventLoss(l)) => {
            let reason = Reason::try_from(l.reason)
                .map(|r| r.as_str_name())
                .unwrap_or("REASON_UNSPECIFIED");
            out.insert(
                "event_loss".into(),
                json!({
                    "reason": reason,
                    "count": l.count,
                    "first_seq": l.first_seq,
                    "last_seq": l.last_seq,
                }),
            );
        }
        Some(Body::ProcessFork(f)) => {
            out.insert("process_fork".into(), json!({ "child_pid": f.child_pid }));
        }
        Some(Body::ProcessExit(x)) => {
            out.insert(
                "process_exit".into(),
                json!({
                    "exit_code": x.exit_code,
                    "signal": x.signal,
                    "core_dumped": x.core_dumped,
                }),
            );
        }
        Some(Body::TcpConnect(c)) => {
            out.insert(
                "tcp_connect".into(),
                json!({
                    "local": endpoint(&c.local),
                    "remote": endpoint(&c.remote),
                    "result": c.result,
                }),
            );
        }
        Some(Body::TcpAccept(a)) => {
            out.insert(
                "tcp_accept".into(),
                json!({ "local": endpoint(&a.local), "remote": endpoint(&a.remote) }),
            );
        }
        Some(Body::TcpListen(l)) => {
            out.insert("tcp_listen".into(), json!({ "local": endpoint(&l.local) }));
        }
        None => {}
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{EventHeader, EventLoss, ProcessExec};

    #[test]
    fn exec_maps_header_and_body() {
        let e = Event {
            header: Some(EventHeader {
                host_id: "h".into(),
                seq: 9,
                pid: 5,
                ..Default::default()
            }),
            body: Some(Body::ProcessExec(ProcessExec {
                filename: "/bin/ls".into(),
                argv: vec!["ls".into(), "-l".into()],
                ..Default::default()
            })),
        };
        let v = event_to_json(&e);
        assert_eq!(v["kind"], "process_exec");
        assert_eq!(v["header"]["seq"], 9);
        assert_eq!(v["process_exec"]["argv"][1], "-l");
    }

    #[test]
    fn loss_reason_is_named() {
        let e = Event {
            header: None,
            body: Some(Body::EventLoss(EventLoss {
                reason: Reason::SpoolQuota as i32,
                count: 3,
                first_seq: 1,
                last_seq: 3,
            })),
        };
        assert_eq!(event_to_json(&e)["event_loss"]["reason"], "SPOOL_QUOTA");
    }
}
