//! The tensors a checkpoint of a given config holds, under their Hugging Face names, and the
//! linear modules LoRA can target. Used to validate checkpoints before loading anything and to
//! count parameters from `config.json` alone.

use super::config::ModelConfig;

/// The linear projections of a decoder layer, as named in HF checkpoints and PEFT configs.
pub const LINEAR_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// One expected tensor: its checkpoint name and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// A linear projection of one layer: its module name and `[out, in]` shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearShape {
    pub out_features: usize,
    pub in_features: usize,
    pub bias: bool,
}

impl ModelConfig {
    /// Where a linear module lives inside a layer (`self_attn` or `mlp`).
    pub fn linear_parent(module: &str) -> &'static str {
        match module {
            "q_proj" | "k_proj" | "v_proj" | "o_proj" => "self_attn",
            _ => "mlp",
        }
    }

    /// The `[out, in]` shape of a linear module (None for an unknown name).
    pub fn linear_shape(&self, module: &str) -> Option<LinearShape> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let (q, kv) = (self.q_dim(), self.kv_dim());
        let s = |out_features, in_features, bias| LinearShape {
            out_features,
            in_features,
            bias,
        };
        Some(match module {
            "q_proj" => s(q, h, self.qkv_bias),
            "k_proj" => s(kv, h, self.qkv_bias),
            "v_proj" => s(kv, h, self.qkv_bias),
            "o_proj" => s(h, q, self.o_bias),
            "gate_proj" => s(i, h, self.mlp_bias),
            "up_proj" => s(i, h, self.mlp_bias),
            "down_proj" => s(h, i, self.mlp_bias),
            _ => return None,
        })
    }

    /// Every tensor of the checkpoint, in the order transformers registers them.
    pub fn expected_tensors(&self) -> Vec<TensorSpec> {
        let t = |name: String, shape: Vec<usize>| TensorSpec { name, shape };
        let mut out = vec![t(
            "model.embed_tokens.weight".into(),
            vec![self.vocab_size, self.hidden_size],
        )];
        for layer in 0..self.num_layers {
            let p = format!("model.layers.{layer}");
            out.push(t(
                format!("{p}.input_layernorm.weight"),
                vec![self.hidden_size],
            ));
            for module in LINEAR_MODULES {
                let Some(shape) = self.linear_shape(module) else {
                    continue;
                };
                let base = format!("{p}.{}.{module}", Self::linear_parent(module));
                out.push(t(
                    format!("{base}.weight"),
                    vec![shape.out_features, shape.in_features],
                ));
                if shape.bias {
                    out.push(t(format!("{base}.bias"), vec![shape.out_features]));
                }
                if self.qk_norm && module == "k_proj" {
                    out.push(t(
                        format!("{p}.self_attn.q_norm.weight"),
                        vec![self.head_dim],
                    ));
                    out.push(t(
                        format!("{p}.self_attn.k_norm.weight"),
                        vec![self.head_dim],
                    ));
                }
            }
            out.push(t(
                format!("{p}.post_attention_layernorm.weight"),
                vec![self.hidden_size],
            ));
            if self.sandwich_norms {
                for norm in ["pre_feedforward_layernorm", "post_feedforward_layernorm"] {
                    out.push(t(format!("{p}.{norm}.weight"), vec![self.hidden_size]));
                }
            }
        }
        out.push(t("model.norm.weight".into(), vec![self.hidden_size]));
        if !self.tie_word_embeddings {
            out.push(t(
                "lm_head.weight".into(),
                vec![self.vocab_size, self.hidden_size],
            ));
        }
        out
    }

    /// Exact parameter count, as `sum(p.numel() for p in model.parameters())` reports it
    /// (a tied `lm_head` is not counted twice).
    pub fn parameter_count(&self) -> u64 {
        self.expected_tensors()
            .iter()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum()
    }
}
