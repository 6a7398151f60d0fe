//! Every host's checks of a signed task, and the trust-root decoder: no
//! input may panic, and none may pass without a valid signature.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use starling_task::root::new_root;
use starling_task::sign::{sign_root, unsigned_root};
use starling_task::{check_task, HostFacts, Ledger, OperatorKeyPair, TrustedRoot, Verdict};

fn root() -> &'static TrustedRoot {
    static ROOT: OnceLock<TrustedRoot> = OnceLock::new();
    ROOT.get_or_init(|| {
        let key = OperatorKeyPair::from_seed([1; 32]);
        let root = new_root("fuzz", 1, u64::MAX, &[(key.public_key(), "k".into())], 1, 1)
            .expect("a valid root");
        let signed = sign_root(&unsigned_root(&root), &key).expect("signs");
        TrustedRoot::install(&signed, 0).expect("valid root")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = TrustedRoot::install(data, 0);
    let _ = root().successor(data, 0);
    let mut ledger = Ledger::default();
    match check_task(data, root(), &ledger, 1_000_000) {
        // Only the fuzzer's own key could have signed it: finding one means
        // the checks let an unsigned task through.
        Verdict::Accepted(t) => {
            assert!(!t.signers.is_empty());
            ledger.admit(&t, &HostFacts::default());
            ledger.applied(&t, 0);
        }
        Verdict::Duplicate | Verdict::Refused(_) => {}
    }
});
