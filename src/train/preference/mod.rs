//! Preference tuning on `preference` pairs: DPO (Rafailov et al. 2023) with TRL's loss
//! variants, their weighted sums and f-divergences, ORPO (Hong et al. 2024), SimPO (Meng et al.
//! 2024), CPO (Xu et al. 2024) and, on unpaired rows, KTO (Ethayarajh et al. 2024). With LoRA, DPO's reference policy is the base with the
//! adapter switched off (or another adapter on the same frozen weights), so no second copy of
//! the model is loaded. Losses, metrics and their names follow TRL.

pub mod batch;
pub mod dpo;
pub mod eval;
pub mod kto;
mod math;
pub mod metrics;
pub mod objective;
pub mod step;

pub use eval::{EvalBatches, PreferenceEval, evaluate_pairs};
pub use objective::{PreferenceMetrics, PreferenceObjective, PreferenceSums};
pub use step::{PairWindow, load_reference, reference_model, take_preference_step};
