//! The operator's side of the task plane: building trust roots and tasks
//! from command-line choices, and showing them for a person to read before
//! signing (docs/tasks.md).

use std::collections::BTreeSet;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use prost::Message as _;
use serde_json::json;
use starling_proto::v1::config_setting::Setting;
use starling_proto::v1::task_payload::Body;
use starling_proto::v1::{
    SignedRoot, SignedTask, TargetSelector, TaskKind, TaskPayload, TrustRoot,
};
use starling_task::keys::KeyId;
use starling_task::root::kind_name;
use starling_task::{check_task, Ledger, TrustedRoot, Verdict};

use crate::sanitize;

/// A signed root for a person: its keys, what each kind needs, and which
/// keys signed it.
pub fn render_root(signed: &[u8], now: u64) -> anyhow::Result<String> {
    let (root, s) = decode_root(signed)?;
    let signers: BTreeSet<&str> = s.signatures.iter().map(|x| x.key_id.as_str()).collect();
    let mut out = format!(
        "trust root of fleet {} version {}, expires {}\n",
        sanitize(&root.fleet),
        root.version,
        unix_time(root.expires)
    );
    let mut keys = Table::new();
    keys.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["KEY ID", "NAME", "SIGNED THIS ROOT"]);
    for k in &root.keys {
        let id = KeyId::of(&k.public_key);
        keys.add_row([
            id.short().to_owned(),
            sanitize(&k.name),
            if signers.contains(id.0.as_str()) {
                "yes"
            } else {
                ""
            }
            .to_owned(),
        ]);
    }
    out.push_str(&format!("{keys}\n"));
    let mut policies = Table::new();
    policies.load_preset(UTF8_FULL_CONDENSED).set_header([
        "KIND",
        "SIGNATURES NEEDED",
        "KEYS ALLOWED",
    ]);
    for p in &root.policies {
        let kind = TaskKind::try_from(p.kind).map_or("unknown", kind_name);
        policies.add_row([
            kind.to_owned(),
            p.threshold.to_string(),
            p.key_ids
                .iter()
                .map(|k| k.get(..12).unwrap_or(k).to_owned())
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    out.push_str(&format!("{policies}\n"));
    out.push_str(&match TrustedRoot::install(signed, now) {
        Ok(_) => "valid: hosts can install it as their first root\n".to_owned(),
        Err(e) => format!("not installable yet: {e}\n"),
    });
    Ok(out)
}

/// A signed root as JSON.
pub fn root_json(signed: &[u8], now: u64) -> anyhow::Result<serde_json::Value> {
    let (root, s) = decode_root(signed)?;
    Ok(json!({
        "fleet": root.fleet,
        "version": root.version,
        "expires": root.expires,
        "keys": root.keys.iter().map(|k| json!({
            "key_id": KeyId::of(&k.public_key).0,
            "name": k.name,
        })).collect::<Vec<_>>(),
        "policies": root.policies.iter().map(|p| json!({
            "kind": TaskKind::try_from(p.kind).map_or("unknown", kind_name),
            "threshold": p.threshold,
            "key_ids": p.key_ids,
        })).collect::<Vec<_>>(),
        "signed_by": s.signatures.iter().map(|x| x.key_id.clone()).collect::<Vec<_>>(),
        "installable": TrustedRoot::install(signed, now).err().map_or("yes".to_owned(), |e| e.to_string()),
    }))
}

fn decode_root(signed: &[u8]) -> anyhow::Result<(TrustRoot, SignedRoot)> {
    let s = SignedRoot::decode(signed).map_err(|e| anyhow::anyhow!("not a signed root: {e}"))?;
    let root =
        TrustRoot::decode(s.root.as_slice()).map_err(|e| anyhow::anyhow!("not a root: {e}"))?;
    Ok((root, s))
}

/// What a task does, in a line per item.
pub fn describe_body(body: &Body) -> Vec<String> {
    match body {
        Body::Config(c) => c
            .settings
            .iter()
            .map(|s| {
                let what = match &s.setting {
                    Some(Setting::SensorKind(k)) => format!(
                        "sensor kind {} {}",
                        sanitize(&k.kind),
                        if k.enabled { "on" } else { "off" }
                    ),
                    Some(Setting::WatchPaths(l)) => format!("watch_paths = {}", list(&l.values)),
                    Some(Setting::QuietPaths(l)) => format!("quiet_paths = {}", list(&l.values)),
                    Some(Setting::QuietExes(l)) => format!("quiet_exes = {}", list(&l.values)),
                    Some(Setting::QuietCgroups(l)) => {
                        format!("quiet_cgroups = {}", list(&l.values))
                    }
                    Some(Setting::RateLimit(r)) => format!(
                        "rate limit {} = {}/s burst {}",
                        sanitize(&r.kind),
                        r.per_second,
                        r.burst
                    ),
                    Some(Setting::SpoolQuotaBytes(b)) => format!("spool quota = {b} bytes"),
                    Some(Setting::RingBufferBytes(b)) => format!("ring buffer = {b} bytes"),
                    None => "(empty setting)".into(),
                };
                if s.reset {
                    format!(
                        "reset {what} to the local file's value (generation {})",
                        s.generation
                    )
                } else {
                    format!("{what} (generation {})", s.generation)
                }
            })
            .collect(),
        Body::Tags(t) => t
            .changes
            .iter()
            .map(|c| {
                format!(
                    "{} tag {} (generation {})",
                    if c.remove { "remove" } else { "set" },
                    sanitize(&c.tag),
                    c.generation
                )
            })
            .collect(),
        Body::Revocations(r) => vec![format!(
            "certificate revocation list of {} bytes (generation {})",
            r.crl_der.len(),
            r.generation
        )],
        Body::Root(r) => vec![match TrustRoot::decode(r.root.as_slice()) {
            Ok(root) => format!(
                "trust root version {} with {} keys, {} signatures",
                root.version,
                root.keys.len(),
                r.signatures.len()
            ),
            Err(e) => format!("an unreadable trust root ({e})"),
        }],
        Body::RevokeKeys(r) => r
            .key_ids
            .iter()
            .map(|k| format!("revoke operator key {}", sanitize(k)))
            .collect(),
        Body::Cancel(c) => c
            .task_ids
            .iter()
            .map(|t| format!("cancel task {}", sanitize(t)))
            .collect(),
        Body::RolloutControl(r) => {
            let action = starling_proto::v1::RolloutAction::try_from(r.action).map_or(
                "(unknown action)",
                |a| match a {
                    starling_proto::v1::RolloutAction::Pause => "pause",
                    starling_proto::v1::RolloutAction::Resume => "resume",
                    starling_proto::v1::RolloutAction::Abort => "abort",
                    starling_proto::v1::RolloutAction::Unspecified => "(no action)",
                },
            );
            r.task_ids
                .iter()
                .map(|t| {
                    format!(
                        "{action} the rollout of task {} (generation {})",
                        sanitize(t),
                        r.generation
                    )
                })
                .collect()
        }
    }
}

fn list(values: &[String]) -> String {
    format!(
        "[{}]",
        values
            .iter()
            .map(|v| sanitize(v))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A target for a person.
pub fn describe_target(t: &TargetSelector) -> String {
    let mut parts = Vec::new();
    if t.all {
        parts.push("every host".to_owned());
    }
    for (what, l) in [("hosts", &t.hosts), ("tags", &t.tags), ("cells", &t.cells)] {
        if !l.is_empty() {
            parts.push(format!("{what} {}", list(l)));
        }
    }
    let mut s = if parts.is_empty() {
        "no host".to_owned()
    } else {
        parts.join(" or ")
    };
    if t.sample_basis_points != 0 {
        s.push_str(&format!(
            ", {:.2}% of them (seed {:?})",
            f64::from(t.sample_basis_points) / 100.0,
            sanitize(&t.sample_seed)
        ));
    }
    for (what, l) in [("hosts", &t.exclude_hosts), ("tags", &t.exclude_tags)] {
        if !l.is_empty() {
            s.push_str(&format!(", except {what} {}", list(l)));
        }
    }
    s
}

/// A signed task for a person: what it does, to whom, when, who signed,
/// and (given the fleet's root) whether hosts will take it now.
pub fn render_task(signed: &[u8], root: Option<&TrustedRoot>, now: u64) -> anyhow::Result<String> {
    let (p, s) = decode_task(signed)?;
    let kind = p
        .body
        .as_ref()
        .map_or("none", |b| kind_name(starling_task::check::kind_of(b)));
    let mut out = format!(
        "task {} ({kind}) for fleet {}\n  reason: {}\n  valid: {} to {}\n  target: {}\n",
        sanitize(&p.task_id),
        sanitize(&p.fleet),
        sanitize(&p.reason),
        unix_time(p.not_before),
        unix_time(p.not_after),
        p.target.as_ref().map_or("none".into(), describe_target),
    );
    for line in p.body.as_ref().map(describe_body).unwrap_or_default() {
        out.push_str(&format!("  - {line}\n"));
    }
    if let Some(plan) = &p.rollout {
        out.push_str(&format!(
            "  rollout: {}\n",
            sanitize(&crate::rollout::describe_plan(plan))
        ));
    }
    out.push_str(&format!(
        "  signed by: {}\n",
        if s.signatures.is_empty() {
            "nobody yet".to_owned()
        } else {
            s.signatures
                .iter()
                .map(|x| x.key_id.get(..12).unwrap_or(&x.key_id).to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    if let Some(root) = root {
        out.push_str(&format!("  hosts will: {}\n", verdict(signed, root, now)));
    }
    Ok(out)
}

/// What a host holding `root` and nothing else would make of the task now.
pub fn verdict(signed: &[u8], root: &TrustedRoot, now: u64) -> String {
    match check_task(signed, root, &Ledger::default(), now) {
        Verdict::Accepted(_) => "accept it".into(),
        Verdict::Duplicate => "already hold it".into(),
        Verdict::Refused(r) => format!("refuse it ({}: {})", r.reason.as_str(), r.detail),
    }
}

fn decode_task(signed: &[u8]) -> anyhow::Result<(TaskPayload, SignedTask)> {
    let s = SignedTask::decode(signed).map_err(|e| anyhow::anyhow!("not a signed task: {e}"))?;
    let p = TaskPayload::decode(s.payload.as_slice())
        .map_err(|e| anyhow::anyhow!("not a task payload: {e}"))?;
    Ok((p, s))
}

/// A signed task as JSON.
pub fn task_json(
    signed: &[u8],
    root: Option<&TrustedRoot>,
    now: u64,
) -> anyhow::Result<serde_json::Value> {
    let (p, s) = decode_task(signed)?;
    Ok(json!({
        "task_id": p.task_id,
        "fleet": p.fleet,
        "kind": p.body.as_ref().map_or("none", |b| kind_name(starling_task::check::kind_of(b))),
        "reason": p.reason,
        "not_before": p.not_before,
        "not_after": p.not_after,
        "target": p.target.as_ref().map(describe_target),
        "does": p.body.as_ref().map(describe_body).unwrap_or_default(),
        "rollout": p.rollout.as_ref().map(crate::rollout::describe_plan),
        "signed_by": s.signatures.iter().map(|x| x.key_id.clone()).collect::<Vec<_>>(),
        "verdict": root.map(|r| verdict(signed, r, now)),
    }))
}

/// Unix seconds as an RFC 3339 time.
fn unix_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.min(253_402_300_799)),
    )
    .to_string()
}

/// The fleet's progress on task `id` (or a line per task without one),
/// with the hosts in each state but applied and not targeted when
/// `hosts`.
pub fn render_fleet_status(
    fleet: &starling_task::rollup::FleetStatus,
    id: Option<&str>,
    hosts: bool,
) -> String {
    let mut out = format!(
        "{} hosts in {} cells report\n",
        fleet.members(),
        fleet.cells.len()
    );
    let ids: Vec<String> = match id {
        Some(id) => vec![id.to_owned()],
        None => fleet.task_ids().into_iter().collect(),
    };
    if ids.is_empty() {
        out.push_str("no task\n");
        return out;
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "TASK",
        "PROGRESS",
        "APPLIED",
        "PENDING",
        "NO ANSWER",
        "DOWN",
        "FAILED",
        "REFUSED",
        "STOPPED",
        "NOT TARGETED",
    ]);
    for id in &ids {
        let t = fleet.task(id);
        let n = |s: &str| t.counts.get(s).copied().unwrap_or(0);
        let unanswered =
            n(starling_task::rollup::NO_ANSWER) + n(starling_task::rollup::NOT_REPORTING);
        let targeted = t.total() - n("not_targeted");
        table.add_row([
            sanitize(id),
            progress_bar(n("applied"), targeted),
            n("applied").to_string(),
            // Under way: pending, and under a rollout waiting for its
            // wave or soaking (the waves' lines below tell them apart).
            (n("pending") + n("waiting") + n("soaking")).to_string(),
            unanswered.to_string(),
            n(starling_task::rollup::DOWN).to_string(),
            n("failed").to_string(),
            n("refused").to_string(),
            n("stopped").to_string(),
            n("not_targeted").to_string(),
        ]);
    }
    out.push_str(&format!("{table}\n"));
    for id in &ids {
        out.push_str(&render_waves(id, &fleet.task(id)));
    }
    if hosts {
        for id in &ids {
            for (state, names) in &fleet.task(id).hosts {
                let mut names: Vec<String> = names.iter().map(|h| sanitize(h)).collect();
                names.sort();
                out.push_str(&format!("{} {state}: {}\n", sanitize(id), names.join(" ")));
            }
        }
    }
    out
}

/// A task's rollout wave by wave (nothing for a task without a plan):
/// each wave's hosts, how many soaked, how many failed, and the hosts
/// waiting, soaking and rolled back across the waves.
fn render_waves(id: &str, t: &starling_task::rollup::TaskCounts) -> String {
    if t.waves.is_empty() {
        return String::new();
    }
    let n = |s: &str| t.counts.get(s).copied().unwrap_or(0);
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["WAVE", "HOSTS", "SOAKED", "FAILED"]);
    for (k, w) in t.waves.iter().enumerate() {
        table.add_row([
            k.to_string(),
            w.hosts.to_string(),
            progress_bar(w.soaked, w.hosts),
            w.failed.to_string(),
        ]);
    }
    format!(
        "rollout of {}: {} waiting, {} soaking, {} rolled back\n{table}\n",
        sanitize(id),
        n("waiting"),
        n("soaking"),
        n("rolled_back")
    )
}

/// `[#####.....]  50% of 10` (hosts not answering count as not done;
/// hosts that do not report the task at all, such as the not targeted,
/// are outside the share).
pub(crate) fn progress_bar(done: u32, of: u32) -> String {
    const WIDTH: u32 = 20;
    if of == 0 {
        return "-".into();
    }
    let filled = (done * WIDTH / of).min(WIDTH) as usize;
    format!(
        "[{}{}] {:>3}% of {of}",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        done * 100 / of
    )
}

#[cfg(test)]
mod tests {
    use starling_task::rollout::WaveTally;
    use starling_task::rollup::{CellSummary, FleetStatus, TaskCounts};

    use super::*;

    #[test]
    fn a_planned_task_shows_its_waves() {
        let mut t = TaskCounts::default();
        t.counts.insert("applied".into(), 3);
        t.counts.insert("waiting".into(), 9);
        t.waves = vec![
            WaveTally {
                hosts: 3,
                soaked: 3,
                failed: 0,
            },
            WaveTally {
                hosts: 9,
                soaked: 0,
                failed: 0,
            },
        ];
        let mut fleet = FleetStatus::default();
        fleet.take(CellSummary {
            cell: "c".into(),
            by: "a".into(),
            at_ms: 1,
            members: 12,
            tasks: [("roll".to_string(), t)].into(),
            hosts: Default::default(),
        });
        let out = render_fleet_status(&fleet, Some("roll"), false);
        assert!(
            out.contains("rollout of roll: 9 waiting, 0 soaking"),
            "{out}"
        );
        assert!(
            out.contains("100% of 3") && out.contains("0% of 9"),
            "{out}"
        );
        assert!(
            out.contains("┆ 3       ┆ 9       ┆"),
            "the waiting count as pending: {out}"
        );
        let plain = TaskCounts::default();
        assert!(render_waves("plain", &plain).is_empty());
    }
}
