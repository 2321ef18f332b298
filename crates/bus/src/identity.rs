//! NATS identities with least privilege: one nkey user per service, an admin that sets up the
//! streams, and trigger publishers of one tenant each.
//!
//! Baton uses NATS's own authorization: nkey users (Ed25519 key pairs; the server holds only
//! the public keys) with per-user `permissions` (publish and subscribe allow lists) in the
//! server's `authorization` block. Nothing is checked by Baton itself: a publish outside a
//! user's list is refused by the server (`Permissions Violation`) and never reaches a stream.
//!
//! | user | publishes | consumes (durable) | JetStream API |
//! |---|---|---|---|
//! | `admin` | everything | everything | everything: creates and updates the streams |
//! | `ingestion` | `baton.task.received`, `baton.ingestion.rejected` | `ingestion` | reads `BATON` by sequence |
//! | `decision` | `baton.agent.*`, `baton.task.{failed,awaiting_clarification,rejected}` | `decision` | KV `baton_clarifications` |
//! | `agent-runner` | `baton.task.{proposed,failed,tool_call_awaiting_approval}`, `baton.agent.*` (a timed-out tool call's `ToolCallDecided`), `baton.progress.>` (core NATS) | `agent-<role>` per role | KV `baton_agent_journal` (completed model and tool calls, for exactly-once replay), `baton_tool_approvals`, `baton_tenant_usage` (tenants' daily model usage) |
//! | `validation` | `baton.task.{approved,rejected,awaiting_approval}`, `baton.agent.*` (a human's `ToolCallDecided`) | `validation` | KV `baton_approvals`, `baton_tool_approvals` (tool calls waiting for a human; the agent runner trusts this record, not the event) |
//! | `execution` | `baton.execution.>`, `baton.task.{completed,failed}` | `execution` | KV `baton_executions`, `baton_execution_attempts` |
//! | `audit` | nothing on the path; subscribes to `baton.progress.>` (core NATS) | `audit` (BATON), `audit-dead` (BATON_DEAD) | KV `baton_audit_anchor` (the signed head of the log; only audit may write it) |
//! | `trigger-<tenant>` | `baton.trigger.<tenant>.>` | nothing | nothing |
//!
//! Every service also publishes its own dead letters (`baton.dead.<service>`), reads the info of
//! the streams it uses, creates and reads its own durable consumers (create, info, next
//! message, ack) and receives replies on its own inbox prefix (`_INBOX_<user>.>`, see
//! [`inbox_prefix`]), so no user can read another's replies (pull consumers deliver their
//! messages to the puller's inbox). KV access is the bucket's stream (`KV_<bucket>`: create,
//! info, reads) and its subjects (`$KV.<bucket>.>`).

use crate::BusConfig;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Name of the identity that creates the streams (`baton up` and tools).
pub const ADMIN: &str = "admin";
/// KV buckets of the agent runner: the journal of its agents' model and tool calls, the tool
/// calls waiting for a human, and the tenants' daily model usage (`[agents.daily_budget]`).
const AGENT_RUNNER_BUCKETS: &[&str] = &[
    "baton_agent_journal",
    "baton_tool_approvals",
    "baton_tenant_usage",
];
/// KV buckets of decision: the tasks waiting for an operator to choose their role.
const DECISION_BUCKETS: &[&str] = &["baton_clarifications"];
/// KV buckets of validation.
const VALIDATION_BUCKETS: &[&str] = &["baton_approvals", "baton_tool_approvals"];
/// KV buckets of execution.
const EXECUTION_BUCKETS: &[&str] = &["baton_executions", "baton_execution_attempts"];
/// KV buckets of audit: the anchor of the log's end, which only audit may write.
const AUDIT_BUCKETS: &[&str] = &["baton_audit_anchor"];

/// What a user may publish and subscribe to (NATS subjects, with wildcards).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects the user may publish on.
    pub publish: Vec<String>,
    /// Subjects the user may subscribe to.
    pub subscribe: Vec<String>,
}

