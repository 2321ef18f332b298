//! Tools an LLM agent may call: a registry of [`Tool`]s, each with a name, a description, the
//! JSON schema of its arguments (checked before every call) and whether it has side effects.
//!
//! Built in ([`builtin_factories`]):
//!
//! | tool | side effects | what it does |
//! |---|---|---|
//! | `query_assets` | no | assets of the inventory (`agents.inventory_path`), filtered by `group` and `environment` |
//! | `get_asset_config` | no | `GET <address><config_path>` of one asset: its reported configuration |
//! | `get_golden_config` | no | the golden configuration of an asset group |
//! | `http_request` | yes | an HTTP request to a host on `agents.http_allow_hosts` (nothing else is reachable) |
//! | `read_file` | no | reads a file of the task's own work directory |
//! | `write_file` | yes | writes a file of the task's own work directory |
//! | `run_code` | no | runs files in a baton-sandbox container (no network); "sandbox not available: …" when Docker is not there |
//!
//! The work directory of a task is `<agents.work_dir>/<task_id>`; paths are relative to it, and
//! a path that is absolute, has a `..` component or passes through a symbolic link is refused,
//! so a tool call cannot leave it.
//!
//! More tools plug in as [`ToolFactory`] plug-ins (`Plugins::register`), like agents: a later
//! registration with the same name replaces a built-in.

use crate::inventory::Inventory;
use baton_proto::SandboxRun;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What the registry says about a tool (`baton tools` prints it; the model is offered it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// Name the model calls it by (`query_assets`).
    pub name: String,
    /// What it does and what it returns, for the model.
    pub description: String,
    /// JSON schema (an object schema) of its arguments, checked before every call.
    pub parameters: Value,
    /// True when a call changes something outside the loop (an HTTP PUT, a file written): such
    /// calls get an idempotency key from the task and step.
    pub side_effects: bool,
}

/// What a call knows about the task it serves.
#[derive(Debug, Clone)]
pub struct ToolContext {
    /// The task's id.
    pub task_id: String,
    /// The agent's role.
    pub role: String,
    /// The task's environment.
    pub environment: String,
    /// The task's own work directory (created on first use); file tools stay inside it.
    pub work_dir: PathBuf,
    /// `<task_id>:tool:<step>`: stable across redeliveries, sent as `Idempotency-Key` by
    /// tools with side effects.
    pub idempotency_key: String,
}

/// What a successful call returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// The result the model sees (JSON or text), before truncation.
    pub content: String,
    /// For `run_code`: the sandbox run, protobuf-encoded `baton.v1.SandboxRun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_run: Option<Vec<u8>>,
}

impl ToolOutput {
    /// An output of `content` only.
    pub fn text(content: impl Into<String>) -> ToolOutput {
        ToolOutput {
            content: content.into(),
            sandbox_run: None,
        }
    }

    /// The decoded sandbox run, if any.
    pub fn sandbox_run(&self) -> Option<SandboxRun> {
        use prost::Message;
        self.sandbox_run
            .as_deref()
            .and_then(|b| SandboxRun::decode(b).ok())
    }
}

/// A tool. Errors are strings the model reads (`sandbox not available: …`), so they say what
/// was wrong and what to do.
pub trait Tool: Send + Sync + 'static {
    /// Name, description, argument schema and side effects.
    fn info(&self) -> &ToolInfo;

    /// Runs the call with `arguments` (already checked against the schema).
    fn call<'a>(
        &'a self,
        cx: &'a ToolContext,
        arguments: &'a Value,
    ) -> BoxFuture<'a, Result<ToolOutput, String>>;
}

/// What a [`ToolFactory`] may read while building its tool.
pub struct ToolSetup<'a> {
    /// The `[agents]` section.
    pub config: &'a crate::Config,
}

/// The build function of a [`ToolFactory`].
pub type BuildTool = dyn Fn(&ToolSetup<'_>) -> Result<Arc<dyn Tool>, String> + Send + Sync;

/// A named way to build a tool: the agent runner's plug-in type for tools.
#[derive(Clone)]
pub struct ToolFactory {
    /// The tool's name (the same as its [`ToolInfo::name`]).
    pub name: String,
    /// Builds the tool once, at start.
    pub build: Arc<BuildTool>,
}

impl ToolFactory {
    /// A factory for the tool `name`.
    pub fn new(
        name: &str,
        build: impl Fn(&ToolSetup<'_>) -> Result<Arc<dyn Tool>, String> + Send + Sync + 'static,
    ) -> ToolFactory {
        ToolFactory {
            name: name.to_string(),
            build: Arc::new(build),
        }
    }
}

impl std::fmt::Debug for ToolFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolFactory")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The tools of this process, by name.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.keys()).finish()
    }
}

