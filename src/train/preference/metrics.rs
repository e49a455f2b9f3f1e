//! What preference runs log: sums over a step's (or an evaluation's) pairs or rows, added up
//! across replicas, and the means TRL logs under its names (`rewards/chosen`, `kl`, ...).

use super::objective::{PairTerms, PreferenceObjective};

/// Sums over pairs behind the metrics, in a fixed order so replicas can add them up.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PreferenceSums {
    pub pairs: f64,
    pub reward_chosen: f64,
    pub reward_rejected: f64,
    pub correct: f64,
    pub logp_chosen: f64,
    pub logp_rejected: f64,
    pub log_odds: f64,
    pub log_sigmoid_odds: f64,
    /// ORPO: summed NLL and its token count.
    pub nll: f64,
    pub nll_tokens: f64,
    /// KTO: the desirable and undesirable rows (`pairs` counts both), the sum of the
    /// micro-batches' KL estimates and their count.
    pub desirable: f64,
    pub undesirable: f64,
    pub kl: f64,
    pub kl_batches: f64,
}

impl PreferenceSums {
    pub const LEN: usize = 14;

    pub fn add(&mut self, t: &PairTerms) {
        self.pairs += 1.0;
        self.reward_chosen += t.reward_chosen;
        self.reward_rejected += t.reward_rejected;
        // TRL counts a pair as correct when its chosen reward is strictly higher.
        self.correct += f64::from(u8::from(t.reward_chosen > t.reward_rejected));
        self.logp_chosen += t.logp_chosen;
        self.logp_rejected += t.logp_rejected;
        self.log_odds += t.log_odds;
        self.log_sigmoid_odds += t.log_sigmoid_odds;
    }

    pub fn merge(&mut self, o: &Self) {
        let (a, b) = (self.to_vec(), o.to_vec());
        *self = Self::from_slice(&a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<_>>());
    }

    pub fn to_vec(&self) -> Vec<f64> {
        vec![
            self.pairs,
            self.reward_chosen,
            self.reward_rejected,
            self.correct,
            self.logp_chosen,
            self.logp_rejected,
            self.log_odds,
            self.log_sigmoid_odds,
            self.nll,
            self.nll_tokens,
            self.desirable,
            self.undesirable,
            self.kl,
            self.kl_batches,
        ]
    }

    pub fn from_slice(v: &[f64]) -> Self {
        let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
        Self {
            pairs: at(0),
            reward_chosen: at(1),
            reward_rejected: at(2),
            correct: at(3),
            logp_chosen: at(4),
            logp_rejected: at(5),
            log_odds: at(6),
            log_sigmoid_odds: at(7),
            nll: at(8),
            nll_tokens: at(9),
            desirable: at(10),
            undesirable: at(11),
            kl: at(12),
            kl_batches: at(13),
        }
    }

    /// The means TRL logs.
    pub fn metrics(&self, objective: &PreferenceObjective) -> PreferenceMetrics {
        if objective.is_unpaired() {
            return self.kto_metrics();
        }
        let p = self.pairs.max(1.0);
        let orpo = matches!(objective, PreferenceObjective::Orpo { .. });
        let has_nll = orpo
            || matches!(
                objective,
                PreferenceObjective::Simpo { .. } | PreferenceObjective::Cpo { .. }
            );
        PreferenceMetrics {
            rewards_chosen: self.reward_chosen / p,
            rewards_rejected: self.reward_rejected / p,
            rewards_margins: (self.reward_chosen - self.reward_rejected) / p,
            rewards_accuracies: self.correct / p,
            logps_chosen: self.logp_chosen / p,
            logps_rejected: self.logp_rejected / p,
            nll_loss: has_nll.then(|| self.nll / self.nll_tokens.max(1.0)),
            orpo: orpo.then(|| OrpoMetrics {
                log_odds_ratio: self.log_sigmoid_odds / p,
                log_odds_chosen: self.log_odds / p,
            }),
            kto: None,
        }
    }

