//! Training: the loop, optimizer, schedules, checkpoints and resume, evaluation, and the
//! preference objectives (DPO, ORPO, SimPO, CPO), the best checkpoint and early stopping.

pub mod bench;
pub mod best;
pub mod checkpoint;
pub mod distributed;
pub mod evaluate;
pub mod memory;
pub mod optimizer;
pub mod preference;
pub mod publish;
pub mod run;
pub mod schedule;
pub mod setup;
pub mod signals;
pub mod state;
pub mod step;
pub mod sync;
pub mod window;
