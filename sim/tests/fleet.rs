//! The fleet simulator's protocol properties, on small fleets of the
//! production membership and election: runs repeat exactly, partitions
//! heal, and every cell agrees on its aggregators after churn and after a
//! region's aggregators fail; and a task reaches every host.

use starling_sim::fleet::{report, run, Progress, RunOptions, RunResult, Sample, Scenario};

fn scenario(body: &str) -> Scenario {
    Scenario::parse(body).expect("valid scenario")
}

fn last(r: &RunResult) -> Sample {
    *r.samples.last().expect("samples")
}

/// Asserts that at the end every live host sees exactly its cell's live
/// hosts and every cell agrees on live, serving aggregators.
fn assert_settled(name: &str, r: &RunResult) {
    let end = last(r);
    assert!(end.hosts_alive > 0, "{name}: hosts alive");
    assert_eq!(
        end.hosts_converged, end.hosts_alive,
        "{name}: converged {end:?}"
    );
    assert_eq!(
        end.hosts_attached, end.hosts_alive,
        "{name}: attached {end:?}"
    );
    assert_eq!(
        end.cells_agreeing, end.cells,
        "{name}: cells agreeing {end:?}"
    );
}

const SMALL: &str = r#"
name = "small"
hosts = 300
cell_size = 40
duration_s = 90
boot = { spread_s = 10 }
loss = { independent = 0.01 }
[[regions]]
name = "eu"
latency_ms = 10
[[regions]]
name = "us"
latency_ms = 30
"#;

#[test]
fn the_same_seed_gives_the_same_trace_whatever_the_shards_and_groups() {
    let s = scenario(SMALL);
    let one = run(&s, RunOptions::shards(1), &Progress::default()).unwrap();
    let again = run(&s, RunOptions::shards(1), &Progress::default()).unwrap();
    let two = run(&s, RunOptions::shards(2), &Progress::default()).unwrap();
    assert_eq!(one.trace_hash, again.trace_hash);
    assert_eq!(one.trace_hash, two.trace_hash, "shards change nothing");
    assert_eq!(one.samples, two.samples);
    // Cells a few at a time (a group of at most 50 hosts per shard).
    let grouped = RunOptions {
        shards: 2,
        hosts_in_memory: 100,
    };
    let in_groups = run(&s, grouped, &Progress::default()).unwrap();
    assert_eq!(
        one.trace_hash, in_groups.trace_hash,
        "groups change nothing"
    );
    assert_eq!(one.samples, in_groups.samples);
    assert_eq!(one.detections.first, in_groups.detections.first);
    assert!(
        one.cells >= 8,
        "300 hosts in cells of at most 40: {}",
        one.cells
    );
    let mut other = s.clone();
    other.seed = 2;
    assert_ne!(
        run(&other, RunOptions::shards(2), &Progress::default())
            .unwrap()
            .trace_hash,
        one.trace_hash
    );
    assert_settled("small", &one);
}

#[test]
fn a_partitioned_fleet_heals_and_agrees_on_aggregators_again() {
    let s = scenario(
        &format!(
            "{SMALL}\n[[events]]\nkind = \"partition\"\nat_s = 30\nfraction = 0.5\n\
         [[events]]\nkind = \"heal\"\nat_s = 60\n"
        )
        .replace("duration_s = 90", "duration_s = 120"),
    );
    let r = run(&s, RunOptions::shards(2), &Progress::default()).unwrap();
    let during = r
        .samples
        .iter()
        .find(|x| x.at_s == 60)
        .expect("a sample at 60 s");
    assert!(
        during.hosts_converged < during.hosts_alive / 2,
        "the cut was felt: {during:?}"
    );
    assert_settled("partition", &r);
}

#[test]
fn cells_agree_on_aggregators_after_churn() {
    let s = scenario(
        &format!(
            "{SMALL}\n[[events]]\nkind = \"churn\"\nat_s = 20\nuntil_s = 80\n\
         pct_per_min = 5.0\nrestart_after_s = 10\n"
        )
        .replace("duration_s = 90", "duration_s = 140"),
    );
    let r = run(&s, RunOptions::shards(2), &Progress::default()).unwrap();
    assert!(
        r.detections.crashes >= 5,
        "churn happened: {}",
        r.detections.crashes
    );
    assert_eq!(
        r.detections.first.len() as u64,
        r.detections.crashes,
        "every crash was noticed"
    );
    assert_eq!(
        r.detections.false_positives, 0,
        "no live host declared down"
    );
    assert_settled("churn", &r);

    // The report a person reads: the same figures, and the plots
    // (scripts/setup installs the font they need).
    let dir = tempfile::tempdir().expect("temp dir");
    let summary = report::Summary::new(&s, &r, 2, 1.0, 0);
    let written = report::write(dir.path(), &summary, &r).expect("report");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("summary.json")).expect("summary.json"),
    )
    .expect("JSON");
    assert_eq!(json["crashes"], r.detections.crashes);
    assert_eq!(json["final_cells_agreeing_pct"], 100.0);
    let timeline = std::fs::read_to_string(dir.path().join("timeline.csv")).expect("timeline");
    assert_eq!(
        timeline.lines().count(),
        r.samples.len() + 1,
        "a header and a row per sample"
    );
    for plot in ["convergence.png", "control_bytes.png", "detection_cdf.png"] {
        let path = dir.path().join(plot);
        assert!(written.contains(&path), "{plot} written");
        let bytes = std::fs::read(&path).expect("plot");
        assert!(bytes.starts_with(b"\x89PNG"), "{plot} is a PNG");
    }
    assert!(summary.table().contains("crashes"));
}

