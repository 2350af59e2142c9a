//! Runner sessions: the node side of the runner protocol.
//!
//! A session is one bidirectional QUIC stream on a connection with ALPN
//! [`crate::quic::ALPN_RUNNER`] (a real agent opens one; a simulator opens thousands on a few
//! connections). The agent speaks first:
//!
//! ```text
//! agent → node   Hello { token, version }
//! node  → agent  Welcome { runner_id, node_id, report_interval_ms } | Refused { reason } (+ close)
//! agent → node   Capacity(totals), then Report(HealthReport) every interval (and Capacity
//!                again every CAPACITY_RESEND_REPORTS), Acks([..]) for each Assignments frame
//! node  → agent  Assignments([..])…, Synced (after the first full set), Refused (runner deleted)
//! ```
//!
//! The node sends the runner every sandbox placed on it (start or stop) and a destroy for each
//! one that goes away, in frames of at most [`ASSIGNMENTS_PER_FRAME`]; after the first full set
//! it sends `Synced`, so an agent that reconnects drops whatever it still runs that is no
//! longer assigned. A wrong token, a runner deleted while connected, or a token regenerated
//! while connected gets `Refused` and the whole connection is closed.
//!
//! Both directions flow at once: each side reads the stream in a task of its own, so a large
//! set of assignments (a reconnecting runner may hold tens of thousands) never stops the node
//! from reading reports and acks, and the two sides cannot wait on each other's flow-control
//! window. A frame is read by one task from start to end, never abandoned half read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

// The assignment types and the diff are the model's; they travel in this protocol's frames.
pub use corral_model::assignment::{Assignment, AssignmentAction, AssignmentPoll};
use corral_model::health::HealthReport;
use corral_model::Resources;
use quinn::{Connection, RecvStream, SendStream};
use serde::{Deserialize, Serialize};

use crate::now_millis;
use crate::quic::{read_frame, write_frame, FrameError};

/// Close code for a refused runner (wrong or deleted token).
pub const CLOSE_UNAUTHORIZED: u32 = 1;
/// Connection close code: this node cannot serve runners now; connect to another node.
pub const CLOSE_MOVE_ELSEWHERE: u32 = 4;

/// Assignments per frame: a reconnecting runner's full set goes out in frames of about
/// 100 KB, far under the frame cap, and is acknowledged one frame at a time.
pub const ASSIGNMENTS_PER_FRAME: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    Hello {
        token: String,
        version: String,
    },
    /// `runner_id`, `via_node` and `received_at` are filled in by the node.
    Report(HealthReport),
    /// The agent applied these assignments (one `Acks` per `Assignments` frame).
    Acks(Vec<AssignmentAck>),
    /// The host's totals (logical CPUs, memory and disk GiB, GPUs), sent after `Welcome` and
    /// again every [`CAPACITY_RESEND_REPORTS`] reports; the node commits only a change.
    Capacity(Resources),
}

/// Every this many reports the agent sends its host's capacity again, so a change (or a
/// capacity the node could not commit at once) reaches the cluster without a reconnect.
pub const CAPACITY_RESEND_REPORTS: u64 = 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentAck {
    pub sandbox_id: String,
    pub action: AssignmentAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeMessage {
    Welcome {
        runner_id: String,
        node_id: u64,
        report_interval_ms: u64,
    },
    Refused {
        reason: String,
    },
    /// At most [`ASSIGNMENTS_PER_FRAME`] assignments.
    Assignments(Vec<Assignment>),
    /// Everything assigned has been sent once.
    Synced,
}

/// What a session needs from the node (implemented by `corral-node` over the replicated state
/// and the health table).
pub trait RunnerDirectory: Send + Sync + 'static {
    /// The runner a token belongs to, if any (compares hashes, never stores the token).
    fn authenticate(&self, token: &str) -> Option<String>;
    /// Whether runner `runner_id`'s token is still the one with hash `token_hash` (false once
    /// it was regenerated, or the runner deleted).
    fn holds_token(&self, runner_id: &str, token_hash: &str) -> bool;
    /// The runner's assignments that differ from `sent`, looking only at what changed after
    /// `cursor` (an earlier answer's) when it can, at the whole set when `cursor` is `None`.
    fn poll_assignments(
        &self,
        runner_id: &str,
        cursor: Option<u64>,
        sent: &HashMap<String, AssignmentAction>,
    ) -> AssignmentPoll;
    /// `Err(why)` when this node should not hold runner sessions now (it cannot reach the
    /// cluster's leader, so what its runners report would reach no leader): sessions are
    /// closed, not refused, so agents move to another node.
    fn accepts_runners(&self) -> Result<(), String> {
        Ok(())
    }
    /// A report arrived (already stamped with runner id, node and receipt time).
    fn record(&self, report: HealthReport);
    /// The runner's agent reported its host's capacity.
    fn report_capacity(&self, runner_id: &str, capacity: Resources);
    fn node_id(&self) -> u64;
}

