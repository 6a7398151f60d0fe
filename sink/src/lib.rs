//! `starling-sink`: accepts batches from enrolled nodes over QUIC with
//! mutual TLS, persists them to Kafka (or the embedded local store), and
//! acks each batch only when every event in it is persisted, and only
//! batches their origin host signed (aggregators relay without being
//! trusted).

pub mod backend;
pub mod config;
pub mod ingress;
pub mod kafka;
pub mod local_store;
pub mod metrics_names;
pub mod replay;
