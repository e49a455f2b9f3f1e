//! Building a [`CausalLm`] from a config and a source of named tensors: a model folder's
//! safetensors weights, or seeded random values of the same names and shapes (benchmarks).

use burn::module::Param;
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::config::ModelConfig;
use super::decoder::{Attention, CausalLm, DecoderLayer, Mlp};
use super::error::ModelError;
use super::norm::RmsNorm;
use super::params::LINEAR_MODULES;
use super::weights::WeightFiles;
use crate::lora::layer::LoraLinear;
use crate::rng::{fnv1a, standard_normal};

/// Where the loader gets each tensor of `config.expected_tensors()` from.
pub trait TensorSource {
    /// Host data of tensor `name`, which has `shape`, converted to `dtype`.
    fn data(&self, name: &str, shape: &[usize], dtype: DType) -> Result<TensorData, ModelError>;
}

impl TensorSource for WeightFiles {
    fn data(&self, name: &str, _shape: &[usize], dtype: DType) -> Result<TensorData, ModelError> {
        self.load_data(name, dtype)
    }
}

/// Seeded random weights of a model shape: norms 1, biases 0, every other tensor N(0, `std`),
/// each a pure function of the seed and its name (generated in parallel chunks).
pub struct RandomWeights {
    pub seed: u64,
    pub std: f64,
}

impl TensorSource for RandomWeights {
    fn data(&self, name: &str, shape: &[usize], dtype: DType) -> Result<TensorData, ModelError> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            const CHUNK: usize = 1 << 16;
            let base = self.seed ^ fnv1a(name.as_bytes());
            let mut v = vec![0f32; n];
            v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
                let mut rng = ChaCha8Rng::seed_from_u64(base ^ (c as u64).wrapping_mul(0x9e37));
                for x in out {
                    *x = (standard_normal(&mut rng) * self.std) as f32;
                }
            });
            v
        };
        Ok(TensorData::new(values, shape.to_vec()).convert_dtype(dtype))
    }
}

