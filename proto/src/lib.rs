//! The Starling wire: protobuf types shared by every crate, the size limits
//! that every decoder of network input enforces, and the canonical bytes
//! that operator signatures cover.
//!
//! Everything that arrives from the network goes through the checked
//! decoders here ([`batch::open_batch`], [`batch::decode_ack`],
//! [`batch::decode_receipt`]); nothing calls `prost::Message::decode` on
//! untrusted bytes directly.

pub mod batch;
pub mod json;
pub mod limits;
pub mod sensor_limits;
pub mod task;

/// Generated types of package `starling.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/starling.v1.rs"));
}

/// Name of the schema, sent as a Kafka header so consumers can route without
/// decoding.
pub const SCHEMA_NAME: &str = "starling.v1.Event";

/// Short, stable name of an event's kind (Kafka header `starling-kind`).
pub fn event_kind(event: &v1::Event) -> &'static str {
    use v1::event::Body;
    match &event.body {
        Some(Body::ProcessExec(_)) => "process_exec",
        Some(Body::EventLoss(_)) => "event_loss",
        Some(Body::ProcessFork(_)) => "process_fork",
        Some(Body::ProcessExit(_)) => "process_exit",
        Some(Body::TcpConnect(_)) => "tcp_connect",
        Some(Body::TcpAccept(_)) => "tcp_accept",
        Some(Body::TcpListen(_)) => "tcp_listen",
        Some(Body::FileOpen(_)) => "file_open",
        Some(Body::FileRename(_)) => "file_rename",
        Some(Body::FileUnlink(_)) => "file_unlink",
        Some(Body::FileChmod(_)) => "file_chmod",
        Some(Body::DevFileWrite(_)) => "dev_file_write",
        Some(Body::PrivilegeChange(_)) => "privilege_change",
        Some(Body::Ptrace(_)) => "ptrace",
        Some(Body::MemfdCreate(_)) => "memfd_create",
        Some(Body::BpfProgramLoad(_)) => "bpf_program_load",
        Some(Body::SocketBind(_)) => "socket_bind",
        Some(Body::DnsQuery(_)) => "dns_query",
        Some(Body::ModuleLoad(_)) => "module_load",
        Some(Body::TaskState(_)) => "task_state",
        None => "unknown",
    }
}

/// The kind of an event whose body is field `field` of `Event`, or None
/// when that field is no body. The sink routes events by it without
/// decoding them; a test checks it against [`event_kind`] for every field
/// number.
pub fn kind_of_body_field(field: u32) -> Option<&'static str> {
    Some(match field {
        10 => "process_exec",
        11 => "event_loss",
        12 => "process_fork",
        13 => "process_exit",
        14 => "tcp_connect",
        15 => "tcp_accept",
        16 => "tcp_listen",
        17 => "file_open",
        18 => "file_rename",
        19 => "file_unlink",
        20 => "file_chmod",
        21 => "dev_file_write",
        22 => "privilege_change",
        23 => "ptrace",
        24 => "memfd_create",
        25 => "bpf_program_load",
        26 => "socket_bind",
        27 => "dns_query",
        28 => "module_load",
        29 => "task_state",
        _ => return None,
    })
}

/// Every event kind, as [`event_kind`] names them (for help texts and
/// argument checks).
pub const EVENT_KINDS: &[&str] = &[
    "process_exec",
    "process_fork",
    "process_exit",
    "tcp_connect",
    "tcp_accept",
    "tcp_listen",
    "socket_bind",
    "dns_query",
    "file_open",
    "file_rename",
    "file_unlink",
    "file_chmod",
    "dev_file_write",
    "privilege_change",
    "ptrace",
    "memfd_create",
    "bpf_program_load",
    "module_load",
    "task_state",
    "event_loss",
];

/// The kinds the kernel sensor produces: those fleet configuration can
/// turn on or off and rate-limit. They are [`EVENT_KINDS`] but the last
/// two, which come from the node itself (`task_state`, `event_loss`) and
/// are never filtered; the sensor crate checks that its own list matches.
pub const SENSOR_KINDS: &[&str] = EVENT_KINDS.split_at(EVENT_KINDS.len() - 2).0;

#[cfg(test)]
mod tests {
    #[test]
    fn the_sensor_kinds_are_every_kind_but_the_nodes_own() {
        let not_sensor: Vec<&str> = super::EVENT_KINDS
            .iter()
            .copied()
            .filter(|k| !super::SENSOR_KINDS.contains(k))
            .collect();
        assert_eq!(not_sensor, ["task_state", "event_loss"]);
        assert!(super::SENSOR_KINDS
            .iter()
            .all(|k| super::EVENT_KINDS.contains(k)));
    }

    #[test]
    fn the_kind_list_names_every_body_field_once() {
        let mut from_fields: Vec<&str> = (0..=200).filter_map(super::kind_of_body_field).collect();
        let mut listed = super::EVENT_KINDS.to_vec();
        from_fields.sort_unstable();
        listed.sort_unstable();
        assert_eq!(from_fields, listed);
    }
}
