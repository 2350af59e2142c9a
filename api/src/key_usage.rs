//! `lastUsedAt` of organization API keys, recorded lazily: every node notes the latest use of
//! each key it authenticates (in memory, one entry per live key), and [`record_forever`]
//! commits those that moved by at least [`RECORD_EVERY_MS`] since the replicated value, in one
//! `RecordApiKeyUse` entry per round for all of them. So a key in constant use costs the
//! cluster at most one small write per node per minute, never a write per request.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use corral_model::{Command, KeyUse, Millis, Proposal, State};

use crate::AppState;

/// A key's `lastUsedAt` is moved at most this often.
pub const RECORD_EVERY_MS: Millis = 60_000;
/// How often a node looks for uses to record.
pub const ROUND: Duration = Duration::from_secs(10);

/// The latest use of each key this node authenticated and has not recorded yet.
#[derive(Debug, Default)]
pub struct KeyUsage {
    latest: Mutex<HashMap<String, Millis>>,
}

impl KeyUsage {
    /// The key with hash `key_hash` was used at `at`.
    pub fn seen(&self, key_hash: &str, at: Millis) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        match latest.get_mut(key_hash) {
            Some(last) => *last = (*last).max(at),
            None => {
                latest.insert(key_hash.to_string(), at);
            }
        }
    }

    /// The uses due for recording against `state`: of keys that still exist, at least
    /// [`RECORD_EVERY_MS`] after the recorded use. Uses of revoked keys are forgotten; the
    /// others wait for a later round.
    pub fn due(&self, state: &State) -> Vec<KeyUse> {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        latest.retain(|hash, _| state.api_keys.contains_key(hash));
        latest
            .iter()
            .filter(|(hash, at)| {
                let recorded = state.api_keys.get(*hash).and_then(|k| k.last_used_at);
                recorded.is_none_or(|recorded| **at >= recorded.saturating_add(RECORD_EVERY_MS))
            })
            .map(|(hash, at)| KeyUse { key_hash: hash.clone(), at: *at })
            .collect()
    }

    /// `recorded` were committed: forget them unless a newer use came meanwhile.
    pub fn recorded(&self, recorded: &[KeyUse]) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        for used in recorded {
            if latest.get(&used.key_hash) == Some(&used.at) {
                latest.remove(&used.key_hash);
            }
        }
    }
}

/// Records due key uses every [`ROUND`] until `stop` turns true. Runs on every node; a
/// follower's proposal is forwarded to the leader. A failed round keeps its uses for the next.
pub async fn record_forever(app: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let due = app.key_usage.due(&app.cluster.state().read().state);
        if due.is_empty() {
            continue;
        }
        let proposal = Proposal::new(Command::RecordApiKeyUse { uses: due.clone() }, app.now());
        match app.cluster.propose(proposal).await {
            Ok(Ok(_)) => {
                app.key_usage.recorded(&due);
                metrics::counter!("corral_api_key_uses_recorded_total").increment(due.len() as u64);
            }
            Ok(Err(rejection)) => tracing::warn!(%rejection, "recording API key use was refused"),
            Err(e) => tracing::debug!(error = %e, "recording API key use failed; next round retries"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_model::ApiKeyRecord;

    fn state_with_key(last_used_at: Option<Millis>) -> State {
        let mut state = State::default();
        let record = ApiKeyRecord {
            key_hash: "h".into(),
            organization_id: "o".into(),
            name: "k".into(),
            created_at: 0,
            role: Default::default(),
            prefix: String::new(),
            expires_at: None,
            last_used_at,
        };
        state.api_keys.insert("h".into(), record);
        state
    }

    #[test]
    fn a_use_is_due_once_a_minute_and_uses_of_revoked_keys_are_dropped() {
        let usage = KeyUsage::default();
        usage.seen("h", 1_000);
        usage.seen("h", 500);
        usage.seen("revoked", 1_000);
        let due = usage.due(&state_with_key(None));
        assert_eq!(due, vec![KeyUse { key_hash: "h".into(), at: 1_000 }]);
        usage.seen("h", 2_000);
        usage.recorded(&due);
        // The newer use stays, but it is within a minute of the recorded one.
        assert!(usage.due(&state_with_key(Some(1_000))).is_empty());
        usage.seen("h", 61_000);
        assert_eq!(usage.due(&state_with_key(Some(1_000))), vec![KeyUse { key_hash: "h".into(), at: 61_000 }]);
    }
}