/// Load every weight of `config` from `source` as `dtype` (norm weights too, as HF keeps them
/// in the model dtype), each decoder projection's weight passed through `finish` as soon as it
/// is read (QLoRA quantizes there, so the full-precision model is never resident).
pub fn load_model_with<B: Backend>(
    config: &ModelConfig,
    source: &dyn TensorSource,
    dtype: DType,
    device: &B::Device,
    finish: &dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>,
) -> Result<CausalLm<B>, ModelError> {
    let shapes: std::collections::HashMap<String, Vec<usize>> = config
        .expected_tensors()
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect();
    let load = |name: &str| -> Result<TensorData, ModelError> {
        let shape = shapes
            .get(name)
            .ok_or_else(|| ModelError::Backend(format!("no expected tensor {name}")))?;
        source.data(name, shape, dtype)
    };
    let t2 = |name: &str| -> Result<Tensor<B, 2>, ModelError> {
        Ok(Tensor::from_data(load(name)?, (device, dtype)))
    };
    let t1 = |name: &str| -> Result<Tensor<B, 1>, ModelError> {
        Ok(Tensor::from_data(load(name)?, (device, dtype)))
    };
    let frozen2 = |name: &str| -> Result<Param<Tensor<B, 2>>, ModelError> {
        Ok(Param::from_tensor(t2(name)?).set_require_grad(false))
    };
    // Gemma's norms scale by `1 + w`: the offset is added here, once, in f32 as transformers
    // adds it. `factor` folds a constant into a norm that only feeds a linear map.
    let norm_scaled = |name: &str, factor: f64| -> Result<RmsNorm<B>, ModelError> {
        if config.norm_weight_offset == 0.0 && factor == 1.0 {
            return Ok(RmsNorm::new(t1(name)?, config.rms_norm_eps));
        }
        let data = load(name)?.convert_dtype(DType::F32);
        let shape = data.shape.clone();
        let values: Vec<f32> = data
            .to_vec()
            .map_err(|e| ModelError::Backend(format!("{name}: {e:?}")))?;
        let values: Vec<f32> = values
            .iter()
            .map(|&w| ((w as f64 + config.norm_weight_offset) * factor) as f32)
            .collect();
        // Kept in f32 whatever the model dtype: Gemma multiplies the normalised f32 values by
        // `1 + w` in f32 and casts after (`rms_norm` follows a weight's dtype), and `1 + w`
        // rounded to bf16 would lose most of `w`.
        let data = TensorData::new(values, shape);
        Ok(RmsNorm::new(
            Tensor::from_data(data, (device, DType::F32)),
            config.rms_norm_eps,
        ))
    };
    let norm = |name: &str| norm_scaled(name, 1.0);
    // Scores are `q.k * attention_scale`; the kernels scale by `head_dim^-1/2`, so a different
    // scale (Gemma's `query_pre_attn_scalar`) is folded into the query norm where there is one
    // (Gemma 3), which feeds RoPE (a rotation) and the scores only. Without one (Gemma 2) the
    // kernels apply it (`ModelConfig::attention_scores`).
    let query_factor = match config.query_pre_attn_scalar {
        Some(q) if config.qk_norm => (config.head_dim as f64 / q).sqrt(),
        _ => 1.0,
    };
    let linear = |prefix: &str, module: &str| -> Result<LoraLinear<B>, ModelError> {
        let base = format!("{prefix}.{}.{module}", ModelConfig::linear_parent(module));
        let has_bias = config.linear_shape(module).is_some_and(|s| s.bias);
        let weight = finish(t2(&format!("{base}.weight"))?);
        let bias = if has_bias {
            Some(t1(&format!("{base}.bias"))?)
        } else {
            None
        };
        Ok(LoraLinear::frozen(weight, bias))
    };
    let sandwich = |name: &str| -> Result<Option<RmsNorm<B>>, ModelError> {
        config.sandwich_norms.then(|| norm(name)).transpose()
    };
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        let mut proj = Vec::with_capacity(LINEAR_MODULES.len());
        for module in LINEAR_MODULES {
            proj.push(linear(&p, module)?);
        }
        let mut proj = proj.into_iter();
        let mut next = || {
            proj.next()
                .ok_or_else(|| ModelError::Backend("projection list".into()))
        };
        let (q_norm, k_norm) = if config.qk_norm {
            (
                Some(norm_scaled(
                    &format!("{p}.self_attn.q_norm.weight"),
                    query_factor,
                )?),
                Some(norm(&format!("{p}.self_attn.k_norm.weight"))?),
            )
        } else {
            (None, None)
        };
        let self_attn = Attention {
            q_proj: next()?,
            k_proj: next()?,
            v_proj: next()?,
            o_proj: next()?,
            q_norm,
            k_norm,
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
        };
        let mlp = Mlp {
            gate_proj: next()?,
            up_proj: next()?,
            down_proj: next()?,
            act: config.activation,
        };
        layers.push(DecoderLayer {
            input_layernorm: norm(&format!("{p}.input_layernorm.weight"))?,
            self_attn,
            post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm.weight"))?,
            pre_feedforward_layernorm: sandwich(&format!("{p}.pre_feedforward_layernorm.weight"))?,
            post_feedforward_layernorm: sandwich(&format!(
                "{p}.post_feedforward_layernorm.weight"
            ))?,
            mlp,
        });
    }
    Ok(CausalLm {
        embed_tokens: frozen2("model.embed_tokens.weight")?,
        layers,
        norm: norm("model.norm.weight")?,
        lm_head: if config.tie_word_embeddings {
            None
        } else {
            Some(frozen2("lm_head.weight")?)
        },
        gradient_checkpointing: false,
        neftune_alpha: None,
        embed_scale: config.embed_scale,
        final_logit_softcapping: config.final_logit_softcapping,
    })
}
