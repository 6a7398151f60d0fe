//! The operator's flow with the real `starlingctl`: keys OpenSSL reads, a
//! trust root that needs two signatures, tasks that hosts refuse until
//! enough operators signed them and accept after.

use std::path::Path;
use std::process::Command;

use starling_task::{check_task, Ledger, RefusalReason, TrustedRoot, Verdict};

fn starlingctl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_starlingctl"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("starlingctl runs");
    assert!(
        out.status.success(),
        "starlingctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_starlingctl"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("starlingctl runs");
    assert!(!out.status.success(), "starlingctl {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn keys_roots_and_tasks_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for name in ["alice", "bob", "carol"] {
        let out = starlingctl(d, &["key", "new", name, "--dir", "keys"]);
        assert!(out.contains(&format!("keys/{name}.key")), "{out}");
    }
    // Private keys are the owner's only, and OpenSSL reads both halves.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.join("keys/alice.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    for (args, file) in [
        (vec!["pkey", "-in"], "alice.key"),
        (vec!["pkey", "-pubin", "-in"], "alice.pub"),
    ] {
        let out = Command::new("openssl")
            .args(&args)
            .arg(d.join("keys").join(file))
            .args(["-noout", "-text"])
            .output()
            .expect("openssl is installed (scripts/setup)");
        assert!(
            out.status.success(),
            "openssl {args:?} {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ED25519"));
    }
    let listed = starlingctl(d, &["key", "list", "--dir", "keys", "--json"]);
    assert_eq!(listed.lines().count(), 3, "one line per key: {listed}");
    assert!(fails(d, &["key", "new", "alice", "--dir", "keys"]).contains("exists"));

    // A root of three keys; root changes need two.
    starlingctl(
        d,
        &[
            "root",
            "init",
            "--fleet",
            "acme",
            "--key",
            "keys/alice.pub",
            "--key",
            "keys/bob.pub",
            "--key",
            "keys/carol.pub",
            "-o",
            "root.bin",
        ],
    );
    let shown = starlingctl(d, &["root", "sign", "--key", "keys/alice.key", "root.bin"]);
    assert!(shown.contains("not installable yet"), "{shown}");
    let shown = starlingctl(d, &["root", "sign", "--key", "keys/bob.key", "root.bin"]);
    assert!(shown.contains("valid: hosts can install it"), "{shown}");
    let root = TrustedRoot::install(&std::fs::read(d.join("root.bin")).unwrap(), now()).unwrap();
    assert_eq!(root.fleet, "acme");

    // A tag task: refused unsigned, accepted with one signature.
    starlingctl(
        d,
        &[
            "task", "create", "tags", "--root", "root.bin", "--all", "--set", "web", "--id", "t1",
            "-o", "t1.bin",
        ],
    );
    let unsigned = std::fs::read(d.join("t1.bin")).unwrap();
    match check_task(&unsigned, &root, &Ledger::default(), now()) {
        Verdict::Refused(r) => assert_eq!(r.reason, RefusalReason::TooFewSignatures),
        other => panic!("{other:?}"),
    }
    let shown = starlingctl(d, &["task", "show", "t1.bin", "--root", "root.bin"]);
    assert!(shown.contains("refuse it (too_few_signatures"), "{shown}");
    starlingctl(d, &["task", "sign", "--key", "keys/carol.key", "t1.bin"]);
    let signed = std::fs::read(d.join("t1.bin")).unwrap();
    assert!(matches!(
        check_task(&signed, &root, &Ledger::default(), now()),
        Verdict::Accepted(_)
    ));
    let json: serde_json::Value = serde_json::from_str(&starlingctl(
        d,
        &["task", "show", "t1.bin", "--root", "root.bin", "--json"],
    ))
    .unwrap();
    assert_eq!(json["verdict"], "accept it");
    assert_eq!(json["kind"], "tags");
    assert!(json["rollout"].is_null(), "no plan");

    // A task rolled out in waves: the plan is in the task, shown as it
    // was written, and hosts accept it.
    starlingctl(
        d,
        &[
            "task",
            "create",
            "tags",
            "--root",
            "root.bin",
            "--all",
            "--set",
            "db",
            "--id",
            "t2",
            "--rollout",
            "1%:2m,canary:1m,100%:5m/5%",
            "-o",
            "t2.bin",
        ],
    );
    starlingctl(d, &["task", "sign", "--key", "keys/carol.key", "t2.bin"]);
    let shown = starlingctl(d, &["task", "show", "t2.bin", "--root", "root.bin"]);
    assert!(
        shown.contains("rollout: 1%:2m/2%,canary:1m/2%,100%:5m/5%"),
        "{shown}"
    );
    assert!(shown.contains("accept it"), "{shown}");
    // A plan checked at the desk, as hosts will check it.
    let plan = starlingctl(d, &["rollout", "plan", "1%:2m,canary,100%/5%"]);
    assert!(
        plan.contains("wave 0: 1%:2m/2%") && plan.contains("wave 2: 100%:5m/5%"),
        "{plan}"
    );
    assert!(fails(d, &["rollout", "plan", "10%"]).contains("last wave"));
    // The operators abort that rollout with a signed rollout task.
    starlingctl(
        d,
        &[
            "task",
            "create",
            "rollout",
            "--root",
            "root.bin",
            "--all",
            "--action",
            "abort",
            "--task",
            "t2",
            "-o",
            "abort.bin",
        ],
    );
    starlingctl(d, &["task", "sign", "--key", "keys/carol.key", "abort.bin"]);
    let shown = starlingctl(d, &["task", "show", "abort.bin", "--root", "root.bin"]);
    assert!(shown.contains("abort the rollout of task t2"), "{shown}");
    assert!(shown.contains("accept it"), "{shown}");

    // Revoking a key needs two signatures.
    let carol = starling_task::KeyId::of(
        &starling_task::keys::public_key_from_pem(
            &std::fs::read_to_string(d.join("keys/carol.pub")).unwrap(),
            Path::new("carol.pub"),
        )
        .unwrap(),
    );
    starlingctl(
        d,
        &[
            "task",
            "create",
            "revoke-key",
            "--root",
            "root.bin",
            "--all",
            "--key-id",
            &carol.0,
            "-o",
            "revoke.bin",
        ],
    );
    starlingctl(
        d,
        &["task", "sign", "--key", "keys/alice.key", "revoke.bin"],
    );
    assert!(
        starlingctl(d, &["task", "show", "revoke.bin", "--root", "root.bin"])
            .contains("too_few_signatures")
    );
    starlingctl(d, &["task", "sign", "--key", "keys/bob.key", "revoke.bin"]);
    assert!(
        starlingctl(d, &["task", "show", "revoke.bin", "--root", "root.bin"]).contains("accept it")
    );

    // Mistakes are caught at the desk.
    assert!(fails(
        d,
        &["task", "create", "tags", "--root", "root.bin", "--set", "x", "-o", "x.bin"]
    )
    .contains("no target"));
    let config_fails = |flag: &str, value: &str| {
        fails(
            d,
            &[
                "task", "create", "config", "--root", "root.bin", "--all", flag, value, "-o",
                "y.bin",
            ],
        )
    };
    assert!(config_fails("--rate-limit", "nope=1").contains("not a kind the sensor produces"));
    // The node's own kinds are never filtered.
    for own in ["event_loss", "task_state"] {
        assert!(config_fails("--rate-limit", &format!("{own}=1"))
            .contains("not a kind the sensor produces"));
        assert!(config_fails("--disable-kind", own).contains("invalid value"));
    }
    assert!(config_fails("--rollout", "10%,50%").contains("last wave"));
    // Paths the sensor could not load are refused before any host sees them.
    assert!(config_fails("--watch-paths", "etc/shadow").contains("sensor.watch_paths"));
    assert!(config_fails("--quiet-exes", "updatedb").contains("sensor.quiet_exes"));
    assert!(
        fails(d, &["task", "sign", "--key", "keys/alice.pub", "t1.bin"])
            .contains("not an ed25519 private key")
    );
}
