//! A mesh of real node and sink processes on loopback: the nodes form one
//! cell, agree on its aggregators, and ship through them to sinks they
//! learned from gossip; a signed task handed to one node is applied by
//! all, and each application reaches a sink as an event; a rollout in
//! waves is shown and aborted from the command line. Killing an
//! aggregator moves its nodes to the other and loses no event. A cell none
//! of whose members may serve ships straight to a sink. Needs root (BPF)
//! for the nodes that run sensors.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use starling_mesh::identity::{Role, TlsFiles};
use starling_mesh::status::MeshStatus;
use starling_proto::v1::batch_ack::Status;
use starling_sim::client::{host_key, signed_batch, Credentials, RawClient};
use starling_sim::kafka::is_marked_exec;
use starling_sim::{
    free_port, is_root, predicted_aggregators, wait_for, Fleet, MeshOptions, NodeProcess,
    SinkProcess,
};
use starling_sink::local_store::LocalStoreReader;

const NODES: usize = 12;
const ZONE: &str = "mesh-test";

/// An exec event as `host` would report it.
fn forged_exec(host: &str, seq: u64) -> starling_proto::v1::Event {
    let mut e = starling_sim::sample_exec_event(seq);
    if let Some(h) = e.header.as_mut() {
        h.host_id = host.into();
        h.seq = seq;
    }
    e
}

fn exec_marked(marker: &str, n: usize) {
    for _ in 0..n {
        let _ = Command::new("/bin/true").arg(marker).status();
    }
}

/// Every event in the sinks' stores, by host, by sequence number, with the
/// argv markers of exec events.
fn stored(
    stores: &[LocalStoreReader],
) -> BTreeMap<String, BTreeMap<u64, starling_proto::v1::Event>> {
    let mut out: BTreeMap<String, BTreeMap<u64, _>> = BTreeMap::new();
    for reader in stores {
        if reader.refresh().is_err() {
            continue;
        }
        let mut cursor = 0;
        while let Ok(page) = reader.after(cursor, 10_000) {
            if page.events.is_empty() {
                break;
            }
            for (arrival, event) in page.events {
                cursor = arrival;
                if let Some(h) = &event.header {
                    out.entry(h.host_id.clone())
                        .or_default()
                        .insert(h.seq, event.clone());
                }
            }
        }
    }
    out
}

fn statuses(nodes: &[NodeProcess]) -> Vec<Option<MeshStatus>> {
    nodes.iter().map(|n| n.mesh_status()).collect()
}

