//! SIGINT/SIGTERM handling: the first signal asks the loop to finish its current step, save a
//! checkpoint and exit (130 / 143, as shells report those signals); a second one exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Which signal arrived (0 = none).
#[derive(Clone)]
pub struct StopFlag(Arc<AtomicUsize>);

impl StopFlag {
    pub fn install() -> Self {
        let flag = Arc::new(AtomicUsize::new(0));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let f = flag.clone();
            // SAFETY: the handler only performs atomic operations and `_exit`, both
            // async-signal-safe.
            let _ = unsafe {
                signal_hook::low_level::register(sig, move || {
                    // A second signal while one is pending ends the process at once.
                    if f.swap(sig as usize, Ordering::SeqCst) != 0 {
                        signal_hook::low_level::exit(128 + sig);
                    }
                })
            };
        }
        Self(flag)
    }

    pub fn none() -> Self {
        Self(Arc::new(AtomicUsize::new(0)))
    }

    /// Ask to stop as signal `sig` would (for callers that embed training, and tests).
    pub fn request(&self, sig: i32) {
        self.0.store(sig as usize, Ordering::SeqCst);
    }

    /// The signal number that asked us to stop, if any.
    pub fn requested(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }

    /// Process exit code for a stop by signal `sig`.
    pub fn exit_code(sig: i32) -> u8 {
        (128 + sig) as u8
    }
}
