//! `baton-fleet [INVENTORY]`: starts the demo fleet (ten production web servers on loopback,
//! six drifted) and writes its inventory (default `.baton/inventory.toml`, where `baton up`'s
//! drift runbook looks), then serves until Ctrl-C.

use baton_fleet::{Fleet, FleetSpec};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| ".baton/inventory.toml".into());
    let fleet = Fleet::start(FleetSpec::demo_web()).await?;
    if let Some(dir) = std::path::Path::new(&path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
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
    println!("inventory written to {path}; Ctrl-C stops the fleet");
    tokio::signal::ctrl_c().await
}
