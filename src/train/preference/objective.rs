//! The preference losses on per-sequence log-probabilities, in f64 on the host, with their
//! derivatives: DPO (Rafailov et al. 2023) with the sigmoid loss, its conservative form with
//! label smoothing (Mitchell 2023), IPO (Azar et al. 2023), SLiC-HF's hinge (Zhao et al. 2023)
//! and robust DPO (Chowdhury et al. 2024); ORPO's odds-ratio term (Hong et
//! al. 2024); SimPO (Meng et al. 2024) with CPO's NLL term (Xu et al. 2024). Conventions and
//! metric definitions are TRL's (`DPOTrainer`, `ORPOTrainer`, `CPOTrainer`).

pub use super::dpo::DpoMix;
use super::dpo::{DpoShape, dpo_terms};
pub use super::math::{log_sigmoid, log1mexp, sigmoid};
pub use super::metrics::{KtoMetrics, OrpoMetrics, PreferenceMetrics, PreferenceSums};
use crate::recipe::{CpoLoss, DpoLoss, FDivergence, KtoLoss, Objective, TrainSection};

/// What a step or an evaluation optimises over pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PreferenceObjective {
    Dpo {
        beta: f64,
        losses: DpoMix,
        label_smoothing: f64,
        discopop_tau: f64,
        /// The f-divergence and its alpha (`alpha_divergence`).
        divergence: (FDivergence, f64),
        /// LD-DPO's weight of the tokens past the shorter completion (`dpo.ld_alpha`).
        ld_alpha: Option<f64>,
    },
    Orpo {
        beta: f64,
        /// The NLL term covers the prompt too (`data.train_on_inputs`; TRL's ORPOTrainer does).
        nll_on_prompt: bool,
    },
    /// `-log sigmoid(beta * (mean logp(chosen) - mean logp(rejected)) - gamma)` per pair, plus
    /// `cpo_alpha` times the chosen completions' NLL (TRL's CPOTrainer, `loss_type="simpo"`).
    Simpo {
        beta: f64,
        gamma: f64,
        cpo_alpha: f64,
    },
    /// CPO's loss on `log pi(chosen) - log pi(rejected)` (summed; per-token means for ipo),
    /// plus `cpo_alpha` times the chosen completions' NLL (TRL's CPOTrainer).
    Cpo {
        beta: f64,
        loss: CpoLoss,
        label_smoothing: f64,
        cpo_alpha: f64,
    },
    /// KTO on unpaired rows (TRL's KTOTrainer; the loss in `super::kto`).
    Kto {
        beta: f64,
        loss: KtoLoss,
        desirable_weight: f64,
        undesirable_weight: f64,
    },
}

impl PreferenceObjective {
    /// The recipe's objective; `None` for SFT.
    pub fn from_recipe(train: &TrainSection, train_on_inputs: bool) -> Option<Self> {
        let (dpo, orpo, simpo, cpo, kto) = (
            &train.dpo,
            &train.orpo,
            &train.simpo,
            &train.cpo,
            &train.kto,
        );
        match train.objective {
            Objective::Sft => None,
            Objective::Dpo => Some(Self::Dpo {
                beta: dpo.beta,
                losses: DpoMix::new(&dpo.loss_type.weighted(dpo.loss_weights.as_deref())),
                label_smoothing: dpo.label_smoothing,
                discopop_tau: dpo.discopop_tau,
                divergence: (dpo.f_divergence_type, dpo.f_alpha_divergence_coef),
                ld_alpha: dpo.ld_alpha,
            }),
            Objective::Orpo => Some(Self::Orpo {
                beta: orpo.beta,
                nll_on_prompt: train_on_inputs,
            }),
            Objective::Simpo => Some(Self::Simpo {
                beta: simpo.beta,
                gamma: simpo.gamma,
                cpo_alpha: simpo.cpo_alpha,
            }),
            Objective::Cpo => Some(Self::Cpo {
                beta: cpo.beta,
                loss: cpo.loss_type,
                label_smoothing: cpo.label_smoothing,
                cpo_alpha: cpo.cpo_alpha,
            }),
            Objective::Kto => Some(Self::Kto {
                beta: kto.beta,
                loss: kto.loss_type,
                desirable_weight: kto.desirable_weight,
                undesirable_weight: kto.undesirable_weight,
            }),
        }
    }

