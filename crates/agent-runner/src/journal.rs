//! Exactly-once model and tool calls: the journal of a task's agent loop.
//!
//! Every completed model call and tool call of a task is written to the JetStream KV bucket
//! [`BUCKET`] under `<task_id>.<step>` (steps number model and tool calls together, the first
//! being 1) before the loop goes on. When `baton.agent.<role>` is redelivered (a crash, a restart),
//! the loop runs again from the start and takes each step's result from the journal instead of
//! calling again: the loop is deterministic given those results, so no completed call is
//! repeated, nothing is paid twice, and the plan that comes out is the one the first run would
//! have produced. A step is written with `create`: when two replicas race on one step, the
//! first write wins and the other adopts it.
//!
//! Entries are JSON ([`Entry`]); they stay in the bucket (history 1) as a record of the loop.

use crate::tools::ToolOutput;
use baton_bus::kv::{Codec, Kv, KvError};
use baton_llm::ChatResponse;
use serde::{Deserialize, Serialize};

/// The journal's KV bucket.
pub const BUCKET: &str = "baton_agent_journal";

/// One completed step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A model call and its answer.
    Model {
        /// The answer, with its accounting.
        response: ChatResponse,
    },
    /// A tool call that ran (or was refused: then `output` is `Err` with the reason).
    Tool {
        /// Tool name.
        tool: String,
        /// What it returned, or its error text.
        output: Result<ToolOutput, String>,
        /// Wall time of the call, in milliseconds.
        latency_ms: u64,
        /// The decision on the call (`allowed`, `denied`, `require_approval`).
        decision: String,
    },
}

impl Codec for Entry {
    fn to_bytes(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("journal entries are plain data")
            .into()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a journal entry: {e}"))
    }
}

/// The journal of one bus (shared by all tasks).
#[derive(Clone)]
pub struct Journal {
    kv: Kv<Entry>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("bucket", &self.kv.bucket())
            .finish()
    }
}

/// The key of `step` of `task_id`: `<task_id>.<step, 4 digits>`.
pub fn key(task_id: &str, step: u32) -> String {
    format!("{}.{step:04}", safe_id(task_id))
}

/// `task_id` with every character but ASCII letters, digits, `-` and `_` replaced by `_`: safe
/// as a KV key token and as a directory name.
pub fn safe_id(task_id: &str) -> String {
    task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Journal {
    /// Opens (creating if needed) the journal bucket on `bus`.
    pub async fn open(bus: &baton_bus::Bus) -> Result<Journal, baton_bus::BusError> {
        Ok(Journal {
            kv: bus.kv::<Entry>(BUCKET, 1).await?,
        })
    }

    /// The entry of `step` of `task_id`, if that step completed before.
    pub async fn get(&self, task_id: &str, step: u32) -> Result<Option<Entry>, KvError> {
        Ok(self.kv.get(&key(task_id, step)).await?.map(|(e, _)| e))
    }

    /// Records `entry` as `step` of `task_id`; returns the entry that holds the step now (the
    /// one written first, when another runner wrote the step meanwhile).
    pub async fn record(&self, task_id: &str, step: u32, entry: Entry) -> Result<Entry, KvError> {
        let k = key(task_id, step);
        match self.kv.create(&k, &entry).await {
            Ok(_) => Ok(entry),
            Err(KvError::Conflict { .. }) => {
                Ok(self.kv.get(&k).await?.map(|(e, _)| e).unwrap_or(entry))
            }
            Err(e) => Err(e),
        }
    }
}
