//! `burnish download <REPO_ID> [--revision R] [--dataset]`: fill the Hub cache for offline use.

use std::process::ExitCode;

use hf_hub::RepoType;

use crate::error::user;
use crate::hub::HubEnv;
use crate::hub::download::Downloader;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `org/name`.
    pub repo: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// The repo is a dataset (all its files are fetched).
    #[arg(long)]
    pub dataset: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !crate::hub::is_repo_id(&args.repo) {
        return Err(user(format!("'{}' is not a repo id (org/name)", args.repo)));
    }
    let env = HubEnv::from_env();
    let cache = env.cache_dir.clone();
    let d = Downloader::new(env)?;
    if args.dataset {
        let files = d.all_files(&args.repo, RepoType::Dataset, &args.revision)?;
        println!(
            "{} files of dataset {} in {}",
            files.len(),
            args.repo,
            cache.display()
        );
    } else {
        let dir = d.model(&args.repo, &args.revision)?;
        println!("{}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
