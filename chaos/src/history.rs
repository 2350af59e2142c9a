//! A recorded client history: every operation with its invoke and complete times and its
//! outcome, as Jepsen records them. An operation whose outcome is unknown (a timeout, a
//! connection reset after the request was sent) may or may not have taken effect, at any time
//! after its invocation.

use serde::{Deserialize, Serialize};

/// Nanoseconds since the start of the run.
pub type Nanos = u64;

/// What the client asked for, on one key (a region or runner name, a register).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum Call {
    /// Set the key to `value` (a create or update).
    Write { key: String, value: String },
    /// Remove the key.
    Delete { key: String },
    /// Read the key; the observed value is in [`Op::read`].
    Read { key: String },
}

impl Call {
    pub fn key(&self) -> &str {
        match self {
            Call::Write { key, .. } | Call::Delete { key } | Call::Read { key } => key,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Acknowledged: it took effect exactly once, between invoke and complete.
    Ok,
    /// Refused: it did not take effect.
    Fail,
    /// Unknown: it may have taken effect, once, at any time after invoke.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub id: u64,
    pub client: u64,
    pub call: Call,
    pub invoke: Nanos,
    /// `None` for an unknown outcome (it is pending forever).
    pub complete: Option<Nanos>,
    pub outcome: Outcome,
    /// For an acknowledged read: the value seen (`None`: the key did not exist).
    pub read: Option<Option<String>>,
    /// Where it went and what came back (e.g. `node 2: 503 no_leader`), for reading a failed
    /// history; the checkers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Builds histories tersely (tests and the harness).
#[derive(Debug, Default, Clone)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    pub fn push(&mut self, client: u64, call: Call, invoke: Nanos, complete: Option<Nanos>, outcome: Outcome) -> u64 {
        let id = self.ops.len() as u64;
        self.ops.push(Op { id, client, call, invoke, complete, outcome, read: None, detail: None });
        id
    }

    pub fn write(&mut self, client: u64, key: &str, value: &str, invoke: Nanos, complete: Nanos) -> u64 {
        self.push(client, Call::Write { key: key.into(), value: value.into() }, invoke, Some(complete), Outcome::Ok)
    }

    pub fn delete(&mut self, client: u64, key: &str, invoke: Nanos, complete: Nanos) -> u64 {
        self.push(client, Call::Delete { key: key.into() }, invoke, Some(complete), Outcome::Ok)
    }

    pub fn read(&mut self, client: u64, key: &str, seen: Option<&str>, invoke: Nanos, complete: Nanos) -> u64 {
        let id = self.push(client, Call::Read { key: key.into() }, invoke, Some(complete), Outcome::Ok);
        self.ops[id as usize].read = Some(seen.map(String::from));
        id
    }

    /// A write whose answer never came.
    pub fn write_unknown(&mut self, client: u64, key: &str, value: &str, invoke: Nanos) -> u64 {
        self.push(client, Call::Write { key: key.into(), value: value.into() }, invoke, None, Outcome::Unknown)
    }

    pub fn write_failed(&mut self, client: u64, key: &str, value: &str, invoke: Nanos, complete: Nanos) -> u64 {
        self.push(client, Call::Write { key: key.into(), value: value.into() }, invoke, Some(complete), Outcome::Fail)
    }
}