#[test]
fn nodes_ship_through_elected_aggregators_and_survive_losing_one() -> anyhow::Result<()> {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    let fleet = Fleet::new()?;
    let names: Vec<String> = (0..NODES).map(|i| format!("mesh-{i:02}")).collect();
    // The election is deterministic: the test knows the aggregators in
    // advance and puts sensors on nodes that are not.
    let cell = format!("zone:{ZONE}");
    let predicted = predicted_aggregators(ZONE, &names);
    let sensor_hosts: Vec<String> = names
        .iter()
        .filter(|n| !predicted.contains(n))
        .take(2)
        .cloned()
        .collect();

    let seed = MeshOptions {
        bootstrap: Vec::new(),
        zone: ZONE.into(),
        aggregator: true,
        listen_port: free_port(),
        expected_cell_size: NODES as u32,
        direct_to_sink_after_secs: None,
    };
    let seed_addr = seed.listen_addr();
    let others = MeshOptions {
        bootstrap: vec![seed_addr.clone()],
        listen_port: 0,
        ..seed.clone()
    };
    // The fleet's trust root beside ca.pem, where every node and sink reads
    // it (tasks.root's default): the task plane runs everywhere.
    let ctl = starling_sim::process::binary("starlingctl")?;
    let pki = fleet.ca_cert().parent().expect("pki dir").to_path_buf();
    let keys = fleet.path().join("keys");
    let root = pki.join("root.bin");
    let run = |args: &[&std::ffi::OsStr]| -> anyhow::Result<String> {
        let out = Command::new(&ctl).args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "starlingctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    run(&[
        &os("key"),
        &os("new"),
        &os("op"),
        &os("--dir"),
        keys.as_os_str(),
    ])?;
    let op_key = keys.join("op.key");
    let op_pub = keys.join("op.pub");
    run(&[
        &os("root"),
        &os("init"),
        &os("--fleet"),
        &os("sim"),
        &os("--key"),
        op_pub.as_os_str(),
        &os("-o"),
        root.as_os_str(),
    ])?;
    run(&[
        &os("root"),
        &os("sign"),
        &os("--key"),
        op_key.as_os_str(),
        root.as_os_str(),
    ])?;

    let started = Instant::now();
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let opts = if i == 0 { &seed } else { &others };
        nodes.push(NodeProcess::start_in_mesh(
            &fleet,
            name,
            opts,
            sensor_hosts.contains(name),
        )?);
    }
    let sinks = [
        SinkProcess::start_in_mesh(
            &fleet,
            "mesh-sink-a",
            None,
            std::slice::from_ref(&seed_addr),
        )?,
        SinkProcess::start_in_mesh(
            &fleet,
            "mesh-sink-b",
            None,
            std::slice::from_ref(&seed_addr),
        )?,
    ];

    // Every node sees the whole cell, the same aggregators, and is attached.
    let converged = wait_for(Duration::from_secs(90), || {
        let all = statuses(&nodes);
        let ok = all.iter().all(|s| {
            s.as_ref().is_some_and(|s| {
                s.cell
                    .as_ref()
                    .is_some_and(|c| c.members.len() == NODES && c.aggregators == predicted)
                    && s.uplink.is_some()
                    && s.sinks.len() == 2
            })
        });
        ok.then_some(all)
    });
    let Some(all) = converged else {
        panic!(
            "the mesh did not converge; statuses: {:#?}\nlog of {}:\n{}",
            statuses(&nodes),
            nodes[1].host_id,
            nodes[1].log()
        );
    };
    println!(
        "converged and attached {:.1} s after the first start",
        started.elapsed().as_secs_f64()
    );
    for s in all.iter().flatten() {
        let up = s.uplink.as_ref().expect("attached");
        if predicted.contains(&s.host) {
            assert_eq!(
                up.role, "sink",
                "{} is aggregator and ships to a sink",
                s.host
            );
        } else {
            assert!(
                predicted.contains(&up.to),
                "{} ships through an aggregator, not {}",
                s.host,
                up.to
            );
        }
    }

    // `starlingctl mesh status` shows a person (and a program) the cell,
    // its aggregators and the sinks from any member.
    let data_dir = nodes[NODES - 1].data_dir().to_path_buf();
    let out = Command::new(&ctl)
        .args(["mesh", "status", "--data-dir"])
        .arg(&data_dir)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        cell.as_str(),
        predicted[0].as_str(),
        predicted[1].as_str(),
        "mesh-sink-a",
        "mesh-sink-b",
        "AGGREGATORS",
    ] {
        assert!(text.contains(want), "mesh status lacks {want:?}:\n{text}");
    }
    let out = Command::new(&ctl)
        .args(["mesh", "status", "--json", "--data-dir"])
        .arg(&data_dir)
        .output()?;
    let parsed: MeshStatus = serde_json::from_slice(&out.stdout)?;
    assert_eq!(parsed.cell.map(|c| c.aggregators), Some(predicted.clone()));

    // An aggregator relays a batch only for the host whose certificate
    // its connection carries.
    let aggregator = all
        .iter()
        .flatten()
        .find(|s| s.is_aggregator)
        .expect("an aggregator");
    let relay = aggregator
        .cell
        .as_ref()
        .and_then(|c| c.members.iter().find(|m| m.host == aggregator.host))
        .map(|m| m.relay.clone())
        .expect("the aggregator's relay address");
    // An enrolled host sends, through a real aggregator, a well-formed
    // batch it signed for another host.
    let impostor = fleet.issue(Role::Node, "impostor")?;
    let impostor = TlsFiles {
        ca_cert: fleet.ca_cert(),
        cert: impostor.0,
        key: impostor.1,
    };
    let victim = &sensor_hosts[0];
    let forged = signed_batch(&host_key(&impostor)?, victim, 1, &[forged_exec(victim, 1)])?;
    let ack = tokio::runtime::Runtime::new()?.block_on(async {
        let client =
            RawClient::connect(&relay, &aggregator.host, Credentials::Certificate(impostor))
                .await?;
        client.send(&forged).await
    })?;
    assert_eq!(ack.status(), Status::Rejected, "{}", ack.detail);
    assert!(ack.detail.contains("impostor"), "{}", ack.detail);

    let readers: Vec<LocalStoreReader> = sinks
        .iter()
        .map(|s| {
            wait_for(Duration::from_secs(10), || {
                LocalStoreReader::open(&s.store_path()).ok()
            })
            .expect("sink store opens")
        })
        .collect();
    // A signed task handed to one node reaches every node, each applies
    // it, and each application is a `task_state` event in a sink: the
    // audit trail of who applied what.
    let task = fleet.path().join("web.task");
    run(&[
        &os("task"),
        &os("create"),
        &os("tags"),
        &os("--root"),
        root.as_os_str(),
        &os("--all"),
        &os("--set"),
        &os("web"),
        &os("--id"),
        &os("tag-web"),
        &os("-o"),
        task.as_os_str(),
    ])?;
    run(&[
        &os("task"),
        &os("sign"),
        &os("--key"),
        op_key.as_os_str(),
        task.as_os_str(),
    ])?;
    let published = run(&[
        &os("task"),
        &os("publish"),
        task.as_os_str(),
        &os("--data-dir"),
        nodes[3].data_dir().as_os_str(),
    ])?;
    assert!(published.contains("accepted"), "{published}");
    // A node's own tasks and tags (`starlingctl task list --json`).
    let task_list = |n: &starling_sim::process::NodeProcess| -> Option<serde_json::Value> {
        let text = run(&[
            &os("task"),
            &os("list"),
            &os("--json"),
            &os("--data-dir"),
            n.data_dir().as_os_str(),
        ])
        .ok()?;
        serde_json::from_str(&text).ok()
    };
    let holds = |v: &serde_json::Value, id: &str, state: &str| {
        v["tasks"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t["task_id"] == id && t["state"] == state))
    };
    let applied_everywhere = wait_for(Duration::from_secs(60), || {
        nodes
            .iter()
            .all(|n| task_list(n).is_some_and(|v| holds(&v, "tag-web", "applied")))
            .then_some(())
    });
    assert!(
        applied_everywhere.is_some(),
        "the task was applied on every node"
    );
    let audited = wait_for(Duration::from_secs(60), || {
        let got = stored(&readers);
        let hosts: BTreeSet<&String> = got
            .iter()
            .filter(|(_, evs)| {
                evs.values().any(|e| {
                    matches!(&e.body, Some(starling_proto::v1::event::Body::TaskState(t))
                        if t.task_id == "tag-web" && t.state == "applied")
                })
            })
            .map(|(h, _)| h)
            .collect();
        (hosts.len() == NODES).then_some(())
    });
    assert!(
        audited.is_some(),
        "every node's task_state event reached a sink"
    );
    // The fleet's view from a sink as from any node: a sink has no cell,
    // but every cell's aggregator sends it the cell's summary (`starlingctl
    // task status` against its data directory), and each sink counts its
    // own state as the one host of `sink/<name>`: the nodes and both sinks
    // applied the task.
    let from_sink = || {
        run(&[
            &os("task"),
            &os("status"),
            &os("tag-web"),
            &os("--json"),
            &os("--data-dir"),
            sinks[0].data_dir.as_os_str(),
        ])
    };
    let counted_at_sink = wait_for(Duration::from_secs(60), || {
        let v: serde_json::Value = serde_json::from_str(&from_sink().ok()?).ok()?;
        (v["states"]["counts"]["applied"].as_u64() == Some((NODES + sinks.len()) as u64))
            .then_some(())
    });
    assert!(
        counted_at_sink.is_some(),
        "a sink's fleet view counts every node and sink applied: {:?}",
        from_sink()
    );

    // A rollout steered from the command line: a tag task in two waves
    // with a long soak, `starlingctl rollout show` while its first wave
    // soaks, then `starlingctl rollout abort` (made, signed and handed to
    // a node in one step): the first wave's hosts take the tag back, the
    // others never apply it, and every node shows the rollout halted.
    let slow_id = (0..)
        .map(|i| format!("tag-slow-{i}"))
        .find(|id| {
            let first = nodes
                .iter()
                .filter(|n| starling_task::rollout::rollout_point(id, &n.host_id) < 2_500)
                .count();
            (1..NODES / 2).contains(&first)
        })
        .expect("some id");
    let slow = fleet.path().join("slow.task");
    run(&[
        &os("task"),
        &os("create"),
        &os("tags"),
        &os("--root"),
        root.as_os_str(),
        &os("--all"),
        &os("--set"),
        &os("slow"),
        &os("--id"),
        &os(&slow_id),
        &os("--rollout"),
        &os("25%:10m,100%:10m"),
        &os("-o"),
        slow.as_os_str(),
    ])?;
    run(&[
        &os("task"),
        &os("sign"),
        &os("--key"),
        op_key.as_os_str(),
        slow.as_os_str(),
    ])?;
    run(&[
        &os("task"),
        &os("publish"),
        slow.as_os_str(),
        &os("--data-dir"),
        nodes[3].data_dir().as_os_str(),
    ])?;
    let show = |n: &starling_sim::process::NodeProcess| -> Option<serde_json::Value> {
        let text = run(&[
            &os("rollout"),
            &os("show"),
            &os(&slow_id),
            &os("--json"),
            &os("--data-dir"),
            n.data_dir().as_os_str(),
        ])
        .ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()
    };
    let soaking = wait_for(Duration::from_secs(60), || {
        let v = show(&nodes[0])?;
        let r = &v[slow_id.as_str()];
        (r["states"]["counts"]["soaking"].as_u64()? >= 1
            && r["rollout"]["open_waves"] == 1
            && r["rollout"]["halted"].is_null())
        .then_some(())
    });
    assert!(
        soaking.is_some(),
        "the first wave soaks: {:?}",
        show(&nodes[0])
    );
    let aborted = run(&[
        &os("rollout"),
        &os("abort"),
        &os(&slow_id),
        &os("--root"),
        root.as_os_str(),
        &os("--key"),
        op_key.as_os_str(),
        &os("--data-dir"),
        nodes[5].data_dir().as_os_str(),
    ])?;
    assert!(aborted.contains("accepted"), "{aborted}");
    let taken_back = wait_for(Duration::from_secs(60), || {
        nodes
            .iter()
            .all(|n| {
                let first = starling_task::rollout::rollout_point(&slow_id, &n.host_id) < 2_500;
                let want = if first { "rolled_back" } else { "stopped" };
                task_list(n).is_some_and(|v| {
                    holds(&v, &slow_id, want)
                        && !v["tags"]
                            .as_array()
                            .is_some_and(|tags| tags.iter().any(|t| t == "slow"))
                })
            })
            .then_some(())
    });
    assert!(
        taken_back.is_some(),
        "the aborted rollout is taken back everywhere: {:?}",
        show(&nodes[0])
    );
    let shown = run(&[
        &os("rollout"),
        &os("show"),
        &os("--data-dir"),
        nodes[0].data_dir().as_os_str(),
    ])?;
    assert!(
        shown.contains(&format!(
            "rollout of {slow_id}: HALTED: aborted by the operators"
        )),
        "{shown}"
    );

    // `starlingctl fleet` from any node: the cell with every host's
    // version, then the cell's table asked of its aggregator, each host
    // with its heartbeat (real nodes: their real spool backlog).
    let counted = wait_for(Duration::from_secs(90), || {
        let text = run(&[
            &os("fleet"),
            &os("--json"),
            &os("--data-dir"),
            data_dir.as_os_str(),
        ])
        .ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let versions = v["cells"][cell.as_str()]["hosts"]["versions"].as_object()?;
        let hosts: u64 = versions.values().filter_map(|n| n.as_u64()).sum();
        (hosts == NODES as u64).then_some(())
    });
    assert!(
        counted.is_some(),
        "the cell summary counts every node's version"
    );
    // The overview: the nodes' cell and each sink's own.
    let overview = format!(
        "{} cells: {} hosts live, 0 down",
        1 + sinks.len(),
        NODES + sinks.len()
    );
    let shown = wait_for(Duration::from_secs(30), || {
        let text = run(&[&os("fleet"), &os("--data-dir"), data_dir.as_os_str()]).ok()?;
        text.contains(&overview).then_some(text)
    });
    let text = run(&[&os("fleet"), &os("--data-dir"), data_dir.as_os_str()])?;
    println!("{text}");
    assert!(shown.is_some(), "{overview:?} not shown:\n{text}");
    let text = run(&[
        &os("fleet"),
        &os("--cell"),
        &os(&cell),
        &os("--json"),
        &os("--data-dir"),
        data_dir.as_os_str(),
    ])?;
    let table: starling_task::fleet::CellTable = serde_json::from_str(&text)?;
    assert_eq!(table.hosts.len(), NODES);
    for row in &table.hosts {
        let beat = row.heartbeat.as_ref().expect("every node sent a heartbeat");
        assert!(
            row.alive && !beat.kernel.is_empty() && beat.rss_bytes > 0,
            "{row:?}"
        );
    }
    let text = run(&[
        &os("fleet"),
        &os("--cell"),
        &os(&cell),
        &os("--data-dir"),
        data_dir.as_os_str(),
    ])?;
    println!("{text}");
    for n in &names {
        assert!(text.contains(n.as_str()), "fleet --cell lacks {n}:\n{text}");
    }

    exec_marked("before-aggregator-dies", 5);
    let arrived = wait_for(Duration::from_secs(60), || {
        let got = stored(&readers);
        sensor_hosts
            .iter()
            .all(|h| {
                got.get(h).is_some_and(|evs| {
                    evs.values()
                        .filter(|e| is_marked_exec(e, "before-aggregator-dies"))
                        .count()
                        >= 5
                })
            })
            .then_some(())
    });
    assert!(
        arrived.is_some(),
        "marked execs arrived through the aggregators"
    );

    // Kill the aggregator that the first sensor host ships through.
    let victim_name = nodes
        .iter()
        .find(|n| n.host_id == sensor_hosts[0])
        .and_then(|n| n.mesh_status())
        .and_then(|s| s.uplink)
        .map(|u| u.to)
        .expect("the sensor host is attached");
    let victim = nodes
        .iter_mut()
        .find(|n| n.host_id == victim_name)
        .expect("victim runs");
    let killed_at = Instant::now();
    victim.kill9();
    exec_marked("while-aggregator-dead", 5);

    let moved = wait_for(Duration::from_secs(60), || {
        let s = nodes
            .iter()
            .find(|n| n.host_id == sensor_hosts[0])?
            .mesh_status()?;
        let up = s.uplink?;
        (up.to != victim_name).then_some(up.to)
    });
    let moved_to = moved.expect("the sensor host moved off the dead aggregator");
    println!(
        "{} moved from {victim_name} to {moved_to} {:.1} s after the kill",
        sensor_hosts[0],
        killed_at.elapsed().as_secs_f64()
    );
    exec_marked("after-move", 5);

    // Nothing lost: every sequence number each sensor host produced is in
    // a sink, including what was in flight through the dead aggregator.
    let complete = wait_for(Duration::from_secs(90), || {
        let got = stored(&readers);
        for h in &sensor_hosts {
            let node = nodes.iter().find(|n| &n.host_id == h)?;
            let last = node.last_seq()?;
            let seqs: BTreeSet<u64> = got.get(h)?.keys().copied().collect();
            if (1..=last).any(|s| !seqs.contains(&s)) {
                return None;
            }
            let marks = got
                .get(h)?
                .values()
                .filter(|e| is_marked_exec(e, "after-move"))
                .count();
            if marks < 5 {
                return None;
            }
        }
        Some(())
    });
    if complete.is_none() {
        let got = stored(&readers);
        for h in &sensor_hosts {
            let node = nodes.iter().find(|n| &n.host_id == h).expect("node");
            let last = node.last_seq().unwrap_or(0);
            let seqs: BTreeSet<u64> = got
                .get(h)
                .map(|m| m.keys().copied().collect())
                .unwrap_or_default();
            let missing: Vec<u64> = (1..=last).filter(|s| !seqs.contains(s)).take(20).collect();
            eprintln!("{h}: last seq {last}, missing {missing:?}\n{}", node.log());
        }
        panic!("events were lost when the aggregator died");
    }
    Ok(())
}