/// A NATS user Baton knows: its name (`ingestion`, `trigger-acme`) and its permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `admin`, a service's name, or `trigger-<tenant>`.
    pub name: String,
    /// Its allow lists.
    pub permissions: Permissions,
}

/// The inbox prefix of `user` (`_INBOX_ingestion`): the client sets it
/// (`nats.inbox_prefix`), and the user may subscribe only below it.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// The name of the trigger publisher of `tenant`: `trigger-<tenant>`.
pub fn trigger_user_name(tenant: &str) -> String {
    format!("trigger-{tenant}")
}

/// The admin: every subject (it creates and updates the streams).
pub fn admin() -> User {
    User {
        name: ADMIN.into(),
        permissions: Permissions {
            publish: vec![">".into()],
            subscribe: vec![">".into()],
        },
    }
}

/// The trigger publisher of `tenant`: publishes `baton.trigger.<tenant>.>` and nothing else,
/// and may receive replies on its inbox (a JetStream publish's ack).
pub fn trigger_publisher(tenant: &str) -> User {
    let name = trigger_user_name(tenant);
    User {
        permissions: Permissions {
            publish: vec![format!(
                "{}.{tenant}.>",
                baton_proto::subject::TRIGGER_PREFIX
            )],
            subscribe: vec![format!("{}.>", inbox_prefix(&name))],
        },
        name,
    }
}

/// The six services' users, with the streams named in `config` and one consumer per role in
/// `agent_roles` for the agent runner. `service` names are those of `baton serve`.
pub fn services(config: &BusConfig, agent_roles: &[String]) -> Vec<User> {
    use baton_proto::subject as s;
    let main = config.stream.as_str();
    let dead = config.dead_stream.as_str();
    let svc = |name: &str, publish: &[&str], consumers: &[(&str, &str)], buckets: &[&str]| {
        let mut p = Permissions::default();
        p.publish.extend(publish.iter().map(|x| x.to_string()));
        p.publish.push(s::dead(name));
        p.publish.push(format!("$JS.API.STREAM.INFO.{main}"));
        p.publish.push(format!("$JS.API.STREAM.INFO.{dead}"));
        for (stream, durable) in consumers {
            consumer(&mut p, stream, durable);
        }
        for bucket in buckets {
            kv(&mut p, bucket);
        }
        p.subscribe.push(format!("{}.>", inbox_prefix(name)));
        User {
            name: name.into(),
            permissions: p,
        }
    };
    let mut ingestion = svc(
        "ingestion",
        &[s::TASK_RECEIVED, s::TRIGGER_REJECTED],
        &[(main, "ingestion")],
        &[],
    );
    // Reads the first copy of a deduplicated `task.received` back by its sequence.
    ingestion.permissions.publish.extend([
        format!("$JS.API.STREAM.MSG.GET.{main}"),
        format!("$JS.API.DIRECT.GET.{main}"),
        format!("$JS.API.DIRECT.GET.{main}.>"),
    ]);
    // Agent progress (core NATS, no stream): the agent runner publishes, audit relays it to
    // `WatchProgress` callers.
    let progress = format!("{}.>", s::PROGRESS_PREFIX);
    let mut audit = svc(
        "audit",
        &[],
        &[(main, "audit"), (dead, "audit-dead")],
        AUDIT_BUCKETS,
    );
    audit.permissions.subscribe.push(progress.clone());
    // Audit's durables ack cumulatively; one left by a version that acked each message is
    // replaced (the server cannot change a durable's ack policy).
    for (stream, durable) in [(main, "audit"), (dead, "audit-dead")] {
        audit
            .permissions
            .publish
            .push(format!("$JS.API.CONSUMER.DELETE.{stream}.{durable}"));
    }
    let agent_consumers: Vec<String> = agent_roles.iter().map(|r| format!("agent-{r}")).collect();
    let agent_consumers: Vec<(&str, &str)> =
        agent_consumers.iter().map(|d| (main, d.as_str())).collect();
    vec![
        ingestion,
        svc(
            "decision",
            &[
                &format!("{}.*", s::AGENT_PREFIX),
                s::TASK_FAILED,
                s::TASK_AWAITING_CLARIFICATION,
                s::TASK_REJECTED,
            ],
            &[(main, "decision")],
            DECISION_BUCKETS,
        ),
        svc(
            "agent-runner",
            &[
                s::TASK_PROPOSED,
                s::TASK_FAILED,
                s::TOOL_CALL_AWAITING_APPROVAL,
                &format!("{}.*", s::AGENT_PREFIX),
                &progress,
            ],
            &agent_consumers,
            AGENT_RUNNER_BUCKETS,
        ),
        svc(
            "validation",
            &[
                s::TASK_APPROVED,
                s::TASK_REJECTED,
                s::TASK_AWAITING_APPROVAL,
                &format!("{}.*", s::AGENT_PREFIX),
            ],
            &[(main, "validation")],
            VALIDATION_BUCKETS,
        ),
        svc(
            "execution",
            &[
                &format!("{}.>", s::EXECUTION_PREFIX),
                s::TASK_COMPLETED,
                s::TASK_FAILED,
            ],
            &[(main, "execution")],
            EXECUTION_BUCKETS,
        ),
        audit,
    ]
}

