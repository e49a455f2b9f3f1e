//! The `burnish` command: parse arguments, run the subcommand, map failures to exit codes
//! (0 success, 1 internal failure, 2 user error).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = burnish::cli::Cli::parse();
    burnish::cli::init_logging(cli.verbose, cli.quiet);
    match burnish::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if burnish::error::is_user_error(&err) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
