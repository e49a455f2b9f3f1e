//! Progress bars (indicatif) on a terminal, and a log writer that pauses them, so bars and log
//! lines never garble each other. Off a terminal (CI, nohup, a log file) there are no bars.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static BARS: OnceLock<MultiProgress> = OnceLock::new();
static QUIET: AtomicBool = AtomicBool::new(false);

fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| {
        let m = MultiProgress::new();
        if !interactive() {
            m.set_draw_target(ProgressDrawTarget::hidden());
        }
        m
    })
}

/// `-q`: no bars.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::SeqCst);
}

/// Whether bars are drawn: stderr is a terminal and we are not quiet.
pub fn interactive() -> bool {
    std::io::stderr().is_terminal() && !QUIET.load(Ordering::SeqCst)
}

fn add(len: u64, template: &str) -> ProgressBar {
    if !interactive() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bars().add(ProgressBar::new(len).with_style(style))
}

/// A bar counting items (tensors, rows, steps).
pub fn items(len: u64, label: &str) -> ProgressBar {
    add(
        len,
        &format!("{label:>12} [{{bar:30}}] {{pos}}/{{len}} {{msg}}"),
    )
}

/// A bar counting bytes (downloads, uploads).
pub fn bytes(len: u64, label: &str) -> ProgressBar {
    add(
        len,
        &format!(
            "{label:>12} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}} {{msg}}"
        ),
    )
}

/// The training bar: step / total, then epoch, loss, lr, tokens/s in the message, and ETA.
pub fn training(total: u64, start: u64) -> ProgressBar {
    let bar = add(total, "{prefix:>8} [{bar:30}] {pos}/{len} {msg} eta {eta}");
    bar.set_position(start);
    bar.set_prefix("train");
    bar.reset_eta();
    bar
}

/// `tracing` writer that prints each log line with the bars suspended.
pub struct LogWriter;

pub struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        bars().suspend(|| {
            let _ = std::io::stderr().write_all(&line);
        });
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}