    /// LD-DPO's weight of each completion's tokens past the pair's shorter one.
    pub fn length_weight(&self) -> Option<f64> {
        match *self {
            Self::Dpo { ld_alpha, .. } => ld_alpha,
            _ => None,
        }
    }

    pub fn needs_reference(&self) -> bool {
        matches!(self, Self::Dpo { .. } | Self::Kto { .. })
    }

    /// KTO: each row is one labelled completion, not a pair.
    pub fn is_unpaired(&self) -> bool {
        matches!(self, Self::Kto { .. })
    }

    /// The chosen completions' NLL term: whether it covers the prompt too, and its weight
    /// (`None`: no such term).
    pub fn nll(&self) -> Option<(bool, f64)> {
        match *self {
            Self::Dpo { losses, .. } => losses.weight(DpoLoss::Sft).map(|w| (false, w)),
            Self::Orpo { nll_on_prompt, .. } => Some((nll_on_prompt, 1.0)),
            Self::Simpo { cpo_alpha, .. } | Self::Cpo { cpo_alpha, .. } => {
                (cpo_alpha > 0.0).then_some((false, cpo_alpha))
            }
            Self::Kto { .. } => None,
        }
    }

    /// Whether the chosen rows' targets include the prompt (the NLL term covers it).
    pub fn prompt_in_chosen(&self) -> bool {
        self.nll().is_some_and(|(on_prompt, _)| on_prompt)
    }
}

impl std::fmt::Display for PreferenceObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dpo {
                beta,
                losses,
                label_smoothing,
                discopop_tau,
                divergence: (divergence, alpha),
                ld_alpha,
            } => {
                write!(f, "dpo ({losses} loss, beta {beta}")?;
                if let Some(a) = ld_alpha {
                    write!(f, ", LD-DPO alpha {a}")?;
                }
                match divergence {
                    FDivergence::ReverseKl => {}
                    FDivergence::AlphaDivergence => write!(f, ", {divergence} {alpha}")?,
                    _ => write!(f, ", {divergence}")?,
                }
                if losses.terms().iter().any(|(l, _)| l.uses_label_smoothing()) {
                    write!(f, ", label smoothing {label_smoothing}")?;
                }
                if losses.weight(DpoLoss::Discopop).is_some() {
                    write!(f, ", tau {discopop_tau}")?;
                }
                write!(
                    f,
                    "; reference: the frozen base, adapters swapped, no second model)"
                )
            }
            Self::Orpo {
                beta,
                nll_on_prompt,
            } => write!(
                f,
                "orpo (beta {beta}; NLL on the chosen {})",
                if *nll_on_prompt {
                    "prompt and completion"
                } else {
                    "completion"
                }
            ),
            Self::Simpo {
                beta,
                gamma,
                cpo_alpha,
            } => write!(
                f,
                "simpo (beta {beta}, gamma {gamma}, NLL weight {cpo_alpha}; no reference policy)"
            ),
            Self::Cpo {
                beta,
                loss,
                label_smoothing,
                cpo_alpha,
            } => write!(
                f,
                "cpo ({loss} loss, beta {beta}, label smoothing {label_smoothing}, NLL weight {cpo_alpha}; no reference policy)"
            ),
            Self::Kto {
                beta,
                loss,
                desirable_weight,
                undesirable_weight,
            } => write!(
                f,
                "kto ({loss} loss, beta {beta}, weights {desirable_weight} desirable / {undesirable_weight} undesirable; reference: the frozen base, adapters swapped, no second model)"
            ),
        }
    }
}

/// One pair's sequence log-probabilities: summed over each completion's tokens, the token
/// counts, and the reference policy's sums (DPO).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PairLogps {
    pub chosen: f64,
    pub rejected: f64,
    pub chosen_tokens: usize,
    pub rejected_tokens: usize,
    pub ref_chosen: f64,
    pub ref_rejected: f64,
}

impl PairLogps {
    /// The completions' token counts (at least 1), what per-token means divide by.
    fn token_counts(&self) -> (f64, f64) {
        (
            self.chosen_tokens.max(1) as f64,
            self.rejected_tokens.max(1) as f64,
        )
    }
}

