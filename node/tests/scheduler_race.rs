//! A batch planned while a runner was schedulable, committed after it stopped being so, is
//! rejected for that runner by `apply` and placed again elsewhere by the scheduler.
//! (In-process single-node Raft on RocksDB, so the race can be staged exactly.)

mod common;

use corral_model::{Command, NewRegion, NewRunner, Proposal, RegionType, Resources, RunnerState};
use corral_node::leader::{Leader, PROPOSAL_BATCHING};
use corral_node::scheduler::{commit_and_retry, plan, IndexCache, Pending};
use corral_raft_types::{Raft, SharedState};
use rand::SeedableRng;

async fn write(raft: &Raft, shared: &SharedState, command: Command) {
    let reply = Leader::new(raft.clone(), shared.clone(), PROPOSAL_BATCHING)
        .write(Proposal::new(command, 1))
        .await
        .expect("committed");
    assert!(reply.response.is_ok(), "{:?}", reply.response);
}

fn runner(id: &str) -> Command {
    Command::CreateRunner(NewRunner::new(
        id,
        "reg",
        id,
        format!("hash-{id}"),
        Resources { cpu: 4, memory_gib: 8, disk_gib: 40, gpu: 0 },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_racing_an_unschedulable_runner_is_retried_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (raft, shared) = common::one_node_raft(dir.path(), false).await;

    write(&raft, &shared, Command::CreateRegion(NewRegion::new("reg", "org", "reg", RegionType::Custom))).await;
    write(&raft, &shared, runner("a")).await;
    write(&raft, &shared, runner("b")).await;
    write(&raft, &shared, Command::SetRunnerState { id: "a".into(), state: RunnerState::Ready }).await;

    // Plan two sandboxes while only runner a is eligible: both go to a.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut answers = Vec::new();
    let pendings: Vec<Pending> = (0..2)
        .map(|i| {
            let (pending, answer) = Pending::new(common::sandbox_request(&format!("s{i}")));
            answers.push(answer);
            pending
        })
        .collect();
    let mut cache = IndexCache::default();
    let planned = plan(&shared.read().state, pendings, &mut rng, &mut cache);
    assert_eq!(planned.len(), 2);

    // The race: a is cordoned and b admitted before the batch is committed.
    write(&raft, &shared, Command::SetRunnerSchedulable { id: "a".into(), schedulable: Some(false) }).await;
    write(&raft, &shared, Command::SetRunnerState { id: "b".into(), state: RunnerState::Ready }).await;

    commit_and_retry(
        &Leader::new(raft.clone(), shared.clone(), PROPOSAL_BATCHING),
        &shared,
        planned,
        &mut rng,
        &mut cache,
    )
    .await;
    for answer in answers {
        let sandbox = answer.await.expect("answered").expect("no cluster error").expect("placed on retry");
        assert_eq!(sandbox.runner_id, "b", "placed again, on the runner that can take it");
    }
    {
        let machine = shared.read();
        assert_eq!(machine.state.runners["a"].allocated.cpu, 0, "nothing landed on the cordoned runner");
        assert_eq!(machine.state.runners["b"].allocated.cpu, 2);
        assert_eq!(machine.state.validate(), Ok(()));
    }
    raft.shutdown().await.expect("shutdown");
}