/// Rights to create (or update), read and pull from the durable `durable` on `stream`, and to
/// acknowledge its messages.
fn consumer(p: &mut Permissions, stream: &str, durable: &str) {
    p.publish.extend([
        format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}"),
        format!("$JS.API.CONSUMER.INFO.{stream}.{durable}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"),
        format!("$JS.ACK.{stream}.{durable}.>"),
    ]);
}

/// Rights to create, read and write the KV bucket `bucket`.
fn kv(p: &mut Permissions, bucket: &str) {
    p.publish.extend([
        format!("$KV.{bucket}.>"),
        format!("$JS.API.STREAM.*.KV_{bucket}"),
        format!("$JS.API.DIRECT.GET.KV_{bucket}.>"),
        format!("$JS.API.CONSUMER.CREATE.KV_{bucket}"),
        format!("$JS.API.CONSUMER.CREATE.KV_{bucket}.>"),
    ]);
    p.subscribe.push(format!("$KV.{bucket}.>"));
}

/// The server's `authorization { users = [...] }` block for `users`, each given with its nkey
/// public key (`U…`).
pub fn authorization_block(users: &[(User, String)]) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::from("authorization {\n  users = [\n");
    for (user, public_key) in users {
        let p = &user.permissions;
        let _ = writeln!(out, "    # {}", user.name);
        let _ = writeln!(out, "    {{ nkey: \"{public_key}\", permissions: {{");
        let _ = writeln!(out, "      publish: {{ allow: [{}] }}", list(&p.publish));
        if p.subscribe.is_empty() {
            let _ = writeln!(out, "      subscribe: {{ deny: [\">\"] }}");
        } else {
            let _ = writeln!(
                out,
                "      subscribe: {{ allow: [{}] }}",
                list(&p.subscribe)
            );
        }
        let _ = writeln!(out, "    }} }}");
    }
    out.push_str("  ]\n}\n");
    out
}

/// A plain NATS client (no streams set up) connected to `url` as `user` with the seed in
/// `seed_file` and the user's inbox prefix: what a trigger publisher or a tool uses.
///
/// Errors: [`crate::BusError::Connect`] when the seed cannot be read or the server refuses.
pub async fn client_as(
    url: &str,
    user: &str,
    seed_file: &Path,
) -> Result<async_nats::Client, crate::BusError> {
    let err = |reason: String| crate::BusError::Connect {
        url: url.to_string(),
        reason,
    };
    let seed = std::fs::read_to_string(seed_file)
        .map_err(|e| err(format!("cannot read {}: {e}", seed_file.display())))?;
    async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        .custom_inbox_prefix(inbox_prefix(user))
        .name(format!("baton-{user}"))
        .connect(url)
        .await
        .map_err(|e| err(e.to_string()))
}

