//! The decoder shared by Qwen2, Llama, Mistral and Qwen3: token embedding, pre-norm layers of
//! grouped-query self-attention and a SwiGLU MLP, final RMSNorm, tied or separate `lm_head`.
//! Module and field names follow the HF tensor names (`self_attn.q_proj`, `input_layernorm`).
//! This file does no I/O.

use burn::module::{Module, Param};
use burn::tensor::{Bool, DType, Int, Tensor, backend::Backend};

use super::config::ModelConfig;
use super::kernels::Kernels;
use super::norm::RmsNorm;
use crate::lora::layer::LoraLinear;

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: LoraLinear<B>,
    pub k_proj: LoraLinear<B>,
    pub v_proj: LoraLinear<B>,
    pub o_proj: LoraLinear<B>,
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: LoraLinear<B>,
    pub up_proj: LoraLinear<B>,
    pub down_proj: LoraLinear<B>,
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

#[derive(Module, Debug)]
pub struct CausalLm<B: Backend> {
    /// `[vocab, hidden]`.
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// `[vocab, hidden]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    /// In training, keep only each layer's input and recompute the rest in the backward pass
    /// (`train.gradient_checkpointing`).
    pub gradient_checkpointing: bool,
}

/// Per-forward inputs shared by every layer: rotary tables and the attention mask.
pub struct AttentionContext<B: Backend> {
    /// `[batch, seq, 1, head_dim]`, in the activation dtype.
    pub cos: Tensor<B, 4>,
    pub sin: Tensor<B, 4>,
    /// `[batch, 1, seq, keys]`, `true` where a query may NOT attend to a key.
    pub mask: Tensor<B, 4, Bool>,
}

/// Keys and values of earlier positions, preallocated to the maximum length.
pub struct LayerCache<B: Backend> {
    /// `[batch, capacity, kv_heads, head_dim]`.
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
}

/// A KV cache for incremental decoding: one preallocated buffer per layer.
pub struct KvCache<B: Backend> {
    pub layers: Vec<LayerCache<B>>,
    /// Number of positions already stored.
    pub len: usize,
    pub capacity: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(
        config: &ModelConfig,
        batch: usize,
        capacity: usize,
        dtype: DType,
        device: &B::Device,
    ) -> Self {
        let shape = [batch, capacity, config.num_kv_heads, config.head_dim];
        let layers = (0..config.num_layers)
            .map(|_| LayerCache {
                k: Tensor::zeros(shape, (device, dtype)),
                v: Tensor::zeros(shape, (device, dtype)),
            })
            .collect();
        Self {
            layers,
            len: 0,
            capacity,
        }
    }
}

impl<B: Kernels> Attention<B> {
    /// Heads stay in the `[batch, seq, heads, head_dim]` layout the projections produce, so
    /// nothing is permuted or copied on the way in or out.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &AttentionContext<B>,
        cache: Option<(&mut LayerCache<B>, usize)>,
        train: bool,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let mut q = self
            .q_proj
            .forward(x.clone(), train)
            .reshape([batch, seq, nh, hd]);
        let mut k = self
            .k_proj
            .forward(x.clone(), train)
            .reshape([batch, seq, nkv, hd]);
        let mut v = self.v_proj.forward(x, train).reshape([batch, seq, nkv, hd]);
        if let Some(norm) = &self.q_norm {
            q = norm.forward(q);
        }
        if let Some(norm) = &self.k_norm {
            k = norm.forward(k);
        }
        q = B::rope(q, &ctx.cos, &ctx.sin);
        k = B::rope(k, &ctx.cos, &ctx.sin);
        if let Some((cache, start)) = cache {
            let end = start + seq;
            cache.k = cache
                .k
                .clone()
                .slice_assign([0..batch, start..end, 0..nkv, 0..hd], k);
            cache.v = cache
                .v
                .clone()
                .slice_assign([0..batch, start..end, 0..nkv, 0..hd], v);
            k = cache.k.clone().narrow(1, 0, end);
            v = cache.v.clone().narrow(1, 0, end);
        }
        let out = <B as Kernels>::attention(q, k, v, &ctx.mask);
        self.o_proj
            .forward(out.reshape([batch, seq, nh * hd]), train)
    }
}

