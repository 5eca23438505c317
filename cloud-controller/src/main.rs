//! `cloud-controller`: placeholder until the controller milestone. It only
//! prints its help; the fleet, sync, agents and rollouts land in later issues.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "cloud-controller",
    version,
    about = "EdgeDesk cloud controller (fleet registry, sync, human agents, model rollouts)",
    long_about = "EdgeDesk cloud controller.\n\nNot implemented yet: this build only prints this help. \
                  The edge node (edge-node) runs on its own without a controller."
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let _ = cmd.print_long_help();
}