/// Session timing.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub report_interval: Duration,
    /// How often the node looks for new assignments for a runner.
    pub assignment_poll: Duration,
    /// Diff the runner's whole set at least this often, besides the changes polled each
    /// `assignment_poll`: a reconciliation that does not trust the change journal.
    pub full_recheck: Duration,
    pub hello_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            report_interval: Duration::from_secs(1),
            assignment_poll: Duration::from_secs(1),
            full_recheck: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves every session a runner connection opens, until it closes.
pub async fn serve_runner_connection(
    connection: Connection,
    directory: Arc<dyn RunnerDirectory>,
    config: SessionConfig,
) {
    metrics::gauge!("corral_runner_connections").increment(1.0);
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                let directory = directory.clone();
                let config = config.clone();
                let connection = connection.clone();
                tokio::spawn(async move {
                    metrics::gauge!("corral_runner_sessions").increment(1.0);
                    if let Err(e) = session(&connection, send, recv, directory, config).await {
                        tracing::debug!(error = %e, remote = %connection.remote_address(), "runner session ended");
                    }
                    metrics::gauge!("corral_runner_sessions").decrement(1.0);
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, remote = %connection.remote_address(), "runner connection closed");
                break;
            }
        }
    }
    metrics::gauge!("corral_runner_connections").decrement(1.0);
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("no hello within the timeout")]
    NoHello,
    #[error("the agent spoke out of turn")]
    Protocol,
    #[error("refused: {0}")]
    Refused(String),
    #[error("sent to another node: {0}")]
    MovedElsewhere(String),
}

async fn refuse(connection: &Connection, send: &mut SendStream, reason: &str) -> SessionError {
    metrics::counter!("corral_runner_sessions_refused_total").increment(1);
    let _ = write_frame(send, &NodeMessage::Refused { reason: reason.to_string() }).await;
    let _ = send.finish();
    // Give the refusal a moment to leave before the connection goes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    connection.close(CLOSE_UNAUTHORIZED.into(), reason.as_bytes());
    SessionError::Refused(reason.to_string())
}

/// Closes the connection so that its agent reconnects to another node (no `Refused`: the
/// runner is welcome, only not here, now).
fn move_elsewhere(connection: &Connection, runner_id: &str, reason: &str) -> SessionError {
    tracing::debug!(runner_id, reason, "runner session closed: move to another node");
    metrics::counter!("corral_runner_sessions_moved_total").increment(1);
    connection.close(CLOSE_MOVE_ELSEWHERE.into(), reason.as_bytes());
    SessionError::MovedElsewhere(reason.to_string())
}

async fn session(
    connection: &Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    directory: Arc<dyn RunnerDirectory>,
    config: SessionConfig,
) -> Result<(), SessionError> {
    let hello = tokio::time::timeout(config.hello_timeout, read_frame::<AgentMessage>(&mut recv))
        .await
        .map_err(|_| SessionError::NoHello)??;
    let Some(AgentMessage::Hello { token, version }) = hello else {
        return Err(SessionError::Protocol);
    };
    let Some(runner_id) = directory.authenticate(&token) else {
        tracing::warn!(remote = %connection.remote_address(), "runner refused: unknown token");
        return Err(refuse(connection, &mut send, "unknown or revoked runner token").await);
    };
    if let Err(reason) = directory.accepts_runners() {
        return Err(move_elsewhere(connection, &runner_id, &reason));
    }
    // Kept only hashed: the session checks on every poll that the token is still the runner's.
    let token_hash = corral_model::secret::hash_secret(&token);
    drop(token);
    tracing::info!(runner_id, version, remote = %connection.remote_address(), "runner session opened");
    write_frame(
        &mut send,
        &NodeMessage::Welcome {
            runner_id: runner_id.clone(),
            node_id: directory.node_id(),
            report_interval_ms: config.report_interval.as_millis() as u64,
        },
    )
    .await?;

    // sandbox id → last action sent; the reader drops destroys once the runner acknowledges them.
    let sent: SentAssignments = Arc::new(Mutex::new(HashMap::new()));
    let mut reader = AbortOnDrop(tokio::spawn(read_agent(recv, runner_id.clone(), directory.clone(), sent.clone())));
    let mut cursor: Option<u64> = None;
    let mut synced = false;
    let mut last_full = tokio::time::Instant::now();
    let mut poll = tokio::time::interval(config.assignment_poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ended = &mut reader.0 => {
                return match ended {
                    Ok(result) => result,
                    Err(_) => Err(SessionError::Protocol),
                };
            }
            _ = poll.tick() => {
                if let Err(reason) = directory.accepts_runners() {
                    return Err(move_elsewhere(connection, &runner_id, &reason));
                }
                if !directory.holds_token(&runner_id, &token_hash) {
                    tracing::warn!(runner_id, "runner token regenerated or runner deleted; closing its session");
                    return Err(refuse(connection, &mut send, "runner token regenerated or runner deleted").await);
                }
                let full = last_full.elapsed() >= config.full_recheck;
                let since = if full { None } else { cursor };
                let polled = {
                    let sent = sent.lock().unwrap_or_else(PoisonError::into_inner);
                    directory.poll_assignments(&runner_id, since, &sent)
                };
                match polled {
                    AssignmentPoll::Gone => {
                        tracing::warn!(runner_id, "runner deleted; closing its session");
                        return Err(refuse(connection, &mut send, "runner deleted").await);
                    }
                    AssignmentPoll::Unchanged => {}
                    AssignmentPoll::Changes { cursor: at, changed, gone } => {
                        if full {
                            last_full = tokio::time::Instant::now();
                        }
                        cursor = Some(at);
                        send_changes(&mut send, &sent, changed, gone).await?;
                        if !synced {
                            write_frame(&mut send, &NodeMessage::Synced).await?;
                            synced = true;
                        }
                    }
                }
            }
        }
    }
}

