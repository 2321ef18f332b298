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
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let path = Cli::parse().inventory;
    let fleet = Fleet::start(FleetSpec::demo_web()).await?;
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
    tokio::signal::ctrl_c().await
}
