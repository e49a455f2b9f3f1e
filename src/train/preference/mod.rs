//! Preference tuning: DPO (Rafailov et al. 2023, with its IPO and conservative variants) and
//! ORPO (Hong et al. 2024) on `preference` pairs. With LoRA, DPO's reference policy is the
//! base with the adapter switched off (or another adapter on the same frozen weights), so no
//! second copy of the model is loaded. Losses, metrics and their names follow TRL.

pub mod batch;
pub mod eval;
pub mod objective;
pub mod step;

pub use eval::{PreferenceEval, evaluate_pairs};
pub use objective::{PreferenceMetrics, PreferenceObjective, PreferenceSums};
pub use step::{PairWindow, load_reference, reference_model, take_preference_step};
