//! The Starling wire: protobuf types shared by every crate, the size limits
//! that every decoder of network input enforces, and the canonical bytes
//! that operator signatures cover.
//!
//! Everything that arrives from the network goes through the checked
//! decoders here ([`batch::decode_batch`], [`batch::decode_ack`]); nothing
//! calls `prost::Message::decode` on untrusted bytes directly.

pub mod batch;
pub mod json;
pub mod limits;
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
        None => "unknown",
    }
}
