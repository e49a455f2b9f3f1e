//! burnish: fine-tune open LLMs with LoRA on Burn.
//!
//! A run flows recipe -> model -> lora -> data -> train -> checkpoint -> merge -> hub; the
//! modules are named after those stages.

pub mod backend;
pub mod cli;
pub mod data;
pub mod error;
pub mod export;
pub mod generate;
pub mod hub;
pub mod lora;
pub mod model;
pub mod observe;
pub mod recipe;
pub mod rng;
pub mod train;