/// Why the key files could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file or its directory failed.
    #[error("nats key file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The file system's error.
        source: std::io::Error,
    },
    /// A key file holds no valid nkey user seed.
    #[error(
        "nats key file {path} holds no valid nkey seed ({reason}): delete it to make a new one"
    )]
    Seed {
        /// The file.
        path: PathBuf,
        /// What nkeys said.
        reason: String,
    },
}

/// Where a user's seed lives and its public key.
#[derive(Debug, Clone)]
pub struct UserKey {
    /// The user.
    pub user: User,
    /// Its nkey public key (`U…`), for the server's configuration.
    pub public_key: String,
    /// `<dir>/<name>.nk`, the seed (`SU…`), readable by the owner only.
    pub seed_file: PathBuf,
}

/// Makes (or reuses) a seed file `<dir>/<name>.nk` for each user, the directory mode 0700 and
/// each file 0600, and returns their public keys. A seed made before is kept, so restarts keep
/// the same identities.
///
/// Errors: [`KeyError::Io`], [`KeyError::Seed`] for a file that holds something else.
pub fn ensure_keys(dir: &Path, users: Vec<User>) -> Result<Vec<UserKey>, KeyError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    set_mode(dir, 0o700).map_err(io(dir))?;
    users
        .into_iter()
        .map(|user| {
            let seed_file = dir.join(format!("{}.nk", user.name));
            let pair = match std::fs::read_to_string(&seed_file) {
                Ok(text) => nkeys::KeyPair::from_seed(text.trim()).map_err(|e| KeyError::Seed {
                    path: seed_file.clone(),
                    reason: e.to_string(),
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let pair = nkeys::KeyPair::new_user();
                    let seed = pair.seed().map_err(|e| KeyError::Seed {
                        path: seed_file.clone(),
                        reason: e.to_string(),
                    })?;
                    write_private(&seed_file, &format!("{seed}\n")).map_err(io(&seed_file))?;
                    pair
                }
                Err(e) => return Err(io(&seed_file)(e)),
            };
            set_mode(&seed_file, 0o600).map_err(io(&seed_file))?;
            Ok(UserKey {
                public_key: pair.public_key(),
                user,
                seed_file,
            })
        })
        .collect()
}

/// Writes `text` to `path`, created with mode 0600 (so it is never readable by others, not
/// even for a moment).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    set_mode(path, 0o600)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_validation_may_publish_decisions_and_only_execution_its_events() {
        let users = services(&BusConfig::default(), &["drift".into()]);
        let may = |subject: &str| -> Vec<String> {
            users
                .iter()
                .filter(|u| u.permissions.publish.iter().any(|p| p == subject))
                .map(|u| u.name.clone())
                .collect()
        };
        assert_eq!(may("baton.task.approved"), ["validation"]);
        assert_eq!(may("baton.task.completed"), ["execution"]);
        assert_eq!(may("baton.execution.>"), ["execution"]);
        assert_eq!(may("$KV.baton_audit_anchor.>"), ["audit"]);
        assert_eq!(may("$KV.baton_approvals.>"), ["validation"]);
        assert_eq!(may("$KV.baton_agent_journal.>"), ["agent-runner"]);
        let audit = users.iter().find(|u| u.name == "audit").unwrap();
        assert!(
            audit
                .permissions
                .publish
                .iter()
                .all(|p| !p.starts_with("baton.") || p == "baton.dead.audit"),
            "{:?}",
            audit.permissions.publish
        );
        assert_eq!(may("baton.progress.>"), ["agent-runner"]);
        assert!(
            audit
                .permissions
                .subscribe
                .contains(&"baton.progress.>".to_string())
        );
        let t = trigger_publisher("acme");
        assert_eq!(t.permissions.publish, ["baton.trigger.acme.>"]);
    }

    #[test]
    fn keys_are_private_and_kept_across_calls() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_keys(dir.path(), vec![admin()]).unwrap();
        let b = ensure_keys(dir.path(), vec![admin()]).unwrap();
        assert_eq!(a[0].public_key, b[0].public_key);
        let mode = std::fs::metadata(&a[0].seed_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
