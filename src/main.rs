//! The `burnish` command: parse arguments, run the subcommand, map failures to exit codes
//! (0 success, 1 internal failure, 2 user error).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tune_allocator();
    let cli = burnish::cli::Cli::parse();
    burnish::cli::init_logging(cli.verbose, cli.quiet);
    match burnish::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            burnish::cli::exit::code_for(&err)
        }
    }
}

/// Training allocates and frees the same large buffers every step. glibc returns blocks above
/// its mmap threshold to the OS at once, so each step pays page faults for fresh memory; keeping
/// blocks up to 32 MiB (glibc's maximum) in the heap and not trimming it avoids that.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; it is called before any threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
