//! JSON view of events, for `starlingctl --json` and for consumers that do
//! not speak protobuf. Field names follow the proto field names; the shape is
//! documented in docs/events.md and only grows by adding fields.

use serde_json::{json, Map, Value};

use crate::v1::{event::Body, event_loss::Reason, Credentials, Event, SocketEndpoint};

fn credentials(c: &Option<Credentials>) -> Value {
    match c {
        Some(c) => json!({
            "uid": c.uid,
            "euid": c.euid,
            "gid": c.gid,
            "egid": c.egid,
            "capabilities": c.capabilities,
        }),
        None => Value::Null,
    }
}

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
                "user": h.user,
                "cgroup_path": h.cgroup_path,
                "container": h.container.as_ref().map(|c| json!({
                    "id": c.id,
                    "runtime": c.runtime,
                    "pod_uid": c.pod_uid,
                    "pod_name": c.pod_name,
                    "pod_namespace": c.pod_namespace,
                    "container_name": c.container_name,
                })),
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
                    "cwd": e.cwd,
                    "cwd_truncated": e.cwd_truncated,
                    "euid": e.euid,
                    "egid": e.egid,
                    "exe_deleted": e.exe_deleted,
                    "exe_memfd": e.exe_memfd,
                    "ancestry": e.ancestry,
                    "exe_sha256": e.exe_sha256,
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
                    "kind": l.kind,
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
        Some(Body::FileOpen(f)) => {
            out.insert(
                "file_open".into(),
                json!({
                    "path": f.path,
                    "write": f.write,
                    "created": f.created,
                    "mode": f.mode,
                    "path_truncated": f.path_truncated,
                }),
            );
        }
        Some(Body::FileRename(f)) => {
            out.insert(
                "file_rename".into(),
                json!({
                    "old_path": f.old_path,
                    "new_path": f.new_path,
                    "result": f.result,
                    "path_truncated": f.path_truncated,
                    "written_old_path": f.written_old_path,
                    "written_new_path": f.written_new_path,
                }),
            );
        }
        Some(Body::FileUnlink(f)) => {
            out.insert(
                "file_unlink".into(),
                json!({
                    "path": f.path,
                    "result": f.result,
                    "path_truncated": f.path_truncated,
                    "written_path": f.written_path,
                }),
            );
        }
        Some(Body::FileChmod(f)) => {
            out.insert(
                "file_chmod".into(),
                json!({
                    "path": f.path,
                    "mode": f.mode,
                    "parent_mode": f.parent_mode,
                    "path_truncated": f.path_truncated,
                }),
            );
        }
        Some(Body::DevFileWrite(f)) => {
            out.insert(
                "dev_file_write".into(),
                json!({ "path": f.path, "created": f.created, "path_truncated": f.path_truncated }),
            );
        }
        Some(Body::PrivilegeChange(p)) => {
            out.insert(
                "privilege_change".into(),
                json!({
                    "call": p.call,
                    "before": credentials(&p.before),
                    "after": credentials(&p.after),
                }),
            );
        }
        Some(Body::Ptrace(p)) => {
            out.insert(
                "ptrace".into(),
                json!({ "request": p.request, "target_pid": p.target_pid, "result": p.result }),
            );
        }
        Some(Body::MemfdCreate(m)) => {
            out.insert(
                "memfd_create".into(),
                json!({ "name": m.name, "flags": m.flags, "result": m.result }),
            );
        }
        Some(Body::BpfProgramLoad(b)) => {
            out.insert(
                "bpf_program_load".into(),
                json!({
                    "prog_type": b.prog_type,
                    "prog_name": b.prog_name,
                    "insn_count": b.insn_count,
                    "result": b.result,
                }),
            );
        }
        Some(Body::SocketBind(b)) => {
            out.insert(
                "socket_bind".into(),
                json!({ "local": endpoint(&b.local), "protocol": b.protocol }),
            );
        }
        Some(Body::DnsQuery(d)) => {
            out.insert(
                "dns_query".into(),
                json!({
                    "server": endpoint(&d.server),
                    "local": endpoint(&d.local),
                    "name": d.name,
                    "query_type": d.query_type,
                    "id": d.id,
                    "result": d.result,
                    "error": d.error,
                }),
            );
        }
        Some(Body::ModuleLoad(m)) => {
            out.insert(
                "module_load".into(),
                json!({ "name": m.name, "taints": m.taints }),
            );
        }
        Some(Body::TaskState(t)) => {
            out.insert(
                "task_state".into(),
                json!({
                    "task_id": t.task_id,
                    "kind": t.kind,
                    "state": t.state,
                    "detail": t.detail,
                    "signers": t.signers,
                    "root_version": t.root_version,
                }),
            );
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
        assert!(v["header"]["container"].is_null(), "a host process");
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
                kind: String::new(),
            })),
        };
        assert_eq!(event_to_json(&e)["event_loss"]["reason"], "SPOOL_QUOTA");
    }
}
