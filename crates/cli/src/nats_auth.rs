//! The NATS identities of one Baton deployment: which users exist (admin, the six services,
//! one trigger publisher per tenant in `nats_server.trigger_tenants`), their seed files, the
//! server's `authorization` block, and each service's connection settings.
//!
//! `baton up` calls [`Identities::prepare`] before it starts its nats-server child: seeds in
//! `<data_dir>/nats/keys/<user>.nk` (directory 0700, files 0600, kept across restarts), the
//! server configuration in `<data_dir>/nats/server.conf` (0600, rewritten at every start, so a
//! new role or tenant gets its permissions). `baton nats-config` prints the same block and the
//! settings each `baton serve` needs, for an external server.

use crate::config::BatonConfig;
use crate::up::ServiceName;
use baton_bus::BusConfig;
use baton_bus::identity::{self, KeyError, User, UserKey};
use baton_runtime::plugins::Plugins;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The users, their keys, and where they are kept.
#[derive(Debug, Clone)]
pub struct Identities {
    /// The keys directory (`<data_dir>/nats/keys`).
    pub dir: PathBuf,
    /// One per user: admin, the six services, then the trigger publishers.
    pub keys: Vec<UserKey>,
}

/// The agent runner's roles: the catalog's, the assigned and no-op ones, and those of
/// registered agent plug-ins (one durable consumer `agent-<role>` each).
pub fn agent_roles(config: &BatonConfig, plugins: &Plugins) -> Vec<String> {
    let mut roles: BTreeSet<String> = config.common.catalog.roles.iter().cloned().collect();
    roles.extend(config.agents.assign.keys().cloned());
    roles.extend(config.agents.noop_roles.iter().cloned());
    for factory in plugins.all::<baton_agent_runner::AgentFactory>() {
        roles.extend(factory.roles.iter().cloned());
    }
    roles.into_iter().collect()
}

/// Every user of the deployment: admin, the six services, one trigger publisher per tenant
/// of `nats_server.trigger_tenants`.
pub fn users(config: &BatonConfig, plugins: &Plugins) -> Vec<User> {
    let mut users = vec![identity::admin()];
    users.extend(identity::services(
        &config.common.nats,
        &agent_roles(config, plugins),
    ));
    users.extend(
        config
            .nats_server
            .trigger_tenants
            .iter()
            .map(|t| identity::trigger_publisher(t)),
    );
    users
}

impl Identities {
    /// Makes or reuses the seeds in `dir` for every user of `config` and `plugins`.
    ///
    /// Errors: [`KeyError`] when a key file cannot be written or read.
    pub fn prepare(
        config: &BatonConfig,
        plugins: &Plugins,
        dir: &Path,
    ) -> Result<Identities, KeyError> {
        Ok(Identities {
            dir: dir.to_path_buf(),
            keys: identity::ensure_keys(dir, users(config, plugins))?,
        })
    }

    /// The server's `authorization` block.
    pub fn authorization_block(&self) -> String {
        let pairs: Vec<(User, String)> = self
            .keys
            .iter()
            .map(|k| (k.user.clone(), k.public_key.clone()))
            .collect();
        identity::authorization_block(&pairs)
    }

    /// Writes the server configuration (the authorization block) to `path`, mode 0600.
    ///
    /// Errors: [`KeyError::Io`].
    pub fn write_server_config(&self, path: &Path) -> Result<(), KeyError> {
        let text = format!(
            "# Written by baton at every start: the NATS users of this Baton and their\n\
             # permissions (see baton_bus::identity). The seeds are in {}.\n{}",
            self.dir.display(),
            self.authorization_block()
        );
        identity::write_private(path, &text).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The seed file of `user`, when it is one of these identities.
    pub fn seed_file(&self, user: &str) -> Option<&Path> {
        self.keys
            .iter()
            .find(|k| k.user.name == user)
            .map(|k| k.seed_file.as_path())
    }

    /// `base` connecting as `user`: its seed file, its inbox prefix, and a client name that
    /// names it in the server's monitoring.
    pub fn bus_config(&self, base: &BusConfig, user: &str) -> BusConfig {
        BusConfig {
            nkey_seed_file: self.seed_file(user).map(Path::to_path_buf),
            credentials_file: None,
            inbox_prefix: identity::inbox_prefix(user),
            client_name: format!("baton-{user}"),
            ..base.clone()
        }
    }
}

/// The NATS user a service connects as (`baton serve`'s name).
pub fn user_of(service: ServiceName) -> String {
    service.to_string()
}
