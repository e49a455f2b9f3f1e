//! Block-wise quantization of the frozen base's linear weights (QLoRA, Dettmers et al. 2023),
//! with Burn 0.21's own quantized tensors: symmetric int4 (`Q4S`, values -7..7) or int8 (`Q8S`,
//! -127..127), one f32 scale `absmax / 7` (or `/ 127`) per block of `block_size` consecutive
//! weights of a row. This is not the paper's NF4: Burn's `QuantScheme` has no lookup-table value
//! type, so NF4 cannot be expressed; `scripts/quant_accuracy.py` measures the difference.
//!
//! Only the decoder layers' projections are quantized; embeddings, norms and `lm_head` keep the
//! model dtype and the LoRA factors stay f32. A quantized weight is dequantized one layer at a
//! time, just before its matmul (and again in the backward pass), so only the quantized copy
//! stays resident.

use burn::tensor::quantization::{BlockSize, QuantLevel, QuantScheme, QuantStore, QuantValue};
use burn::tensor::{DType, FloatDType, Tensor, TensorPrimitive, backend::Backend};
use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use super::error::ModelError;
use super::params::LINEAR_MODULES;

/// Block sizes Burn's `BlockSize` can hold (it stores each dimension in a `u8`).
pub const BLOCK_SIZES: [usize; 4] = [16, 32, 64, 128];

/// `model.quantize` of a recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuantSpec {
    /// 4 or 8.
    pub bits: u8,
    /// Weights per scale; must divide every quantized projection's input size.
    pub block_size: usize,
}

fn default_block_size() -> usize {
    64
}

impl Default for QuantSpec {
    /// QLoRA's usual setting: 4 bits, blocks of 64.
    fn default() -> Self {
        Self {
            bits: 4,
            block_size: default_block_size(),
        }
    }
}

impl QuantSpec {
    /// Why this spec cannot be used, if it cannot.
    pub fn problem(&self) -> Option<String> {
        self.bits_problem()
            .map(|p| format!("bits {p}"))
            .or_else(|| self.block_size_problem().map(|p| format!("block_size {p}")))
    }

    /// What is wrong with `bits`, if anything.
    pub fn bits_problem(&self) -> Option<String> {
        (!matches!(self.bits, 4 | 8)).then(|| format!("must be 4 or 8, got {}", self.bits))
    }

    /// What is wrong with `block_size`, if anything.
    pub fn block_size_problem(&self) -> Option<String> {
        (!BLOCK_SIZES.contains(&self.block_size))
            .then(|| format!("must be one of {BLOCK_SIZES:?}, got {}", self.block_size))
    }

    pub fn value(&self) -> QuantValue {
        if self.bits == 4 {
            QuantValue::Q4S
        } else {
            QuantValue::Q8S
        }
    }

    /// The Burn scheme. The block is `[1, block_size]`: along a row of `[out, in]`, as the
    /// row-major flattening bitsandbytes blocks over.
    pub fn scheme(&self) -> QuantScheme {
        // `problem()` bounds block_size to <= 128.
        let block = u8::try_from(self.block_size).unwrap_or(64);
        QuantScheme::default()
            .with_value(self.value())
            .with_level(QuantLevel::Block(BlockSize::new([block])))
            .with_store(QuantStore::PackedU32(0))
    }

    /// Resident bytes of `n` quantized weights. Flex stores each value in an `i8`; CUDA packs
    /// values into `u32` words. Plus one f32 scale per block.
    pub fn bytes(&self, n: u64, on_gpu: bool) -> u64 {
        let values = if on_gpu {
            n * u64::from(self.bits) / 8
        } else {
            n
        };
        values + n / self.block_size as u64 * 4
    }
}

/// Checks `spec` against a model: every projection's input size must be a multiple of the block.
pub fn check(spec: &QuantSpec, config: &ModelConfig) -> Result<(), ModelError> {
    if let Some(p) = spec.problem() {
        return Err(ModelError::Quantize(p));
    }
    for module in LINEAR_MODULES {
        let Some(shape) = config.linear_shape(module) else {
            continue;
        };
        if shape.in_features % spec.block_size != 0 {
            let fits: Vec<String> = BLOCK_SIZES
                .iter()
                .filter(|&&b| {
                    LINEAR_MODULES.iter().all(|m| {
                        config
                            .linear_shape(m)
                            .is_none_or(|s| s.in_features % b == 0)
                    })
                })
                .map(|b| b.to_string())
                .collect();
            return Err(ModelError::QuantBlock {
                module: module.into(),
                in_features: shape.in_features,
                block_size: spec.block_size,
                choices: if fits.is_empty() {
                    "none: this model cannot be quantized block-wise".into()
                } else {
                    fits.join(", ")
                },
            });
        }
    }
    Ok(())
}

/// Whether `w` holds quantized values.
pub fn is_quantized<B: Backend, const D: usize>(w: &Tensor<B, D>) -> bool {
    matches!(w.dtype(), DType::QFloat(_))
}

/// `w` as a float tensor of `dtype` (a no-op for one that is not quantized). Only for backends
/// whose quantized ops are implemented (not `Autodiff`: see `kernels::autodiff`).
pub fn dense<B: Backend, const D: usize>(w: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    match w.into_primitive() {
        TensorPrimitive::QFloat(q) => Tensor::from_primitive(TensorPrimitive::Float(
            B::dequantize(q, FloatDType::from(dtype)),
        )),
        p => Tensor::from_primitive(p),
    }
}
