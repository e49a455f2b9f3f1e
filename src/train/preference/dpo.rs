//! DPO's losses on a pair's log-ratios (policy minus reference, per completion), TRL's
//! `DPOTrainer` formulas: the pairwise losses by name, their weighted sums (RPO, MPO), and the
//! f-divergences that turn log-ratios into the scores the losses compare.

use super::math::{log_sigmoid, sigmoid};
use crate::recipe::{DpoLoss, FDivergence};

/// DPO's losses and their weights, in the recipe's order (TRL's `loss_type` list and
/// `loss_weights`); a small fixed array so objectives stay `Copy`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoMix {
    terms: [(DpoLoss, f64); crate::recipe::DpoLosses::MAX],
    len: usize,
}

impl DpoMix {
    /// The recipe check refuses longer lists, so every recipe's fits.
    pub fn new(terms: &[(DpoLoss, f64)]) -> Self {
        let mut mix = Self {
            terms: [(DpoLoss::Sigmoid, 0.0); crate::recipe::DpoLosses::MAX],
            len: 0,
        };
        for (slot, term) in mix.terms.iter_mut().zip(terms) {
            *slot = *term;
            mix.len += 1;
        }
        mix
    }

    pub fn single(loss: DpoLoss) -> Self {
        Self::new(&[(loss, 1.0)])
    }

    pub fn terms(&self) -> &[(DpoLoss, f64)] {
        &self.terms[..self.len]
    }

    pub fn weight(&self, loss: DpoLoss) -> Option<f64> {
        self.terms()
            .iter()
            .find(|(l, _)| *l == loss)
            .map(|&(_, w)| w)
    }
}

impl std::fmt::Display for DpoMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let [(loss, w)] = self.terms()
            && *w == 1.0
        {
            return write!(f, "{loss}");
        }
        let parts: Vec<String> = self
            .terms()
            .iter()
            .map(|(l, w)| format!("{w} {l}"))
            .collect();
        f.write_str(&parts.join(" + "))
    }
}

/// The f-divergence's score of a log-ratio `x` and its derivative, TRL's formulas (alpha within
/// 1e-6 of 1 is reverse KL's limit; the alpha exponent is clamped at 80, past which the score
/// is flat).
fn f_score(divergence: FDivergence, alpha: f64, x: f64) -> (f64, f64) {
    match divergence {
        FDivergence::ReverseKl => (x, 1.0),
        FDivergence::ForwardKl => {
            let e = (-x).exp();
            (1.0 - e, e)
        }
        FDivergence::JsDivergence => (std::f64::consts::LN_2 + log_sigmoid(x), sigmoid(-x)),
        FDivergence::AlphaDivergence if (alpha - 1.0).abs() < 1e-6 => (x, 1.0),
        FDivergence::AlphaDivergence => {
            let t = (alpha - 1.0) * x;
            let (e, slope) = if t > 80.0 {
                (80f64.exp(), 0.0)
            } else {
                (t.exp(), t.exp())
            };
            ((e - 1.0) / (alpha - 1.0), slope)
        }
    }
}

/// DPO's settings that shape its losses.
pub struct DpoShape {
    pub beta: f64,
    pub label_smoothing: f64,
    pub discopop_tau: f64,
    /// The f-divergence and its alpha (`alpha_divergence`).
    pub divergence: (FDivergence, f64),
}

/// The weighted sum of `losses` for a pair with log-ratios `ratios` (chosen, rejected) and
/// completion token counts `tokens`, and its derivatives with respect to the two log-ratios;
/// `sft` is the NLL term, outside the pair's terms.
pub fn dpo_terms(
    losses: &DpoMix,
    shape: &DpoShape,
    ratios: (f64, f64),
    tokens: (f64, f64),
) -> (f64, f64, f64) {
    let (chosen_ratio, rejected_ratio) = ratios;
    let (divergence, alpha) = shape.divergence;
    let (chosen_score, d_chosen_score) = f_score(divergence, alpha, chosen_ratio);
    let (rejected_score, d_rejected_score) = f_score(divergence, alpha, rejected_ratio);
    let (mut value, mut d_chosen, mut d_rejected) = (0.0, 0.0, 0.0);
    for &(loss, weight) in losses.terms() {
        let (v, dc, dr) = match loss.takes_f_divergence() {
            true => {
                let (v, dc, dr) = dpo_loss(loss, shape, tokens, chosen_score, rejected_score);
                (v, dc * d_chosen_score, dr * d_rejected_score)
            }
            false => dpo_loss(loss, shape, tokens, chosen_ratio, rejected_ratio),
        };
        value += weight * v;
        d_chosen += weight * dc;
        d_rejected += weight * dr;
    }
    (value, d_chosen, d_rejected)
}