impl ToolRegistry {
    /// Builds the built-in tools, then `extra` factories (a later one with the same name
    /// replaces an earlier one). Errors: `cannot set up tool <name>: <reason>`.
    pub fn build(
        config: &crate::Config,
        extra: &[ToolFactory],
    ) -> Result<ToolRegistry, crate::Error> {
        let mut factories: BTreeMap<String, ToolFactory> = BTreeMap::new();
        for f in builtin_factories().into_iter().chain(extra.iter().cloned()) {
            factories.insert(f.name.clone(), f);
        }
        let setup = ToolSetup { config };
        let mut tools = BTreeMap::new();
        for (name, f) in factories {
            let tool = (f.build)(&setup).map_err(|reason| crate::Error::Tool {
                tool: name.clone(),
                reason,
            })?;
            tools.insert(name, tool);
        }
        Ok(ToolRegistry { tools })
    }

    /// Adds (or replaces) one tool.
    pub fn insert(&mut self, tool: Arc<dyn Tool>) {
        self.tools.insert(tool.info().name.clone(), tool);
    }

    /// The tool named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name)
    }

    /// Tool names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.tools.keys().cloned().collect()
    }

    /// Every tool's [`ToolInfo`], sorted by name.
    pub fn infos(&self) -> Vec<ToolInfo> {
        self.tools.values().map(|t| t.info().clone()).collect()
    }
}

/// The built-in tools as factories.
pub fn builtin_factories() -> Vec<ToolFactory> {
    vec![
        ToolFactory::new("query_assets", |s| {
            Ok(Arc::new(QueryAssets::new(s.config.effective_inventory_path())) as Arc<dyn Tool>)
        }),
        ToolFactory::new("get_golden_config", |s| {
            Ok(Arc::new(GoldenConfig::new(s.config.effective_inventory_path())) as Arc<dyn Tool>)
        }),
        ToolFactory::new("get_asset_config", |s| {
            Ok(Arc::new(AssetConfig::new(
                s.config.effective_inventory_path(),
                s.config.http_timeout,
            )?) as Arc<dyn Tool>)
        }),
        ToolFactory::new("http_request", |s| {
            Ok(Arc::new(HttpRequest::new(
                s.config.http_allow_hosts.clone(),
                s.config.http_timeout,
            )?) as Arc<dyn Tool>)
        }),
        ToolFactory::new("read_file", |_| {
            Ok(Arc::new(ReadFile::new()) as Arc<dyn Tool>)
        }),
        ToolFactory::new("write_file", |_| {
            Ok(Arc::new(WriteFile::new()) as Arc<dyn Tool>)
        }),
        ToolFactory::new("run_code", |s| {
            Ok(Arc::new(RunCode::new(s.config.sandbox.clone())) as Arc<dyn Tool>)
        }),
    ]
}

fn info(name: &str, description: &str, parameters: Value, side_effects: bool) -> ToolInfo {
    ToolInfo {
        name: name.into(),
        description: description.into(),
        parameters,
        side_effects,
    }
}

fn str_arg<'a>(args: &'a Value, key: &str) -> &'a str {
    args.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `query_assets`: the inventory's assets.
struct QueryAssets {
    info: ToolInfo,
    inventory: PathBuf,
}

impl QueryAssets {
    fn new(inventory: PathBuf) -> QueryAssets {
        QueryAssets {
            info: info(
                "query_assets",
                "List assets of the inventory: id, name, group, kind, environment, labels. Optional filters: group, environment.",
                json!({
                    "type": "object",
                    "properties": {
                        "group": {"type": "string", "description": "asset group, e.g. web"},
                        "environment": {"type": "string", "description": "development, staging or production"}
                    },
                    "additionalProperties": false
                }),
                false,
            ),
            inventory,
        }
    }
}

impl Tool for QueryAssets {
    fn info(&self) -> &ToolInfo {
        &self.info
    }

