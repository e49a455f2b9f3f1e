//! `burnish orchestrator --port P`: the coordinator of a multi-machine data-parallel run (node 0
//! starts one in-process unless `distributed.start_orchestrator: false`).

use std::process::ExitCode;

use crate::train::distributed::{DEFAULT_PORT, run_orchestrator};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Port to listen on (all interfaces); the recipe's `distributed.orchestrator` names it.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    tracing::info!(
        "orchestrator listening on 0.0.0.0:{} (Ctrl-C to stop)",
        args.port
    );
    run_orchestrator(args.port)?;
    Ok(ExitCode::SUCCESS)
}