/// One pair's loss term, its derivatives with respect to the summed log-probabilities, and
/// what the metrics average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairTerms {
    /// The pair's loss (ORPO: `-beta * log sigmoid(log odds)`, without the NLL).
    pub loss: f64,
    pub d_chosen: f64,
    pub d_rejected: f64,
    pub reward_chosen: f64,
    pub reward_rejected: f64,
    /// What `logps/chosen` and `logps/rejected` report: sums for DPO, per-token means for ORPO.
    pub logp_chosen: f64,
    pub logp_rejected: f64,
    /// ORPO: the log odds ratio and its log-sigmoid.
    pub log_odds: f64,
    pub log_sigmoid_odds: f64,
}

pub fn pair_terms(objective: &PreferenceObjective, p: &PairLogps) -> PairTerms {
    match *objective {
        PreferenceObjective::Dpo {
            beta,
            losses,
            label_smoothing,
            discopop_tau,
            divergence,
            ..
        } => {
            let chosen_ratio = p.chosen - p.ref_chosen;
            let rejected_ratio = p.rejected - p.ref_rejected;
            let shape = DpoShape {
                beta,
                label_smoothing,
                discopop_tau,
                divergence,
            };
            let (value, d_chosen, d_rejected) = dpo_terms(
                &losses,
                &shape,
                (chosen_ratio, rejected_ratio),
                p.token_counts(),
            );
            PairTerms {
                loss: value,
                d_chosen,
                d_rejected,
                reward_chosen: beta * chosen_ratio,
                reward_rejected: beta * rejected_ratio,
                logp_chosen: p.chosen,
                logp_rejected: p.rejected,
                log_odds: 0.0,
                log_sigmoid_odds: 0.0,
            }
        }
        PreferenceObjective::Orpo { beta, .. } => {
            let (nc, nr) = p.token_counts();
            let (ac, ar) = (p.chosen / nc, p.rejected / nr);
            let log_odds = (ac - ar) - (log1mexp(ac) - log1mexp(ar));
            let ratio = log_sigmoid(log_odds);
            // d(-beta log sigmoid(o))/do, and do/da = 1 / (1 - exp(a)) for either side.
            let d_odds = -beta * sigmoid(-log_odds);
            let d_ac = d_odds / -ac.exp_m1();
            let d_ar = -d_odds / -ar.exp_m1();
            PairTerms {
                loss: -beta * ratio,
                d_chosen: d_ac / nc,
                d_rejected: d_ar / nr,
                reward_chosen: beta * ac,
                reward_rejected: beta * ar,
                logp_chosen: ac,
                logp_rejected: ar,
                log_odds,
                log_sigmoid_odds: ratio,
            }
        }
        PreferenceObjective::Simpo { beta, gamma, .. } => {
            // Log-probabilities averaged per completion token, as TRL's CPOTrainer does.
            let (nc, nr) = p.token_counts();
            let (ac, ar) = (p.chosen / nc, p.rejected / nr);
            let z = beta * (ac - ar) - gamma;
            let dz = -sigmoid(-z);
            PairTerms {
                loss: -log_sigmoid(z),
                d_chosen: beta * dz / nc,
                d_rejected: -beta * dz / nr,
                reward_chosen: beta * ac,
                reward_rejected: beta * ar,
                logp_chosen: ac,
                logp_rejected: ar,
                log_odds: 0.0,
                log_sigmoid_odds: 0.0,
            }
        }
        // KTO's rows are unpaired; its loss is `super::kto`'s.
        PreferenceObjective::Kto { .. } => PairTerms {
            loss: 0.0,
            d_chosen: 0.0,
            d_rejected: 0.0,
            reward_chosen: 0.0,
            reward_rejected: 0.0,
            logp_chosen: 0.0,
            logp_rejected: 0.0,
            log_odds: 0.0,
            log_sigmoid_odds: 0.0,
        },
        PreferenceObjective::Cpo {
            beta,
            loss,
            label_smoothing,
            ..
        } => {
            // TRL averages per completion token for ipo only.
            let (nc, nr) = match loss {
                CpoLoss::Ipo => p.token_counts(),
                CpoLoss::Sigmoid | CpoLoss::Hinge => (1.0, 1.0),
            };
            let (ac, ar) = (p.chosen / nc, p.rejected / nr);
            let h = ac - ar;
            let (value, dh) = match loss {
                CpoLoss::Sigmoid => {
                    let (z, e) = (beta * h, label_smoothing);
                    let value = -(1.0 - e) * log_sigmoid(z) - e * log_sigmoid(-z);
                    (value, beta * (-(1.0 - e) * sigmoid(-z) + e * sigmoid(z)))
                }
                CpoLoss::Hinge => {
                    let z = beta * h;
                    ((1.0 - z).max(0.0), if z < 1.0 { -beta } else { 0.0 })
                }
                CpoLoss::Ipo => {
                    let gap = h - 1.0 / (2.0 * beta);
                    (gap * gap, 2.0 * gap)
                }
            };
            PairTerms {
                loss: value,
                d_chosen: dh / nc,
                d_rejected: -dh / nr,
                reward_chosen: beta * ac,
                reward_rejected: beta * ar,
                logp_chosen: ac,
                logp_rejected: ar,
                log_odds: 0.0,
                log_sigmoid_odds: 0.0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> PairLogps {
        PairLogps {
            chosen: -12.5,
            rejected: -15.0,
            chosen_tokens: 5,
            rejected_tokens: 7,
            ref_chosen: -13.0,
            ref_rejected: -14.25,
        }
    }

    /// Central differences of the loss against the analytic derivatives.
    fn check(obj: PreferenceObjective, p: PairLogps) {
        let t = pair_terms(&obj, &p);
        let h = 1e-6;
        let f = |dc: f64, dr: f64| {
            pair_terms(
                &obj,
                &PairLogps {
                    chosen: p.chosen + dc,
                    rejected: p.rejected + dr,
                    ..p
                },
            )
            .loss
        };
        let dc = (f(h, 0.0) - f(-h, 0.0)) / (2.0 * h);
        let dr = (f(0.0, h) - f(0.0, -h)) / (2.0 * h);
        assert!(
            (dc - t.d_chosen).abs() < 1e-7,
            "{obj:?}: {dc} vs {}",
            t.d_chosen
        );
        assert!(
            (dr - t.d_rejected).abs() < 1e-7,
            "{obj:?}: {dr} vs {}",
            t.d_rejected
        );
    }

    #[test]
    fn derivatives_match_finite_differences() {
        for loss in DpoLoss::ALL {
            for label_smoothing in [0.0, 0.2] {
                let smoothed = label_smoothing > 0.0;
                if (smoothed && !loss.uses_label_smoothing())
                    || (!smoothed && loss == DpoLoss::ExoPair)
                {
                    continue;
                }
                // Both sides of the hinge's margin; DiscoPOP's blend near its middle too.
                for (beta, tau) in [(0.3, 0.05), (3.0, 5.0)] {
                    check(
                        PreferenceObjective::Dpo {
                            beta,
                            losses: DpoMix::single(loss),
                            label_smoothing,
                            discopop_tau: tau,
                            divergence: (FDivergence::ReverseKl, 0.5),
                            ld_alpha: None,
                        },
                        pair(),
                    );
                }
            }
        }
        check(
            PreferenceObjective::Orpo {
                beta: 0.25,
                nll_on_prompt: false,
            },
            pair(),
        );
        check(
            PreferenceObjective::Simpo {
                beta: 2.0,
                gamma: 0.8,
                cpo_alpha: 0.5,
            },
            pair(),
        );
        for (loss, label_smoothing) in [
            (CpoLoss::Sigmoid, 0.0),
            (CpoLoss::Sigmoid, 0.2),
            (CpoLoss::Hinge, 0.0),
            (CpoLoss::Ipo, 0.0),
        ] {
            check(
                PreferenceObjective::Cpo {
                    beta: 0.3,
                    loss,
                    label_smoothing,
                    cpo_alpha: 1.0,
                },
                pair(),
            );
        }
        // Near-certain completions (average log-probability close to 0).
        check(
            PreferenceObjective::Orpo {
                beta: 0.25,
                nll_on_prompt: false,
            },
            PairLogps {
                chosen: -0.05,
                rejected: -3.0,
                ..pair()
            },
        );
    }

    /// The f-divergences' scores carry their slopes into every loss that takes them.
    #[test]
    fn f_divergence_derivatives_match_finite_differences() {
        for divergence in [
            (FDivergence::ForwardKl, 0.5),
            (FDivergence::JsDivergence, 0.5),
            (FDivergence::AlphaDivergence, 0.5),
            (FDivergence::AlphaDivergence, 1.7),
        ] {
            for loss in DpoLoss::ALL.into_iter().filter(|l| l.takes_f_divergence()) {
                let label_smoothing = if loss.uses_label_smoothing() {
                    0.1
                } else {
                    0.0
                };
                check(
                    PreferenceObjective::Dpo {
                        beta: 0.3,
                        losses: DpoMix::single(loss),
                        label_smoothing,
                        discopop_tau: 0.05,
                        divergence,
                        ld_alpha: None,
                    },
                    pair(),
                );
            }
        }
        // Alpha at 1 is reverse KL's limit: the plain log-ratios.
        let at = |divergence| {
            pair_terms(
                &PreferenceObjective::Dpo {
                    beta: 0.3,
                    losses: DpoMix::single(DpoLoss::Sigmoid),
                    label_smoothing: 0.0,
                    discopop_tau: 0.05,
                    divergence,
                    ld_alpha: None,
                },
                &pair(),
            )
        };
        assert_eq!(
            at((FDivergence::AlphaDivergence, 1.0)),
            at((FDivergence::ReverseKl, 0.5))
        );
    }

    /// MPO's mix: the pair's terms are the weighted sum of each loss's, and `sft` is the
    /// NLL term with its weight.
    #[test]
    fn a_mix_of_losses_is_their_weighted_sum() {
        let dpo = |losses| PreferenceObjective::Dpo {
            beta: 0.3,
            losses,
            label_smoothing: 0.0,
            discopop_tau: 0.05,
            divergence: (FDivergence::ReverseKl, 0.5),
            ld_alpha: None,
        };
        let mix = dpo(DpoMix::new(&[
            (DpoLoss::Sigmoid, 0.8),
            (DpoLoss::BcoPair, 0.2),
            (DpoLoss::Sft, 1.5),
        ]));
        let t = pair_terms(&mix, &pair());
        let s = pair_terms(&dpo(DpoMix::single(DpoLoss::Sigmoid)), &pair());
        let b = pair_terms(&dpo(DpoMix::single(DpoLoss::BcoPair)), &pair());
        let near = |x: f64, y: f64| (x - y).abs() < 1e-12;
        assert!(near(t.loss, 0.8 * s.loss + 0.2 * b.loss));
        assert!(near(t.d_chosen, 0.8 * s.d_chosen + 0.2 * b.d_chosen));
        assert!(near(t.d_rejected, 0.8 * s.d_rejected + 0.2 * b.d_rejected));
        assert_eq!(mix.nll(), Some((false, 1.5)));
        assert_eq!(dpo(DpoMix::single(DpoLoss::Ipo)).nll(), None);
        check(mix, pair());
        assert_eq!(
            mix.to_string(),
            "dpo (0.8 sigmoid + 0.2 bco_pair + 1.5 sft loss, beta 0.3, label smoothing 0; reference: the frozen base, adapters swapped, no second model)"
        );
    }

    #[test]
    fn equal_policies_give_ln2_and_no_margin() {
        let p = PairLogps {
            ref_chosen: -12.5,
            ref_rejected: -15.0,
            ..pair()
        };
        let obj = PreferenceObjective::Dpo {
            beta: 0.1,
            losses: DpoMix::single(DpoLoss::Sigmoid),
            label_smoothing: 0.0,
            discopop_tau: 0.05,
            divergence: (FDivergence::ReverseKl, 0.5),
            ld_alpha: None,
        };
        let t = pair_terms(&obj, &p);
        assert_eq!(t.loss, std::f64::consts::LN_2);
        assert_eq!(t.reward_chosen - t.reward_rejected, 0.0);
        assert!((log1mexp(-0.1) - (1.0 - (-0.1f64).exp()).ln()).abs() < 1e-15);
        assert!((log1mexp(-5.0) - (1.0 - (-5.0f64).exp()).ln()).abs() < 1e-15);
        assert!((log_sigmoid(-800.0) + 800.0).abs() < 1e-9);
    }
}