    fn call<'a>(
        &'a self,
        _cx: &'a ToolContext,
        args: &'a Value,
    ) -> BoxFuture<'a, Result<ToolOutput, String>> {
        Box::pin(async move {
            let inv = Inventory::load(&self.inventory).await?;
            let (group, env) = (str_arg(args, "group"), str_arg(args, "environment"));
            let assets: Vec<Value> = inv
                .assets
                .iter()
                .filter(|a| group.is_empty() || a.group == group)
                .filter(|a| env.is_empty() || a.environment == env)
                .map(|a| {
                    json!({
                        "id": a.id,
                        "name": a.name.clone().unwrap_or_else(|| a.id.clone()),
                        "group": a.group,
                        "kind": inv.groups.get(&a.group).map(|g| g.kind.as_str()).unwrap_or(""),
                        "environment": a.environment,
                        "labels": a.labels,
                    })
                })
                .collect();
            Ok(ToolOutput::text(json!({ "assets": assets }).to_string()))
        })
    }
}

/// `get_golden_config`: a group's golden configuration.
struct GoldenConfig {
    info: ToolInfo,
    inventory: PathBuf,
}

impl GoldenConfig {
    fn new(inventory: PathBuf) -> GoldenConfig {
        GoldenConfig {
            info: info(
                "get_golden_config",
                "The golden (desired) configuration of an asset group, as key/value strings.",
                json!({
                    "type": "object",
                    "required": ["group"],
                    "properties": {"group": {"type": "string", "minLength": 1}},
                    "additionalProperties": false
                }),
                false,
            ),
            inventory,
        }
    }
}

impl Tool for GoldenConfig {
    fn info(&self) -> &ToolInfo {
        &self.info
    }

    fn call<'a>(
        &'a self,
        _cx: &'a ToolContext,
        args: &'a Value,
    ) -> BoxFuture<'a, Result<ToolOutput, String>> {
        Box::pin(async move {
            let inv = Inventory::load(&self.inventory).await?;
            let group = str_arg(args, "group");
            let g = inv.groups.get(group).ok_or_else(|| {
                format!("no asset group {group:?}; groups: {}", inv.group_names())
            })?;
            Ok(ToolOutput::text(
                json!({"group": group, "golden": g.golden}).to_string(),
            ))
        })
    }
}

/// `get_asset_config`: an asset's reported configuration.
struct AssetConfig {
    info: ToolInfo,
    inventory: PathBuf,
    http: reqwest::Client,
}

impl AssetConfig {
    fn new(inventory: PathBuf, timeout: Duration) -> Result<AssetConfig, String> {
        Ok(AssetConfig {
            info: info(
                "get_asset_config",
                "The configuration an asset reports now (GET of its config endpoint).",
                json!({
                    "type": "object",
                    "required": ["asset_id"],
                    "properties": {"asset_id": {"type": "string", "minLength": 1}},
                    "additionalProperties": false
                }),
                false,
            ),
            inventory,
            http: http_client(timeout)?,
        })
    }
}

fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    baton_runtime::tls::http_client()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

impl Tool for AssetConfig {
    fn info(&self) -> &ToolInfo {
        &self.info
    }

    fn call<'a>(
        &'a self,
        _cx: &'a ToolContext,
        args: &'a Value,
    ) -> BoxFuture<'a, Result<ToolOutput, String>> {
        Box::pin(async move {
            let inv = Inventory::load(&self.inventory).await?;
            let id = str_arg(args, "asset_id");
            let asset = inv
                .assets
                .iter()
                .find(|a| a.id == id)
                .ok_or_else(|| format!("no asset {id:?} in the inventory; use query_assets"))?;
            let path = inv
                .groups
                .get(&asset.group)
                .map(|g| g.config_path.as_str())
                .unwrap_or(crate::inventory::DEFAULT_CONFIG_PATH);
            let url = format!("{}{}", asset.address, path);
            let resp = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url} failed: {e}"))?;
            let status = resp.status();
            let body = resp
                .text()
                .await
                .map_err(|e| format!("reading {url} failed: {e}"))?;
            if !status.is_success() {
                return Err(format!("GET {url} answered {status}: {body}"));
            }
            Ok(ToolOutput::text(body))
        })
    }
}

/// `http_request`: HTTP to allow-listed hosts only.
struct HttpRequest {
    info: ToolInfo,
    allow: Vec<String>,
    http: reqwest::Client,
}

impl HttpRequest {
    fn new(allow: Vec<String>, timeout: Duration) -> Result<HttpRequest, String> {
        Ok(HttpRequest {
            info: info(
                "http_request",
                "An HTTP request to an allowed host. Returns status and body.",
                json!({
                    "type": "object",
                    "required": ["method", "url"],
                    "properties": {
                        "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
                        "url": {"type": "string", "minLength": 1},
                        "body": {"type": "string"}
                    },
                    "additionalProperties": false
                }),
                true,
            ),
            allow,
            http: http_client(timeout)?,
        })
    }
}

