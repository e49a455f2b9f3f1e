//! `train.dpo.loss_type`: TRL's DPO losses by their names, one or several summed with
//! `train.dpo.loss_weights` (TRL's `loss_type` list and `loss_weights`).

use serde::de::{self, IntoDeserializer, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The DPO loss on the policy's and the reference's log-ratios (`h`: the chosen one minus the
/// rejected one; `c`, `r`: each alone), TRL's `loss_type` names and formulas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    /// `-log sigmoid(beta * h)` (with `label_smoothing` e: conservative DPO,
    /// `-(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h)`).
    #[default]
    Sigmoid,
    /// IPO (Azar et al. 2023): `(h / n - 1 / (2 beta))^2` on log-ratios averaged per completion
    /// token, as TRL computes it.
    Ipo,
    /// SLiC-HF's hinge (Zhao et al. 2023): `max(0, 1 - beta * h)`.
    Hinge,
    /// Robust DPO (Chowdhury et al. 2024): the unbiased loss under preferences flipped with
    /// probability `label_smoothing` e, `(-(1 - e) log sigmoid(beta h) + e log sigmoid(-beta h))
    /// / (1 - 2e)`.
    Robust,
    /// EXO (Ji et al. 2024, pairwise): the KL divergence from `[(1 - e), e]` of the softmax of
    /// `beta c` and `beta r`, with `label_smoothing` e > 0 (the paper suggests 1e-3).
    ExoPair,
    /// NCA (Chen et al. 2024, pairwise): `-log sigmoid(beta c) - log sigmoid(-beta c) / 2 - log
    /// sigmoid(-beta r) / 2`, which pushes the rejected completion's likelihood down on its own.
    NcaPair,
    /// BCO's pairwise form (Jung et al. 2024) as TRL 1.16 computes it, without the running
    /// reward shift: `-log sigmoid(beta c) - log sigmoid(-beta r)`.
    BcoPair,
    /// SPPO with hard probabilities (Wu et al. 2024): `(c - 1 / (2 beta))^2 + (r + 1 / (2
    /// beta))^2`.
    SppoHard,
    /// APO-zero (D'Oosterlinck et al. 2024), for chosen completions better than the model's
    /// own: `1 - sigmoid(beta c) + sigmoid(beta r)`.
    ApoZero,
    /// APO-down, for chosen completions worse than the model's own: `sigmoid(beta c) + 1 -
    /// sigmoid(beta h)`.
    ApoDown,
    /// DiscoPOP (Chris Lu et al. 2024): the logistic loss of `beta h` blended with `exp(-beta
    /// h)` by `sigmoid(beta h / discopop_tau)`.
    Discopop,
    /// The sigmoid loss on log-ratios averaged per completion token (like `ipo`'s).
    SigmoidNorm,
    /// The chosen completions' NLL (per token), TRL's `sft` term: combined with a pairwise
    /// loss it makes RPO (`[sigmoid, sft]`) or MPO (`[sigmoid, bco_pair, sft]`).
    Sft,
}

impl DpoLoss {
    pub const ALL: [DpoLoss; 13] = [
        DpoLoss::Sigmoid,
        DpoLoss::Ipo,
        DpoLoss::Hinge,
        DpoLoss::Robust,
        DpoLoss::ExoPair,
        DpoLoss::NcaPair,
        DpoLoss::BcoPair,
        DpoLoss::SppoHard,
        DpoLoss::ApoZero,
        DpoLoss::ApoDown,
        DpoLoss::Discopop,
        DpoLoss::SigmoidNorm,
        DpoLoss::Sft,
    ];

    /// Whether `dpo.label_smoothing` means something for this loss.
    pub fn uses_label_smoothing(self) -> bool {
        matches!(self, DpoLoss::Sigmoid | DpoLoss::Robust | DpoLoss::ExoPair)
    }
}

impl std::fmt::Display for DpoLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DpoLoss::Sigmoid => "sigmoid",
            DpoLoss::Ipo => "ipo",
            DpoLoss::Hinge => "hinge",
            DpoLoss::Robust => "robust",
            DpoLoss::ExoPair => "exo_pair",
            DpoLoss::NcaPair => "nca_pair",
            DpoLoss::BcoPair => "bco_pair",
            DpoLoss::SppoHard => "sppo_hard",
            DpoLoss::ApoZero => "apo_zero",
            DpoLoss::ApoDown => "apo_down",
            DpoLoss::Discopop => "discopop",
            DpoLoss::SigmoidNorm => "sigmoid_norm",
            DpoLoss::Sft => "sft",
        })
    }
}