/// One DPO loss of a pair with log-ratios `chosen_ratio` and `rejected_ratio`, and its
/// derivatives with respect to them (`sft`: none; it is the NLL term). `tokens`: the
/// completions' token counts, what the per-token losses average over.
fn dpo_loss(
    loss: DpoLoss,
    shape: &DpoShape,
    tokens: (f64, f64),
    chosen_ratio: f64,
    rejected_ratio: f64,
) -> (f64, f64, f64) {
    let DpoShape {
        beta,
        label_smoothing,
        discopop_tau,
        ..
    } = *shape;
    match loss {
        DpoLoss::Sigmoid => {
            let z = beta * (chosen_ratio - rejected_ratio);
            let e = label_smoothing;
            let value = -(1.0 - e) * log_sigmoid(z) - e * log_sigmoid(-z);
            let dz = -(1.0 - e) * sigmoid(-z) + e * sigmoid(z);
            (value, beta * dz, -beta * dz)
        }
        DpoLoss::Hinge => {
            // torch's relu has gradient 0 at 0, so the margin's edge counts as met.
            let z = beta * (chosen_ratio - rejected_ratio);
            let dz = if z < 1.0 { -1.0 } else { 0.0 };
            ((1.0 - z).max(0.0), beta * dz, -beta * dz)
        }
        DpoLoss::Robust => {
            let z = beta * (chosen_ratio - rejected_ratio);
            let e = label_smoothing;
            let norm = 1.0 - 2.0 * e;
            let value = (-(1.0 - e) * log_sigmoid(z) + e * log_sigmoid(-z)) / norm;
            let dz = (-(1.0 - e) * sigmoid(-z) - e * sigmoid(z)) / norm;
            (value, beta * dz, -beta * dz)
        }
        DpoLoss::Ipo => {
            // Log-ratios averaged per completion token, as TRL does.
            let (nc, nr) = tokens;
            let delta = chosen_ratio / nc - rejected_ratio / nr;
            let gap = delta - 1.0 / (2.0 * beta);
            (gap * gap, 2.0 * gap / nc, -2.0 * gap / nr)
        }
        DpoLoss::ExoPair => {
            // KL(q || [1 - e, e]) with q = (sigmoid(z), sigmoid(-z)); its slope
            // q_w q_l (log q_w/q_l - log (1-e)/e) uses log q_w/q_l = z.
            let z = beta * (chosen_ratio - rejected_ratio);
            let e = label_smoothing;
            let (qw, ql) = (sigmoid(z), sigmoid(-z));
            let (log_pw, log_pl) = ((-e).ln_1p(), e.ln());
            let value = qw * (log_sigmoid(z) - log_pw) + ql * (log_sigmoid(-z) - log_pl);
            let dz = qw * ql * (z - (log_pw - log_pl));
            (value, beta * dz, -beta * dz)
        }
        DpoLoss::NcaPair => {
            let (c, r) = (beta * chosen_ratio, beta * rejected_ratio);
            let value = -log_sigmoid(c) - 0.5 * log_sigmoid(-c) - 0.5 * log_sigmoid(-r);
            let dc = -sigmoid(-c) + 0.5 * sigmoid(c);
            (value, beta * dc, beta * 0.5 * sigmoid(r))
        }
        DpoLoss::BcoPair => {
            let (c, r) = (beta * chosen_ratio, beta * rejected_ratio);
            let value = -log_sigmoid(c) - log_sigmoid(-r);
            (value, -beta * sigmoid(-c), beta * sigmoid(r))
        }
        DpoLoss::SppoHard => {
            let half = 0.5 / beta;
            let (gc, gr) = (chosen_ratio - half, rejected_ratio + half);
            (gc * gc + gr * gr, 2.0 * gc, 2.0 * gr)
        }
        DpoLoss::ApoZero => {
            let (c, r) = (beta * chosen_ratio, beta * rejected_ratio);
            let value = 1.0 - sigmoid(c) + sigmoid(r);
            let slope = |x: f64| sigmoid(x) * sigmoid(-x);
            (value, -beta * slope(c), beta * slope(r))
        }
        DpoLoss::ApoDown => {
            let c = beta * chosen_ratio;
            let z = beta * (chosen_ratio - rejected_ratio);
            let value = sigmoid(c) + 1.0 - sigmoid(z);
            let slope = |x: f64| sigmoid(x) * sigmoid(-x);
            (value, beta * (slope(c) - slope(z)), beta * slope(z))
        }
        DpoLoss::Discopop => {
            // Logistic and exponential parts blended by m = sigmoid(z / tau).
            let z = beta * (chosen_ratio - rejected_ratio);
            let m = sigmoid(z / discopop_tau);
            let dm = m * (1.0 - m) / discopop_tau;
            let (logistic, exp) = (-log_sigmoid(z), (-z).exp());
            let value = logistic * (1.0 - m) + exp * m;
            let dz = -sigmoid(-z) * (1.0 - m) - exp * m + dm * (exp - logistic);
            (value, beta * dz, -beta * dz)
        }
        DpoLoss::SigmoidNorm => {
            let (nc, nr) = tokens;
            let z = beta * (chosen_ratio / nc - rejected_ratio / nr);
            let dz = -sigmoid(-z);
            (-log_sigmoid(z), beta * dz / nc, -beta * dz / nr)
        }
        DpoLoss::Sft => (0.0, 0.0, 0.0),
    }
}