impl Tool for HttpRequest {
    fn info(&self) -> &ToolInfo {
        &self.info
    }

    fn call<'a>(
        &'a self,
        cx: &'a ToolContext,
        args: &'a Value,
    ) -> BoxFuture<'a, Result<ToolOutput, String>> {
        Box::pin(async move {
            let url = str_arg(args, "url");
            let parsed =
                reqwest::Url::parse(url).map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
            let host = parsed.host_str().unwrap_or("").to_string();
            let authority = match parsed.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            if !self.allow.iter().any(|a| *a == host || *a == authority) {
                return Err(format!(
                    "host {authority} is not on the allow-list (agents.http_allow_hosts); allowed: {}",
                    if self.allow.is_empty() {
                        "none".to_string()
                    } else {
                        self.allow.join(", ")
                    }
                ));
            }
            let method = reqwest::Method::from_bytes(str_arg(args, "method").as_bytes())
                .map_err(|e| format!("bad method: {e}"))?;
            let mut req = self.http.request(method.clone(), parsed.clone());
            if method != reqwest::Method::GET {
                req = req.header("Idempotency-Key", &cx.idempotency_key);
            }
            if let Some(body) = args.get("body").and_then(Value::as_str) {
                // A JSON body is labelled as such (JSON APIs refuse an unlabelled body).
                if serde_json::from_str::<Value>(body).is_ok() {
                    req = req.header(reqwest::header::CONTENT_TYPE, "application/json");
                }
                req = req.body(body.to_string());
            }
            let resp = req
                .send()
                .await
                .map_err(|e| format!("{method} {url} failed: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp
                .text()
                .await
                .map_err(|e| format!("reading {url} failed: {e}"))?;
            Ok(ToolOutput::text(
                json!({"status": status, "body": body}).to_string(),
            ))
        })
    }
}

/// Resolves `relative` inside `root`, refusing absolute paths, `..` and symbolic links on the
/// way (so a call cannot leave the task's work directory). The root is created if missing.
pub fn resolve_in(root: &Path, relative: &str) -> Result<PathBuf, String> {
    let rel = Path::new(relative);
    if relative.is_empty() || rel.is_absolute() {
        return Err(format!(
            "path {relative:?} must be relative to the task's work directory"
        ));
    }
    std::fs::create_dir_all(root)
        .map_err(|e| format!("cannot create the task's work directory: {e}"))?;
    let mut path = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(part) => {
                path.push(part);
                if let Ok(meta) = std::fs::symlink_metadata(&path)
                    && meta.file_type().is_symlink()
                {
                    return Err(format!(
                        "path {relative:?} passes through a symbolic link; links are not followed in the work directory"
                    ));
                }
            }
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "path {relative:?} leaves the task's work directory (`..` is not allowed)"
                ));
            }
        }
    }
    Ok(path)
}

/// `read_file`: a file of the task's work directory.
struct ReadFile {
    info: ToolInfo,
}

impl ReadFile {
    fn new() -> ReadFile {
        ReadFile {
            info: info(
                "read_file",
                "Read a text file of the task's work directory (path relative to it).",
                json!({
                    "type": "object",
                    "required": ["path"],
                    "properties": {"path": {"type": "string", "minLength": 1}},
                    "additionalProperties": false
                }),
                false,
            ),
        }
    }
}

impl Tool for ReadFile {
    fn info(&self) -> &ToolInfo {
        &self.info
    }

    fn call<'a>(
        &'a self,
        cx: &'a ToolContext,
        args: &'a Value,
    ) -> BoxFuture<'a, Result<ToolOutput, String>> {
        Box::pin(async move {
            let rel = str_arg(args, "path");
            let path = resolve_in(&cx.work_dir, rel)?;
            let text = tokio::fs::read_to_string(&path)
                .await
                .map_err(|e| format!("cannot read {rel:?}: {e}"))?;
            Ok(ToolOutput::text(text))
        })
    }
}

/// `write_file`: writes a file of the task's work directory.
struct WriteFile {
    info: ToolInfo,
}

impl WriteFile {
    fn new() -> WriteFile {
        WriteFile {
            info: info(
                "write_file",
                "Write a text file in the task's work directory (path relative to it); replaces it.",
                json!({
                    "type": "object",
                    "required": ["path", "content"],
                    "properties": {
                        "path": {"type": "string", "minLength": 1},
                        "content": {"type": "string"}
                    },
                    "additionalProperties": false
                }),
                true,
            ),
        }
    }
}

