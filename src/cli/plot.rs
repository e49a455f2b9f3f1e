//! `burnish plot <OUTPUT_DIR>`: draw `loss.svg` from a run's `metrics.jsonl`, at any time.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::user;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run's output folder (holding metrics.jsonl).
    pub output_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = crate::observe::plot::plot_run(&args.output_dir).map_err(user)?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}
