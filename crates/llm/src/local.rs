//! The local model: llama.cpp's `llama-server` as a child process on loopback, serving a GGUF
//! model OpenAI-compatibly. `baton up` starts it when `[llm.local]` names a model and no URL is
//! configured for provider `local` (see [`crate::config::LlmConfig::starts_local_server`]), and
//! the tests start it through [`crate::testing::LocalModel`].
//!
//! The child is tied to its parent as `baton up`'s nats-server is
//! (`baton_bus::server::die_with_parent`: SIGTERM when the parent dies, killed on drop), its
//! stderr is drained into the log (the last lines kept for a start error), and it is ready when
//! its `/health` answers 200 (503 while the model loads).

use crate::config::LocalModelConfig;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Lines of the server's stderr kept for a start error.
const STDERR_TAIL: usize = 15;

/// Why the local model server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalModelError {
    /// The `llama-server` executable is missing.
    #[error(
        "llama-server not found at {path}: run `bash deploy/local-model.sh` (it builds \
         llama-server once, cached) and set llm.local.server to the BATON_LLAMA_SERVER it \
         prints with --env"
    )]
    ServerNotFound {
        /// The path or name configured.
        path: String,
    },
    /// The model file is missing.
    #[error(
        "local model file {} not found: run `bash deploy/local-model.sh` (it downloads and \
         checks the model once, cached) and set llm.local.model to the BATON_LOCAL_MODEL it \
         prints with --env", path.display()
    )]
    ModelNotFound {
        /// The path configured.
        path: PathBuf,
    },
    /// It was started but exited or did not become healthy in time.
    #[error("llama-server did not start: {0}")]
    Start(String),
}

/// A running `llama-server` child.
pub struct LlamaServer {
    child: Child,
    port: u16,
    base_url: String,
}

impl std::fmt::Debug for LlamaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaServer")
            .field("base_url", &self.base_url)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl LlamaServer {
    /// Starts `config.server -m config.model --host 127.0.0.1 --port <port> --jinja -c
    /// <context_size> <extra_args…>` and waits until its `/health` answers 200.
    ///
    /// Errors: [`LocalModelError::ServerNotFound`], [`LocalModelError::ModelNotFound`] (both
    /// naming the file and the fix), [`LocalModelError::Start`] with the end of its stderr
    /// when it exits or is not healthy within `config.startup_timeout`.
    pub async fn start(config: &LocalModelConfig) -> Result<LlamaServer, LocalModelError> {
        let binary = resolve(&config.server).ok_or_else(|| LocalModelError::ServerNotFound {
            path: config.server.clone(),
        })?;
        if !config.model.is_file() {
            return Err(LocalModelError::ModelNotFound {
                path: config.model.clone(),
            });
        }
        let port = match config.port {
            0 => free_port().map_err(|e| LocalModelError::Start(format!("no free port: {e}")))?,
            p => p,
        };
        let mut command = Command::new(&binary);
        command
            .arg("-m")
            .arg(&config.model)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--jinja",
                "-c",
            ])
            .arg(config.context_size.to_string())
            .args(&config.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        baton_bus::server::die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| LocalModelError::Start(format!("cannot run {}: {e}", binary.display())))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let tail = tail.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt as _;
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "llama_server", "{line}");
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if t.len() == STDERR_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        let tail_text = || {
            tail.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        };
        let client = baton_runtime::tls::http_client()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| LocalModelError::Start(e.to_string()))?;
        let health = format!("http://127.0.0.1:{port}/health");
        let deadline = tokio::time::Instant::now() + config.startup_timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Let the stderr reader catch up with the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(LocalModelError::Start(format!(
                    "exited with {status}:\n{}",
                    tail_text()
                )));
            }
            if let Ok(r) = client.get(&health).send().await
                && r.status().is_success()
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.start_kill();
                return Err(LocalModelError::Start(format!(
                    "/health did not answer 200 within {:?} (llm.local.startup_timeout):\n{}",
                    config.startup_timeout,
                    tail_text()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(LlamaServer {
            child,
            port,
            base_url: format!("http://127.0.0.1:{port}/v1"),
        })
    }

    /// The OpenAI-compatible base URL, `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The child's process id (`None` once reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the server and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// `binary` when it is an existing file path, or the first match on `PATH` for a bare name.
fn resolve(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        let p = Path::new(binary);
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(binary))
            .find(|p| p.is_file())
    })
}

/// A port on 127.0.0.1 free right now (the OS picks it; the server binds it right after).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_binary_or_model_names_the_file_and_the_fix() {
        let config = LocalModelConfig {
            server: "/nonexistent/llama-server".into(),
            model: "/nonexistent/model.gguf".into(),
            ..Default::default()
        };
        let err = LlamaServer::start(&config).await.unwrap_err().to_string();
        assert!(err.contains("/nonexistent/llama-server"), "{err}");
        assert!(err.contains("bash deploy/local-model.sh"), "{err}");
        // With a binary that exists, the model is the missing file.
        let config = LocalModelConfig {
            server: "/bin/sh".into(),
            ..config
        };
        let err = LlamaServer::start(&config).await.unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/model.gguf") && err.contains("BATON_LOCAL_MODEL"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_server_that_exits_is_reported_with_its_stderr() {
        let dir = std::env::temp_dir().join(format!("baton-llama-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.gguf");
        std::fs::write(&model, b"not a model").unwrap();
        let script = dir.join("fake-llama-server");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"error: cannot load model $2\" >&2\nexit 3\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config = LocalModelConfig {
            server: script.display().to_string(),
            model: model.clone(),
            ..Default::default()
        };
        let err = LlamaServer::start(&config).await.unwrap_err().to_string();
        assert!(err.contains("exited"), "{err}");
        assert!(
            err.contains(&format!("cannot load model {}", model.display())),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