/// A cell none of whose members may be aggregator (`mesh.aggregator =
/// false` on all three) elects none; after `direct_to_sink_after_secs` its
/// nodes ship straight to a sink they learned from gossip, and a sensor
/// node's events reach it.
#[test]
fn a_cell_without_eligible_members_ships_straight_to_a_sink() -> anyhow::Result<()> {
    assert!(
        is_root(),
        "this test loads BPF programs and must run as root"
    );
    const MEMBERS: usize = 3;
    let fleet = Fleet::new()?;
    let seed = MeshOptions {
        bootstrap: Vec::new(),
        zone: "direct-test".into(),
        aggregator: false,
        listen_port: free_port(),
        expected_cell_size: MEMBERS as u32,
        direct_to_sink_after_secs: Some(2),
    };
    let seed_addr = seed.listen_addr();
    let others = MeshOptions {
        bootstrap: vec![seed_addr.clone()],
        listen_port: 0,
        ..seed.clone()
    };
    let mut nodes = Vec::new();
    for i in 0..MEMBERS {
        let opts = if i == 0 { &seed } else { &others };
        nodes.push(NodeProcess::start_in_mesh(
            &fleet,
            &format!("direct-{i}"),
            opts,
            i == 1,
        )?);
    }
    let sink = SinkProcess::start_in_mesh(
        &fleet,
        "direct-sink",
        None,
        std::slice::from_ref(&seed_addr),
    )?;
    let direct = wait_for(Duration::from_secs(90), || {
        let all = statuses(&nodes);
        all.iter()
            .all(|s| {
                s.as_ref().is_some_and(|s| {
                    s.cell
                        .as_ref()
                        .is_some_and(|c| c.members.len() == MEMBERS && c.aggregators.is_empty())
                        && s.uplink
                            .as_ref()
                            .is_some_and(|u| u.role == "sink" && u.to == "direct-sink")
                })
            })
            .then_some(())
    });
    assert!(
        direct.is_some(),
        "the nodes did not go straight to the sink; statuses: {:#?}\nlog of direct-1:\n{}",
        statuses(&nodes),
        nodes[1].log()
    );
    for n in &nodes {
        assert_eq!(
            n.metric("starling_node_direct_to_sink"),
            Some(1.0),
            "{} says it ships straight to a sink",
            n.host_id
        );
    }
    let reader = wait_for(Duration::from_secs(10), || {
        LocalStoreReader::open(&sink.store_path()).ok()
    })
    .expect("sink store opens");
    exec_marked("direct-to-sink", 5);
    let arrived = wait_for(Duration::from_secs(60), || {
        stored(std::slice::from_ref(&reader))
            .get("direct-1")
            .is_some_and(|evs| {
                evs.values()
                    .filter(|e| is_marked_exec(e, "direct-to-sink"))
                    .count()
                    >= 5
            })
            .then_some(())
    });
    assert!(
        arrived.is_some(),
        "the sensor node's marked execs reached the sink; log:\n{}",
        nodes[1].log()
    );
    Ok(())
}
