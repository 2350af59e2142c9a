//! The batched write path: proposals waiting together share one Raft entry and each gets its
//! own answer, and a full proposal queue refuses at once (503 `overloaded` with Retry-After
//! over REST) instead of hanging. The first two tests stage the leader in-process (one-node
//! Raft on RocksDB) so the batching can be observed exactly; the last runs real node
//! processes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{one_node_raft, TestCluster};
use corral_model::{Command, NewRegion, Proposal, RegionType, Rejection};
use corral_node::coalescer::CoalescerConfig;
use corral_node::leader::{Leader, LeaderError, PROPOSAL_BATCHING};
use serde_json::json;

fn create_region(name: &str) -> Proposal {
    Proposal::new(Command::CreateRegion(NewRegion::new(name, "org", name, RegionType::Custom)), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mixing_accepted_and_rejected_commands_answers_each_on_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (raft, shared) = one_node_raft(dir.path(), true).await;
    let leader = Leader::new(raft.clone(), shared.clone(), CoalescerConfig { max_in_flight: 1, ..PROPOSAL_BATCHING });

    // 20 new regions, 20 creations of one name (one wins), 20 deletions of nothing.
    let proposals: Vec<Proposal> = (0..20)
        .map(|i| create_region(&format!("new-{i}")))
        .chain((0..20).map(|_| create_region("dup")))
        .chain((0..20).map(|i| Proposal::new(Command::DeleteRegion { id: format!("missing-{i}") }, 1)))
        .collect();
    let answers = futures::future::join_all(proposals.into_iter().map(|p| leader.write(p))).await;

    let mut entries = BTreeSet::new();
    let mut duplicates_accepted = 0;
    for (i, answer) in answers.into_iter().enumerate() {
        let committed = answer.unwrap_or_else(|e| panic!("proposal {i} was not committed: {e}"));
        entries.insert(committed.log_index);
        match i {
            0..=19 => assert!(committed.response.is_ok(), "new region {i}: {:?}", committed.response),
            20..=39 => match committed.response {
                Ok(_) => duplicates_accepted += 1,
                Err(Rejection::DuplicateName { .. }) | Err(Rejection::DuplicateId { .. }) => {}
                Err(other) => panic!("duplicate {i}: unexpected {other}"),
            },
            _ => assert!(
                matches!(committed.response, Err(Rejection::NotFound { .. })),
                "deletion {i}: {:?}",
                committed.response
            ),
        }
    }
    assert_eq!(duplicates_accepted, 1, "exactly one of the 20 creations of one name wins");
    assert!(entries.len() < 60, "60 proposals waiting together shared entries; got {} entries", entries.len());
    {
        let machine = shared.read();
        assert_eq!(machine.state.regions.len(), 21, "20 new regions and one 'dup'");
        assert_eq!(machine.state.validate(), Ok(()));
    }
    raft.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_proposal_queue_answers_overloaded_at_once_and_loses_nothing_it_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (raft, shared) = one_node_raft(dir.path(), true).await;
    let leader = Leader::new(
        raft.clone(),
        shared.clone(),
        CoalescerConfig { queue_capacity: 1, max_batch: 1, max_in_flight: 1, min_batch_while_busy: 1 },
    );

    let writes = (0..200).map(|i| leader.write(create_region(&format!("r-{i}"))));
    let answers = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(writes))
        .await
        .expect("every write is answered; none hangs on a full queue");
    let mut accepted = BTreeSet::new();
    let mut overloaded = 0;
    for (i, answer) in answers.into_iter().enumerate() {
        match answer {
            Ok(committed) => {
                assert!(committed.response.is_ok(), "{:?}", committed.response);
                accepted.insert(format!("r-{i}"));
            }
            Err(LeaderError::Overloaded) => overloaded += 1,
            Err(other) => panic!("write {i}: unexpected {other}"),
        }
    }
    assert!(overloaded > 0, "200 writes at once into a queue of one: some must be refused");
    assert!(!accepted.is_empty(), "the queue still admits what fits");
    let stored: BTreeSet<String> = shared.read().state.regions.keys().cloned().collect();
    assert_eq!(stored, accepted, "exactly the accepted writes were applied");
    raft.shutdown().await.expect("shutdown");
}

#[test]
fn over_rest_a_full_queue_is_503_overloaded_with_retry_after_and_every_201_is_kept() {
    let cluster = TestCluster::start(3, &["--proposal-queue", "1"]);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let (_org, token) = cluster.create_organization(leader, "burst");
    let urls: Vec<String> = (1..=3).map(|id| cluster.url(id, "/api/regions")).collect();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let answers = runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        let requests = (0..300).map(|i| {
            let request = client.post(&urls[i % 3]).bearer_auth(&token).json(&json!({ "name": format!("burst-{i}") }));
            async move {
                let resp = request.send().await.unwrap_or_else(|e| panic!("request {i} got no answer: {e}"));
                let status = resp.status().as_u16();
                let retry_after = resp.headers().get("retry-after").map(|v| v.as_bytes().to_vec());
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                (i, status, retry_after, body)
            }
        });
        futures::future::join_all(requests).await
    });

    let mut created = BTreeSet::new();
    let mut overloaded = 0;
    for (i, status, retry_after, body) in answers {
        match status {
            201 => {
                created.insert(format!("burst-{i}"));
            }
            503 => {
                assert_eq!(body["code"], "overloaded", "request {i}: {body}");
                assert_eq!(retry_after.as_deref(), Some(&b"1"[..]), "request {i}: 503 overloaded says when to retry");
                overloaded += 1;
            }
            other => panic!("request {i}: unexpected {other} {body}"),
        }
    }
    assert!(overloaded > 0, "300 writes at once into a queue of one must overflow it");
    let (status, listed) = cluster.call(leader, "GET", "/api/regions", Some(&token), None, &[]);
    assert_eq!(status, 200);
    let listed: BTreeSet<String> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .filter(|name| name.starts_with("burst-"))
        .collect();
    assert_eq!(listed, created, "every acknowledged region is there, and nothing refused");
}