/// What a session sent, shared with its reader.
type SentAssignments = Arc<Mutex<HashMap<String, AssignmentAction>>>;

/// A task that is cancelled when its owner goes (a session's reader ends with its session).
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads what the agent sends until it finishes the stream: reports go to the directory, acks
/// of destroys retire their sandboxes from `sent`.
async fn read_agent(
    mut recv: RecvStream,
    runner_id: String,
    directory: Arc<dyn RunnerDirectory>,
    sent: SentAssignments,
) -> Result<(), SessionError> {
    loop {
        match read_frame::<AgentMessage>(&mut recv).await? {
            None => return Ok(()),
            Some(AgentMessage::Report(mut report)) => {
                report.runner_id = runner_id.clone();
                report.via_node = directory.node_id();
                report.received_at = now_millis();
                if report.is_well_formed() {
                    metrics::counter!("corral_runner_reports_total").increment(1);
                    directory.record(report);
                } else {
                    metrics::counter!("corral_runner_reports_rejected_total").increment(1);
                }
            }
            Some(AgentMessage::Acks(acks)) => {
                metrics::counter!("corral_runner_assignment_acks_total").increment(acks.len() as u64);
                tracing::debug!(runner_id, acks = acks.len(), "assignments acknowledged");
                let mut sent = sent.lock().unwrap_or_else(PoisonError::into_inner);
                for ack in acks {
                    if ack.action == AssignmentAction::Destroy
                        && sent.get(&ack.sandbox_id) == Some(&AssignmentAction::Destroy)
                    {
                        sent.remove(&ack.sandbox_id);
                    }
                }
            }
            Some(AgentMessage::Capacity(capacity)) => {
                metrics::counter!("corral_runner_capacity_reports_total").increment(1);
                directory.report_capacity(&runner_id, capacity);
            }
            Some(AgentMessage::Hello { .. }) => return Err(SessionError::Protocol),
        }
    }
}

/// Sends the changed assignments, and a destroy for each sandbox that is gone, in frames of
/// at most [`ASSIGNMENTS_PER_FRAME`].
async fn send_changes(
    send: &mut SendStream,
    sent: &SentAssignments,
    changed: Vec<Assignment>,
    gone: Vec<String>,
) -> Result<(), FrameError> {
    let destroys = gone.into_iter().map(|sandbox_id| Assignment {
        sandbox_id,
        action: AssignmentAction::Destroy,
        target: String::new(),
        resources: Resources::default(),
    });
    let mut all = changed.into_iter().chain(destroys).peekable();
    while all.peek().is_some() {
        let frame: Vec<Assignment> = all.by_ref().take(ASSIGNMENTS_PER_FRAME).collect();
        {
            let mut sent = sent.lock().unwrap_or_else(PoisonError::into_inner);
            for assignment in &frame {
                sent.insert(assignment.sandbox_id.clone(), assignment.action);
            }
        }
        metrics::counter!("corral_runner_assignments_sent_total").increment(frame.len() as u64);
        write_frame(send, &NodeMessage::Assignments(frame)).await?;
    }
    Ok(())
}
