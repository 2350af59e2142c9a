//! The node's election driver over the simulated network: pre-votes and fence probes go
//! through the fabric to the voter, which answers with the same code as a node's gRPC handler
//! (`corral_node::election::answer_pre_vote`, `corral_net::liveness::answer_probe`); "does the
//! leader's port refuse connections" is true only for a crashed node behind a working link.

use std::time::Duration;

use corral_net::{LeadershipProbe, NetError, PreVoteReply, PreVoteRequest, ProbeReply};
use corral_node::election::{answer_pre_vote, ElectionLink, Voter};
use corral_raft_types::NodeId;
use futures::future::BoxFuture;

use crate::network::Fabric;
use crate::world::World;

/// One node's link to the other voters.
#[derive(Clone)]
pub struct SimElectionLink {
    pub from: NodeId,
    pub fabric: Fabric,
    pub world: World,
}

fn lost(to: NodeId, what: &str) -> NetError {
    NetError::Unreachable { addr: format!("sim-node-{to}"), reason: format!("{what}: no answer") }
}

impl ElectionLink for SimElectionLink {
    fn pre_vote<'a>(
        &'a self,
        to: NodeId,
        _addr: &'a str,
        request: &'a PreVoteRequest,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<PreVoteReply, NetError>> {
        Box::pin(async move {
            let ask = async {
                let voter = self.world.node(to)?;
                let link = SimElectionLink { from: to, fabric: self.fabric.clone(), world: self.world.clone() };
                let answer = Voter {
                    node_id: to,
                    raft: &voter.raft,
                    leader: &voter.leader,
                    liveness: &voter.liveness,
                    last_log: &voter.last_log,
                    timing: &voter.timing,
                    link: &link,
                    draining: false,
                };
                Some(answer_pre_vote(&answer, request).await)
            };
            match tokio::time::timeout(timeout, self.fabric.carry(self.from, to, ask)).await {
                Ok(Some(Some(reply))) => Ok(reply),
                _ => Err(lost(to, "pre-vote")),
            }
        })
    }

    fn probe_leadership<'a>(
        &'a self,
        to: NodeId,
        _addr: &'a str,
        probe: &'a LeadershipProbe,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ProbeReply, NetError>> {
        Box::pin(async move {
            let ask = async {
                self.world.node(to).map(|voter| corral_net::liveness::answer_probe(&voter.raft, &voter.liveness, probe))
            };
            match tokio::time::timeout(timeout, self.fabric.carry(self.from, to, ask)).await {
                Ok(Some(Some(reply))) => Ok(reply),
                _ => Err(lost(to, "probe")),
            }
        })
    }

    fn refuses_connections<'a>(&'a self, to: NodeId, _addr: &'a str, timeout: Duration) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            tokio::time::timeout(timeout, self.fabric.connection_refused(self.from, to)).await.unwrap_or(false)
        })
    }
}
