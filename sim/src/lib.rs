//! # corral-sim
//!
//! The seeded whole-cluster simulation: 3 or 5 Corral nodes, their clients and a nemesis in
//! one process, on a simulated network ([`network`]) and a simulated clock, with one seed
//! driving every choice. A failing seed replays exactly: `corral-sim --seed N`.
//!
//! What runs is Corral's own code: openraft with the state machine of `corral-storage` (on
//! its simulated disk, [`corral_storage::MemDisk`], which loses unsynced writes in a crash),
//! `corral_model::apply`, the node's leader handle (coalesced writes, idempotency keys, read
//! index), its scheduler and forwarder, its gRPC client and server (`corral_net`'s
//! `PeerClients` and service, tonic and HTTP/2), and its REST API (`corral_api`'s router over
//! the node's `RaftCluster`, served by `corral_api::http_server`; the register clients call
//! it over HTTP/1.1, [`rest`]). What is simulated: TCP between the nodes and from the client
//! host ([`tcp`]: latency, loss and retransmission, cuts, resets, the 1 s unacknowledged-data
//! bound), the rest of the network ([`network`]), the disk, the clock (tokio's paused clock;
//! proposals' wall-clock stamps follow it through `corral_net::now_millis`), and randomness
//! (the runtime's `select!` order through tokio's `rng_seed`, openraft's election timeouts
//! through `corral_raft_types::runtime`, everything else from generators seeded here).
//!
//! One seed's run ([`run_seed`]):
//! 1. draws the cluster (3 or 5 nodes, disk sync latency) and the nemesis profile;
//! 2. starts the nodes, bootstraps, creates the registers, the pool region and its runners;
//! 3. **safety phase**: clients write and read registers, create and delete sandboxes, an
//!    operator changes runner capacity, while the nemesis injects at least ten faults
//!    (partitions, one-way cuts, pauses, crashes with loss of unsynced data, power loss of a
//!    majority, link loss, latency); the invariants are checked every 20 ms of simulated time;
//! 4. **liveness phase**: every fault healed, the cluster must elect, commit a write and
//!    converge (one applied index, one state hash) within a bound;
//! 5. the end checks: linearizability of every register, no acknowledged write lost, every
//!    acknowledged sandbox present and none placed twice, states equal on every node.
//!
//! Invariants checked every step ([`invariants`]): a node's vote never goes back, even across
//! a crash, and a leader holds a majority of votes at or after its own (openraft 0.9's leader
//! ids are `(term, node)`, under which two nodes may lead one after the other in one term, so
//! this, not "one leader per term", is the election invariant); a node's applied index never
//! goes back within one incarnation; two nodes at the same applied index have the same state;
//! no runner over capacity; a runner's allocation equals its sandboxes'.
//!
//! Each node also runs the node's election driver (`corral_node::election::run`: pre-vote,
//! the dead-leader fast path, leader fencing with probes) with `corral serve`'s default timing;
//! its pre-votes and probes are gRPC calls like the rest, and "does the leader's port refuse
//! connections" is a simulated dial.
//!
//! Departures from the design (ARCHITECTURE.md, "Simulation"): the gRPC connections carry
//! no TLS, REST is plain HTTP; runner sessions and gossip are not QUIC but messages on the
//! fabric ([`fleet`]); the sandbox clients and the operator call the node's leader handle and
//! forwarder, the layer under REST (sandbox creation through REST would draw its ids from
//! the operating system, and the simulation's history names sandboxes by request).

pub mod clients;
pub mod fleet;
pub mod invariants;
pub mod nemesis;
pub mod network;
pub mod node;
pub mod rest;
pub mod run;
pub mod tcp;
pub mod world;

pub use run::{run_seed, Options, SeedReport};
