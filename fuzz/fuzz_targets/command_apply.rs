//! Replicated commands as they arrive in the Raft log: newline-separated JSON proposals are
//! decoded and applied in order. Decoding must never panic, `apply` must keep the state's
//! invariants after every proposal, and applying the same log twice must give the same state
//! hash (determinism is what keeps replicas identical).
#![no_main]

use corral_model::{apply, Proposal, State};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let proposals: Vec<Proposal> =
        data.split(|b| *b == b'\n').filter_map(|line| serde_json::from_slice(line).ok()).collect();
    let mut first = State::default();
    for proposal in &proposals {
        let _ = apply(&mut first, proposal);
        if let Err(broken) = first.validate() {
            panic!("invariant broken after {:?}: {broken}", proposal.command);
        }
    }
    let mut second = State::default();
    for proposal in &proposals {
        let _ = apply(&mut second, proposal);
    }
    assert_eq!(first.hash(), second.hash(), "apply is not deterministic");
});
