//! Opt-in wall-clock totals per host kernel (`burnish bench --profile`): where a CPU step's
//! time goes without an external profiler. Off by default; when off a span costs one relaxed
//! atomic load. The kernels run one at a time on the calling thread (each is parallel inside),
//! so the totals add up to the part of the step spent in them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The timed regions: the fused kernels, and the GEMMs within them that dominate.
/// The discriminants index the totals (they follow `REGIONS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    LoraForward,
    LoraBackward,
    LowRankForward,
    LowRankBackward,
    AttentionForward,
    AttentionBackward,
    LossLogits,
    LossSoftmax,
    LossGrad,
    RmsNorm,
    RmsNormBackward,
    Rope,
    Swiglu,
    SwigluBackward,
    Dequantize,
}

/// Every region, in declaration (discriminant) order.
const REGIONS: [Region; 15] = [
    Region::LoraForward,
    Region::LoraBackward,
    Region::LowRankForward,
    Region::LowRankBackward,
    Region::AttentionForward,
    Region::AttentionBackward,
    Region::LossLogits,
    Region::LossSoftmax,
    Region::LossGrad,
    Region::RmsNorm,
    Region::RmsNormBackward,
    Region::Rope,
    Region::Swiglu,
    Region::SwigluBackward,
    Region::Dequantize,
];

// REGIONS lists each region at the index of its discriminant (checked when compiling).
const _: () = {
    let mut i = 0;
    while i < REGIONS.len() {
        assert!(REGIONS[i] as usize == i);
        i += 1;
    }
};

impl Region {
    /// The region this one is timed inside of, if any.
    pub fn parent(self) -> Option<Region> {
        match self {
            Region::LowRankForward => Some(Region::LoraForward),
            Region::LowRankBackward => Some(Region::LoraBackward),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Region::LoraForward => "linear+LoRA forward",
            Region::LoraBackward => "linear+LoRA backward",
            Region::LowRankForward => "of which LoRA A/B GEMMs",
            Region::LowRankBackward => "of which LoRA A/B GEMMs",
            Region::AttentionForward => "attention forward",
            Region::AttentionBackward => "attention backward",
            Region::LossLogits => "loss: logits GEMM",
            Region::LossSoftmax => "loss: log-sum-exp, softmax",
            Region::LossGrad => "loss: gradient GEMM",
            Region::RmsNorm => "RMSNorm forward",
            Region::RmsNormBackward => "RMSNorm backward",
            Region::Rope => "RoPE",
            Region::Swiglu => "SwiGLU forward",
            Region::SwigluBackward => "SwiGLU backward",
            Region::Dequantize => "dequantize",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; REGIONS.len()] = [const { AtomicU64::new(0) }; REGIONS.len()];
static CALLS: [AtomicU64; REGIONS.len()] = [const { AtomicU64::new(0) }; REGIONS.len()];

/// Start (or stop) collecting.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Zero the totals (after warm-up, say).
pub fn reset() {
    for (n, c) in NANOS.iter().zip(&CALLS) {
        n.store(0, Ordering::Relaxed);
        c.store(0, Ordering::Relaxed);
    }
}

/// `(region, seconds, calls)` collected since the last reset, regions never entered left out.
pub fn totals() -> Vec<(Region, f64, u64)> {
    REGIONS
        .iter()
        .filter_map(|&r| {
            let (i, calls) = (r as usize, CALLS[r as usize].load(Ordering::Relaxed));
            (calls > 0).then(|| (r, NANOS[i].load(Ordering::Relaxed) as f64 * 1e-9, calls))
        })
        .collect()
}

/// Times its region until dropped.
pub struct Span(Option<(usize, Instant)>);

pub fn span(region: Region) -> Span {
    if !ENABLED.load(Ordering::Relaxed) {
        return Span(None);
    }
    Span(Some((region as usize, Instant::now())))
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((i, start)) = self.0 {
            NANOS[i].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            CALLS[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_add_up_only_while_enabled() {
        reset();
        drop(span(Region::Rope));
        assert!(totals().iter().all(|(r, _, _)| *r != Region::Rope));
        set_enabled(true);
        {
            let _s = span(Region::Rope);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(span(Region::Rope));
        set_enabled(false);
        let rope = totals().into_iter().find(|(r, _, _)| *r == Region::Rope);
        let (_, secs, calls) = rope.expect("rope was timed");
        assert!(calls >= 2, "{calls}");
        assert!(secs >= 0.005, "{secs}");
    }
}