/// `train.dpo.f_divergence_type`: the f-divergence whose derivative turns each log-ratio into
/// the score the losses compare (Wang et al. 2023, "Beyond reverse KL"; TRL's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FDivergence {
    /// The log-ratio itself: standard DPO.
    #[default]
    ReverseKl,
    /// `1 - exp(-x)`.
    ForwardKl,
    /// Jensen-Shannon: `log 2 + log sigmoid(x)`.
    JsDivergence,
    /// `(exp((a - 1) x) - 1) / (a - 1)` with `a` = `f_alpha_divergence_coef`.
    AlphaDivergence,
}

impl std::fmt::Display for FDivergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FDivergence::ReverseKl => "reverse_kl",
            FDivergence::ForwardKl => "forward_kl",
            FDivergence::JsDivergence => "js_divergence",
            FDivergence::AlphaDivergence => "alpha_divergence",
        })
    }
}

impl DpoLoss {
    /// Whether the loss compares the chosen and rejected scores (so another f-divergence
    /// applies); the others read the log-ratios themselves (TRL's list).
    pub fn takes_f_divergence(self) -> bool {
        matches!(
            self,
            DpoLoss::Sigmoid
                | DpoLoss::SigmoidNorm
                | DpoLoss::Hinge
                | DpoLoss::Ipo
                | DpoLoss::ExoPair
                | DpoLoss::Robust
                | DpoLoss::Discopop
                | DpoLoss::Sft
        )
    }
}

/// One loss or several, in the recipe's order: a name or a list of names in YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpoLosses(pub Vec<DpoLoss>);

impl Default for DpoLosses {
    fn default() -> Self {
        Self(vec![DpoLoss::Sigmoid])
    }
}

impl DpoLosses {
    /// The most losses one list may sum (MPO uses three).
    pub const MAX: usize = 6;

    pub fn contains(&self, loss: DpoLoss) -> bool {
        self.0.contains(&loss)
    }

    /// The losses and their weights (1 each without `loss_weights`).
    pub fn weighted(&self, weights: Option<&[f64]>) -> Vec<(DpoLoss, f64)> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, &l)| (l, weights.and_then(|w| w.get(i).copied()).unwrap_or(1.0)))
            .collect()
    }
}

impl std::fmt::Display for DpoLosses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        match names.as_slice() {
            [one] => f.write_str(one),
            _ => write!(f, "[{}]", names.join(", ")),
        }
    }
}

/// A single loss is written as its name, as before lists existed, so fingerprints of older
/// checkpoints still match.
impl Serialize for DpoLosses {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for DpoLosses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> Visitor<'de> for Names {
            type Value = DpoLosses;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a loss name or a list of loss names")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<DpoLosses, E> {
                // The enum's own error names the valid choices.
                Ok(DpoLosses(vec![DpoLoss::deserialize(
                    v.into_deserializer(),
                )?]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DpoLosses, A::Error> {
                let mut v = Vec::new();
                while let Some(loss) = seq.next_element::<DpoLoss>()? {
                    v.push(loss);
                }
                if v.is_empty() {
                    return Err(de::Error::custom("the list of losses is empty"));
                }
                Ok(DpoLosses(v))
            }
        }
        d.deserialize_any(Names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_or_a_list() {
        let one: DpoLosses = serde_json::from_str("\"ipo\"").unwrap();
        assert_eq!(one.0, vec![DpoLoss::Ipo]);
        assert_eq!(serde_json::to_string(&one).unwrap(), "\"ipo\"");
        let many: DpoLosses = serde_json::from_str("[\"sigmoid\", \"bco_pair\", \"sft\"]").unwrap();
        assert_eq!(
            many.0,
            vec![DpoLoss::Sigmoid, DpoLoss::BcoPair, DpoLoss::Sft]
        );
        assert_eq!(
            serde_json::to_string(&many).unwrap(),
            "[\"sigmoid\",\"bco_pair\",\"sft\"]"
        );
        assert_eq!(many.to_string(), "[sigmoid, bco_pair, sft]");
        let bad = serde_json::from_str::<DpoLosses>("[\"sigmoid\", \"slic\"]").unwrap_err();
        assert!(
            bad.to_string().starts_with("unknown variant `slic`"),
            "{bad}"
        );
        assert!(serde_json::from_str::<DpoLosses>("[]").is_err());
        assert_eq!(
            many.weighted(Some(&[0.8, 0.2, 1.0])),
            vec![
                (DpoLoss::Sigmoid, 0.8),
                (DpoLoss::BcoPair, 0.2),
                (DpoLoss::Sft, 1.0)
            ]
        );
    }
}
