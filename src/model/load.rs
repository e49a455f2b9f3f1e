//! Building a [`CausalLm`] from a model folder's config and safetensors weights.

use burn::module::Param;
use burn::tensor::{DType, Tensor, backend::Backend};

use super::config::ModelConfig;
use super::decoder::{Attention, CausalLm, DecoderLayer, Mlp};
use super::error::ModelError;
use super::norm::RmsNorm;
use super::params::LINEAR_MODULES;
use super::weights::WeightFiles;
use crate::lora::layer::LoraLinear;

/// Load every weight of `config` from `files` as `dtype` (norm weights too, as HF keeps them in
/// the model dtype). The files are validated first, so a bad checkpoint fails before any
/// tensor is allocated.
pub fn load_model<B: Backend>(
    config: &ModelConfig,
    files: &WeightFiles,
    dtype: DType,
    device: &B::Device,
) -> Result<CausalLm<B>, ModelError> {
    load_model_with(config, files, dtype, device, &|w| w)
}

/// [`load_model`] passing each decoder projection's weight through `finish` as soon as it is
/// read (QLoRA quantizes there, so the full-precision model is never resident).
pub fn load_model_with<B: Backend>(
    config: &ModelConfig,
    files: &WeightFiles,
    dtype: DType,
    device: &B::Device,
    finish: &dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>,
) -> Result<CausalLm<B>, ModelError> {
    files.validate(config)?;
    let frozen2 = |name: &str| -> Result<Param<Tensor<B, 2>>, ModelError> {
        Ok(Param::from_tensor(files.load::<B, 2>(name, dtype, device)?).set_require_grad(false))
    };
    let norm = |name: &str| -> Result<RmsNorm<B>, ModelError> {
        Ok(RmsNorm::new(
            files.load::<B, 1>(name, dtype, device)?,
            config.rms_norm_eps,
        ))
    };
    let linear = |prefix: &str, module: &str| -> Result<LoraLinear<B>, ModelError> {
        let base = format!("{prefix}.{}.{module}", ModelConfig::linear_parent(module));
        let has_bias = config.linear_shape(module).is_some_and(|s| s.bias);
        let weight = finish(files.load::<B, 2>(&format!("{base}.weight"), dtype, device)?);
        let bias = if has_bias {
            Some(files.load::<B, 1>(&format!("{base}.bias"), dtype, device)?)
        } else {
            None
        };
        Ok(LoraLinear::frozen(weight, bias))
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
                Some(norm(&format!("{p}.self_attn.q_norm.weight"))?),
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
        };
        layers.push(DecoderLayer {
            input_layernorm: norm(&format!("{p}.input_layernorm.weight"))?,
            self_attn,
            post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm.weight"))?,
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
    })
}