impl<B: Kernels> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>, train: bool) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let gate = self.gate_proj.forward(x.clone(), train);
        let up = self.up_proj.forward(x, train);
        let i = gate.dims()[2];
        let act = B::swiglu(gate.reshape([b * s, i]), up.reshape([b * s, i]));
        self.down_proj.forward(act.reshape([b, s, i]), train)
    }
}

impl<B: Kernels> DecoderLayer<B> {
    /// `cache`: keys and values of earlier positions (generation); `train` enables dropout.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &AttentionContext<B>,
        cache: Option<(&mut LayerCache<B>, usize)>,
        train: bool,
    ) -> Tensor<B, 3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), ctx, cache, train);
        h.clone()
            + self
                .mlp
                .forward(self.post_attention_layernorm.forward(h), train)
    }
}

impl<B: Kernels> CausalLm<B> {
    /// Final hidden states `[batch, seq, hidden]` (after the last norm).
    pub fn hidden_states(
        &self,
        input_ids: Tensor<B, 2, Int>,
        ctx: &AttentionContext<B>,
        mut cache: Option<&mut KvCache<B>>,
        train: bool,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let embed = self.embed_tokens.val();
        let hidden = embed.dims()[1];
        let mut x = embed
            .select(0, input_ids.reshape([batch * seq]))
            .reshape([batch, seq, hidden]);
        let start = cache.as_ref().map_or(0, |c| c.len);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (&mut c.layers[i], start));
            x = match layer_cache {
                None if train && self.gradient_checkpointing => {
                    B::checkpointed_layer(layer, x, ctx)
                }
                layer_cache => layer.forward(x, ctx, layer_cache, train),
            };
        }
        if let Some(c) = cache {
            c.len = start + seq;
        }
        self.norm.forward(x)
    }

    /// The output projection `[vocab, hidden]` (the embedding when tied).
    pub fn output_weight(&self) -> Tensor<B, 2> {
        match &self.lm_head {
            Some(w) => w.val(),
            None => self.embed_tokens.val(),
        }
    }

    /// Logits `[rows, vocab]` for hidden states `[rows, hidden]`, in f32.
    pub fn logits_2d(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let logits = hidden.matmul(self.output_weight().transpose());
        if logits.dtype() == DType::F32 {
            logits
        } else {
            logits.cast(DType::F32)
        }
    }

    /// Full logits `[batch, seq, vocab]` in f32 (for tests and generation; training uses the
    /// chunked loss instead, which never materialises them).
    pub fn logits(&self, input_ids: Tensor<B, 2, Int>, ctx: &AttentionContext<B>) -> Tensor<B, 3> {
        let h = self.hidden_states(input_ids, ctx, None, false);
        let [b, s, d] = h.dims();
        let logits = self.logits_2d(h.reshape([b * s, d]));
        let vocab = logits.dims()[1];
        logits.reshape([b, s, vocab])
    }
}

impl<B: Backend> CausalLm<B> {
    /// The projection `module` (`q_proj` ... `down_proj`) of layer `layer`.
    pub fn projection(&self, layer: usize, module: &str) -> Option<&LoraLinear<B>> {
        let l = self.layers.get(layer)?;
        Some(match module {
            "q_proj" => &l.self_attn.q_proj,
            "k_proj" => &l.self_attn.k_proj,
            "v_proj" => &l.self_attn.v_proj,
            "o_proj" => &l.self_attn.o_proj,
            "gate_proj" => &l.mlp.gate_proj,
            "up_proj" => &l.mlp.up_proj,
            "down_proj" => &l.mlp.down_proj,
            _ => return None,
        })
    }

    pub fn projection_mut(&mut self, layer: usize, module: &str) -> Option<&mut LoraLinear<B>> {
        let l = self.layers.get_mut(layer)?;
        Some(match module {
            "q_proj" => &mut l.self_attn.q_proj,
            "k_proj" => &mut l.self_attn.k_proj,
            "v_proj" => &mut l.self_attn.v_proj,
            "o_proj" => &mut l.self_attn.o_proj,
            "gate_proj" => &mut l.mlp.gate_proj,
            "up_proj" => &mut l.mlp.up_proj,
            "down_proj" => &mut l.mlp.down_proj,
            _ => return None,
        })
    }
}