impl Tool for WriteFile {
    fn info(&self) -> &ToolInfo {
        &self.info
    }

    fn call<'a>(
        &'a self,
        cx: &'a ToolContext,
        args: &'a Value,
    ) -> BoxFuture<'a, Result<ToolOutput, String>> {
        Box::pin(async move {
            let rel = str_arg(args, "path");
            let path = resolve_in(&cx.work_dir, rel)?;
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| format!("cannot create the directory of {rel:?}: {e}"))?;
            }
            let content = str_arg(args, "content");
            tokio::fs::write(&path, content)
                .await
                .map_err(|e| format!("cannot write {rel:?}: {e}"))?;
            Ok(ToolOutput::text(
                json!({"written": rel, "bytes": content.len()}).to_string(),
            ))
        })
    }
}

/// `run_code`: files and a command in a baton-sandbox container.
struct RunCode {
    info: ToolInfo,
    config: baton_sandbox::Config,
    /// Connected on first use (and again after a failed connection).
    sandbox: tokio::sync::Mutex<Option<Arc<baton_sandbox::Sandbox>>>,
}

impl RunCode {
    fn new(config: baton_sandbox::Config) -> RunCode {
        RunCode {
            info: info(
                "run_code",
                "Run code in an isolated sandbox container (no network). Give the files and the command; returns exit_code, stdout, stderr and what ended the run.",
                json!({
                    "type": "object",
                    "required": ["language", "files", "command"],
                    "properties": {
                        "language": {"enum": ["python", "shell"]},
                        "files": {"type": "object", "additionalProperties": {"type": "string"}},
                        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1}
                    },
                    "additionalProperties": false
                }),
                false,
            ),
            config,
            sandbox: tokio::sync::Mutex::new(None),
        }
    }

    async fn sandbox(&self) -> Result<Arc<baton_sandbox::Sandbox>, String> {
        let mut slot = self.sandbox.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let s = baton_sandbox::Sandbox::connect(self.config.clone())
            .await
            .map_err(|e| format!("sandbox not available: {e}"))?;
        let s = Arc::new(s);
        *slot = Some(s.clone());
        Ok(s)
    }
}

impl Tool for RunCode {
    fn info(&self) -> &ToolInfo {
        &self.info
    }

    fn call<'a>(
        &'a self,
        _cx: &'a ToolContext,
        args: &'a Value,
    ) -> BoxFuture<'a, Result<ToolOutput, String>> {
        Box::pin(async move {
            let sandbox = self.sandbox().await?;
            let command: Vec<&str> = args
                .get("command")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut req = baton_sandbox::RunRequest::new(str_arg(args, "language"), &command);
            if let Some(files) = args.get("files").and_then(Value::as_object) {
                for (path, content) in files {
                    req = req.file(path.clone(), content.as_str().unwrap_or("").as_bytes());
                }
            }
            let report = sandbox.run(req).await.map_err(|e| match e {
                baton_sandbox::Error::DockerUnavailable { .. }
                | baton_sandbox::Error::ImageMissing { .. } => {
                    format!("sandbox not available: {e}")
                }
                other => other.to_string(),
            })?;
            let ended_by = format!("{:?}", report.ended_by).to_lowercase();
            let run = SandboxRun::from(report);
            let content = json!({
                "exit_code": run.exit_code,
                "ended_by": ended_by,
                "passed": run.exit_code == 0 && ended_by == "exited",
                "stdout": run.stdout,
                "stderr": run.stderr,
                "duration_ms": run.duration_ms,
            })
            .to_string();
            use prost::Message;
            Ok(ToolOutput {
                content,
                sandbox_run: Some(run.encode_to_vec()),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_work_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("task-1");
        assert_eq!(
            resolve_in(&root, "a/b.txt").unwrap(),
            root.join("a").join("b.txt")
        );
        assert!(resolve_in(&root, "../task-2/x").unwrap_err().contains(".."));
        assert!(resolve_in(&root, "a/../../x").is_err());
        assert!(resolve_in(&root, "/etc/passwd").is_err());
        assert!(resolve_in(&root, "").is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
            let e = resolve_in(&root, "link/passwd").unwrap_err();
            assert!(e.contains("symbolic link"), "{e}");
            std::os::unix::fs::symlink("/etc/hostname", root.join("file-link")).unwrap();
            assert!(resolve_in(&root, "file-link").is_err());
        }
    }
}