#[test]
fn a_region_whose_aggregators_fail_elects_new_ones() {
    // Half the hosts eligible, so that every cell keeps candidates once
    // its aggregators are gone (a cell left with none has no aggregator,
    // docs/simulator.md).
    let s = scenario(&format!(
        "eligible_pct = 50\n{SMALL}\n[[events]]\nkind = \"aggregator_region_failure\"\nat_s = 40\nregion = \"eu\"\n"
    ));
    let r = run(&s, RunOptions::shards(2), &Progress::default()).unwrap();
    assert!(
        r.detections.crashes >= 2,
        "aggregators crashed: {}",
        r.detections.crashes
    );
    let before = r.samples.iter().find(|x| x.at_s == 40).expect("sample");
    assert!(last(&r).hosts_alive < before.hosts_alive);
    assert_settled("region failure", &r);
}

#[test]
fn hosts_of_cells_without_an_aggregator_ship_straight_to_a_sink() {
    // One host in a hundred may serve: most cells of about 40 have none,
    // and a region's aggregators fail at 40 s, leaving their cells none
    // either. Their hosts go straight to a sink 30 s (the default) after
    // their cell had none, and only they do.
    let body = format!(
        "eligible_pct = 1\n{SMALL}\n[[events]]\nkind = \"aggregator_region_failure\"\nat_s = 40\nregion = \"eu\"\n"
    );
    let r = run(
        &scenario(&body),
        RunOptions::shards(2),
        &Progress::default(),
    )
    .unwrap();
    let end = last(&r);
    assert_eq!(
        end.hosts_attached, end.hosts_alive,
        "every host attached: {end:?}"
    );
    assert!(
        end.hosts_direct * 2 > end.hosts_alive,
        "most hosts are in cells without an aggregator: {end:?}"
    );
    assert!(
        end.hosts_direct < end.hosts_alive,
        "hosts of cells with an aggregator ship through it: {end:?}"
    );
    // Nobody goes direct before the wait is over (boot ends at 10 s).
    for s in r.samples.iter().filter(|s| s.at_s < 30) {
        assert_eq!(s.hosts_direct, 0, "at {} s: {s:?}", s.at_s);
    }
    // Turned off, the same hosts stay unattached (their events spool).
    let off = scenario(&format!("direct_to_sink_after_s = 0\n{body}"));
    let r = run(&off, RunOptions::shards(2), &Progress::default()).unwrap();
    let end_off = last(&r);
    println!("with: {end:?}\nwithout: {end_off:?}");
    assert_eq!(end_off.hosts_direct, 0);
    assert_eq!(
        end_off.hosts_attached,
        end.hosts_alive - end.hosts_direct,
        "without it exactly the hosts that went direct are unattached"
    );
}

#[test]
fn every_host_receives_the_task_even_at_5_percent_loss_and_after_being_away() {
    let s = scenario(&format!(
        "{SMALL}\n[task]\nsync_interval_s = 10\naway_pct = 2\n"
    ));
    let mut lossy = s.clone();
    lossy.hosts = 1000;
    lossy.loss.independent = 0.05;
    let r = run(&lossy, RunOptions::shards(2), &Progress::default()).unwrap();
    let task = r.task.as_ref().expect("the scenario has a task");
    assert_eq!(task.online_hosts + task.away_hosts, 1000);
    assert_eq!(task.away_hosts, 20);
    assert_eq!(
        task.online_held, task.online_hosts,
        "every online host holds the task: {task:?}"
    );
    assert_eq!(
        task.away_held, task.away_hosts,
        "every host that was away holds it after its return: {task:?}"
    );
    // Virtual time: a lost exchange is tried again the next period, so
    // two periods bring every returning host level.
    assert!(
        task.away_catch_up.max <= 20.0,
        "hosts away caught up within two anti-entropy periods: {task:?}"
    );
    assert!(task.copies_per_host >= 1.0 && task.bytes_per_host > 0.0);
    let again = run(&lossy, RunOptions::shards(1), &Progress::default()).unwrap();
    assert_eq!(
        again.task.as_ref().map(|t| &t.trace_hash),
        Some(&task.trace_hash),
        "the task's spread repeats exactly"
    );
}