    /// KTO's metrics: TRL's means over the desirable rows (`chosen`) and the undesirable ones
    /// (`rejected`), and the mean KL estimate.
    fn kto_metrics(&self) -> PreferenceMetrics {
        let mean = |sum: f64, n: f64| if n > 0.0 { sum / n } else { 0.0 };
        let (d, u) = (self.desirable, self.undesirable);
        PreferenceMetrics {
            rewards_chosen: mean(self.reward_chosen, d),
            rewards_rejected: mean(self.reward_rejected, u),
            rewards_margins: mean(self.reward_chosen, d) - mean(self.reward_rejected, u),
            rewards_accuracies: 0.0,
            logps_chosen: mean(self.logp_chosen, d),
            logps_rejected: mean(self.logp_rejected, u),
            nll_loss: None,
            orpo: None,
            kto: Some(KtoMetrics {
                kl: mean(self.kl, self.kl_batches),
                desirable: d > 0.0,
                undesirable: u > 0.0,
            }),
        }
    }
}

/// Means over a step's (or an evaluation's) pairs, with TRL's names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreferenceMetrics {
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub rewards_margins: f64,
    pub rewards_accuracies: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
    /// ORPO and SimPO: the chosen completions' token-mean NLL (0 for SimPO without its term,
    /// as TRL logs it).
    pub nll_loss: Option<f64>,
    pub orpo: Option<OrpoMetrics>,
    /// KTO: no accuracies; each side's metrics only where it had rows (as TRL logs them).
    pub kto: Option<KtoMetrics>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KtoMetrics {
    /// The mean over micro-batches of the KL estimate (0 for `apo_zero_unpaired`).
    pub kl: f64,
    /// Whether desirable (undesirable) rows were seen.
    pub desirable: bool,
    pub undesirable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrpoMetrics {
    pub log_odds_ratio: f64,
    pub log_odds_chosen: f64,
}

impl PreferenceMetrics {
    /// `(TRL's name, value)` in the order TRL logs them.
    /// [`Self::named`] with `prefix` before each name (`eval_` for evaluations).
    pub fn with_prefix(&self, prefix: &str) -> crate::observe::metrics::ObjectiveMetrics {
        self.named()
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect()
    }

    pub fn named(&self) -> Vec<(&'static str, f64)> {
        if let Some(k) = &self.kto {
            return self.kto_named(k);
        }
        let mut v = vec![
            ("rewards/chosen", self.rewards_chosen),
            ("rewards/rejected", self.rewards_rejected),
            ("rewards/accuracies", self.rewards_accuracies),
            ("rewards/margins", self.rewards_margins),
            ("logps/chosen", self.logps_chosen),
            ("logps/rejected", self.logps_rejected),
        ];
        if let Some(nll) = self.nll_loss {
            v.push(("nll_loss", nll));
        }
        if let Some(o) = &self.orpo {
            v.push(("log_odds_ratio", o.log_odds_ratio));
            v.push(("log_odds_chosen", o.log_odds_chosen));
        }
        v
    }

    /// KTO's metrics in TRL's order, each side's only where it had rows.
    fn kto_named(&self, k: &KtoMetrics) -> Vec<(&'static str, f64)> {
        let mut v = vec![("kl", k.kl)];
        if k.desirable {
            v.push(("rewards/chosen", self.rewards_chosen));
            v.push(("logps/chosen", self.logps_chosen));
        }
        if k.undesirable {
            v.push(("rewards/rejected", self.rewards_rejected));
            v.push(("logps/rejected", self.logps_rejected));
        }
        if k.desirable && k.undesirable {
            v.push(("rewards/margins", self.rewards_margins));
        }
        v
    }

    /// The names [`Self::named`] can give for `objective` (what `metric_for_best_model` may
    /// name).
    pub fn names(objective: &PreferenceObjective) -> Vec<&'static str> {
        let mut sums = PreferenceSums::default();
        if objective.is_unpaired() {
            (sums.desirable, sums.undesirable) = (1.0, 1.0);
        }
        sums.metrics(objective)
            .named()
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }
}
