//! `baton-fleet [INVENTORY]`: starts the demo fleet (ten production web servers on loopback,
//! six drifted) and writes its inventory (default `.baton/inventory.toml`, where `baton up`'s
//! drift runbook looks), then serves until Ctrl-C. Arguments are parsed by clap, as `baton`'s
//! are: `--help` prints the usage and starts nothing.

use baton_fleet::{Fleet, FleetSpec};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "baton-fleet",
    version,
    about = "Demo fleet: ten production web servers on loopback, six drifted, until Ctrl-C"
)]
struct Cli {
    /// Where to write the fleet's inventory (TOML, the drift runbook's format); `baton up`
    /// reads `<data_dir>/inventory.toml`.
    #[arg(default_value = ".baton/inventory.toml", value_name = "INVENTORY")]
    inventory: PathBuf,
    /// The IP address the servers listen on (`0.0.0.0` in a container).
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    bind: std::net::IpAddr,
    /// The host name the inventory gives for the servers, when it is not `--bind`'s address
    /// (in docker-compose: the fleet service's name, `fleet`).
    #[arg(long, value_name = "HOST")]
    advertise: Option<String>,
    /// Milliseconds every `PUT /config` waits before applying (a slow fleet, so a test can
    /// stop a service in the middle of a rollout).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    put_delay_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let path = cli.inventory;
    let fleet = Fleet::start_on(FleetSpec::demo_web(), cli.bind, cli.advertise).await?;
    for s in &fleet.servers {
        s.set_delay(std::time::Duration::from_millis(cli.put_delay_ms));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, fleet.inventory_toml())?;
    for s in &fleet.servers {
        println!(
            "{} {} {}",
            s.id,
            s.url(),
            if fleet.drifted_ids().contains(&s.id) {
                "drifted"
            } else {
                "golden"
            }
        );
    }
    println!(
        "inventory written to {}; Ctrl-C stops the fleet",
        path.display()
    );
    // Ctrl-C, or SIGTERM as `docker stop` sends it.
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}
