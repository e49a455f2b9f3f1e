//! `burnish push <DIR> <REPO_ID>`: publish an adapter folder or a merged model folder.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::user;
use crate::hub::HubEnv;
use crate::hub::card;
use crate::hub::upload::{HubClient, PushOptions, UploadMode, expected_mode, folder_files};
use crate::observe::human_bytes;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// An adapter folder (adapter_config.json) or a model folder (config.json).
    pub dir: PathBuf,
    /// Target repo, `org/name`.
    pub repo: String,
    /// Create the repo as private.
    #[arg(long)]
    pub private: bool,
    /// Branch to commit to.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Commit message.
    #[arg(long)]
    pub message: Option<String>,
    /// Show what would be uploaded without contacting the Hub.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !crate::hub::is_repo_id(&args.repo) {
        return Err(user(format!("'{}' is not a repo id (org/name)", args.repo)));
    }
    if !args.dir.join("adapter_config.json").is_file() && !args.dir.join("config.json").is_file() {
        return Err(user(format!(
            "{} is neither an adapter folder (adapter_config.json) nor a model folder (config.json)",
            args.dir.display()
        )));
    }
    let message = args
        .message
        .clone()
        .unwrap_or_else(|| "Upload with burnish".into());
    let mut files = folder_files(&args.dir)?;
    let card_missing = !args.dir.join("README.md").exists();
    if args.dry_run {
        println!(
            "would push {} to {} (revision {}, {})",
            args.dir.display(),
            args.repo,
            args.revision,
            if args.private {
                "private"
            } else {
                "public if new"
            }
        );
        for f in &files {
            let mode = if expected_mode(f) == UploadMode::Lfs {
                "lfs"
            } else {
                "regular"
            };
            println!("  {:<8} {:>10}  {}", mode, human_bytes(f.size), f.path);
        }
        if card_missing {
            println!("  regular  (generated) README.md model card");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if card_missing && let Some(info) = card::infer(&args.dir) {
        // Generated in a temporary file beside the upload: a push never changes local folders.
        let tmp = std::env::temp_dir().join(format!("burnish-card-{}.md", std::process::id()));
        std::fs::write(&tmp, card::render(&info))?;
        files.push(crate::hub::upload::describe(&tmp, "README.md".into())?);
    }
    let client = HubClient::new(HubEnv::from_env());
    let report = client.push(
        &args.repo,
        "model",
        &files,
        &PushOptions {
            private: args.private,
            revision: &args.revision,
            message: &message,
            description: "",
        },
    )?;
    tracing::info!(
        "pushed {} files ({} LFS uploaded, {} already present, {} regular; {})",
        files.len(),
        report.lfs_uploaded,
        report.lfs_skipped,
        report.regular,
        human_bytes(report.bytes_uploaded)
    );
    println!(
        "{}",
        if report.commit_url.is_empty() {
            &report.commit_oid
        } else {
            &report.commit_url
        }
    );
    Ok(ExitCode::SUCCESS)
}
