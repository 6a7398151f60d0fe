//! The QUIC data plane follows the fleet's revocation list: once a newer
//! list names a host, its open connections are closed and its handshakes
//! fail, whichever end it is, without rebuilding any endpoint.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Fleet;
use starling_mesh::identity::Role;
use starling_mesh::trust::{DataPlaneTrust, REVOKED_CLOSE_CODE};

/// A server endpoint that accepts every connection, answers one byte on
/// each stream it is sent (so a client knows it was served), and keeps the
/// connection open until the peer or its guard closes it.
fn serve(trust: &DataPlaneTrust) -> (quinn::Endpoint, SocketAddr) {
    let endpoint = quinn::Endpoint::server(
        trust.server_config().expect("server config"),
        "127.0.0.1:0".parse().expect("address"),
    )
    .expect("endpoint");
    let addr = endpoint.local_addr().expect("bound");
    let accepting = endpoint.clone();
    let trust = trust.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let trust = trust.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    let answering = conn.clone();
                    tokio::spawn(async move {
                        while let Ok((mut send, mut recv)) = answering.accept_bi().await {
                            let mut byte = [0u8; 1];
                            if recv.read_exact(&mut byte).await.is_ok() {
                                let _ = send.write_all(b"y").await;
                                let _ = send.finish();
                            }
                        }
                    });
                    trust.guard(conn).await;
                }
            });
        }
    });
    (endpoint, addr)
}

/// A client endpoint as the uplink keeps one: the same configuration for
/// every connection (so TLS session resumption would apply).
fn client(trust: &DataPlaneTrust) -> quinn::Endpoint {
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("endpoint");
    endpoint.set_default_client_config(trust.client_config().expect("client config"));
    endpoint
}

async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, String> {
    let conn = endpoint
        .connect(addr, server_name)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    // A TLS 1.3 server refuses a client certificate after the client
    // thinks the handshake is done: only the server's answer on a stream
    // shows it served the connection (a refusal closes it instead).
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(b"x").await.map_err(|e| e.to_string())?;
    let mut answer = [0u8; 1];
    match recv.read_exact(&mut answer).await {
        Ok(()) => Ok(conn),
        Err(e) => Err(conn
            .close_reason()
            .map(|r| r.to_string())
            .unwrap_or_else(|| e.to_string())),
    }
}

fn trust_of(fleet: &Fleet, role: Role, name: &str) -> DataPlaneTrust {
    let files = fleet.files(role, name);
    DataPlaneTrust::load(&files, Some(fleet.revocation_list())).expect("trust loads")
}

#[tokio::test]
async fn a_revoked_client_is_cut_off_and_refused() {
    let fleet = Fleet::new();
    let sink = trust_of(&fleet, Role::Sink, "sink-1");
    let node = trust_of(&fleet, Role::Node, "web-01");
    let other = trust_of(&fleet, Role::Node, "web-02");
    let (_endpoint, addr) = serve(&sink);
    let (node_client, other_client) = (client(&node), client(&other));

    let open = connect(&node_client, addr, "sink-1")
        .await
        .expect("enrolled node served");
    connect(&other_client, addr, "sink-1")
        .await
        .expect("other node served");

    fleet.revoke("web-01");
    let applied = sink.reload().expect("newer list taken");
    assert_eq!((applied.revoked, applied.self_revoked), (1, false));

    let reason = tokio::time::timeout(Duration::from_secs(5), open.closed())
        .await
        .expect("the revoked node's open connection is closed");
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, REVOKED_CLOSE_CODE.into())
        }
        other => panic!("closed for another reason: {other}"),
    }
    // Also when the node's endpoint could resume its earlier TLS session.
    let again = connect(&node_client, addr, "sink-1").await;
    assert!(
        again.as_ref().is_err_and(|e| !e.contains("code 3")),
        "a revoked node completed a new handshake: {:?}",
        again.map(|_| ())
    );
    connect(&other_client, addr, "sink-1")
        .await
        .expect("an unrevoked node is still served");
    // Reading the same list again changes nothing.
    assert!(sink.reload().is_none());
}

#[tokio::test]
async fn a_client_refuses_a_revoked_server() {
    let fleet = Fleet::new();
    let aggregator = trust_of(&fleet, Role::Node, "agg-1");
    let node = trust_of(&fleet, Role::Node, "web-01");
    let (_endpoint, addr) = serve(&aggregator);
    let node_client = client(&node);
    connect(&node_client, addr, "agg-1")
        .await
        .expect("aggregator trusted");

    fleet.revoke("agg-1");
    assert!(node.reload().is_some());
    let refused = connect(&node_client, addr, "agg-1").await;
    let error = refused.expect_err("a revoked server was trusted");
    assert!(
        error.contains("revoked") || error.contains("Revoked"),
        "{error}"
    );
}

#[tokio::test]
async fn a_list_not_signed_by_the_fleet_ca_is_not_taken() {
    let fleet = Fleet::new();
    let foreign = Fleet::new();
    let sink = trust_of(&fleet, Role::Sink, "sink-1");
    let node = trust_of(&fleet, Role::Node, "web-01");
    let (_endpoint, addr) = serve(&sink);

    // A list from another CA, at the path this fleet reads.
    foreign.files(Role::Node, "web-01");
    foreign.revoke("web-01");
    std::fs::copy(foreign.revocation_list(), fleet.revocation_list()).expect("copy");
    assert!(sink.reload().is_none(), "a foreign list was put in force");
    connect(&client(&node), addr, "sink-1")
        .await
        .expect("the node is still served");
}
