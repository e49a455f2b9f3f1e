//! The decoder shared by Qwen2, Llama, Mistral, Qwen3, Gemma 2 and Gemma 3: token embedding (scaled, in
//! Gemma), pre-norm layers of grouped-query self-attention and a gated MLP (Gemma adds a norm
//! after each), final RMSNorm, tied or separate `lm_head`.
//! Module and field names follow the HF tensor names (`self_attn.q_proj`, `input_layernorm`).
//! This file does no I/O.

use std::borrow::Cow;

use burn::module::{Module, Param};
use burn::tensor::{DType, Int, Tensor, backend::Backend};

use super::ModelBackend;
use super::config::ModelConfig;
use super::kernels::{Activation, AttentionMask, Dropout, DropoutSeed, Kernels, LogitChunks};
use super::norm::RmsNorm;
use super::params::LINEAR_MODULES;
use super::recompute::Saved;
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
    #[module(skip)]
    pub act: Activation,
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    /// The pre-MLP norm (Llama, Qwen) or, with the two norms below (Gemma), the norm of the
    /// attention output before the residual sum.
    pub post_attention_layernorm: RmsNorm<B>,
    pub pre_feedforward_layernorm: Option<RmsNorm<B>>,
    pub post_feedforward_layernorm: Option<RmsNorm<B>>,
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
    /// What looked-up embeddings are multiplied by (Gemma: `sqrt(hidden_size)`).
    #[module(skip)]
    pub embed_scale: Option<f64>,
    /// In training, keep only each layer's input and recompute the rest in the backward pass
    /// (`train.gradient_checkpointing`).
    pub gradient_checkpointing: bool,
    /// NEFTune's noise on the embeddings in training (`train.neftune_noise_alpha`).
    #[module(skip)]
    pub neftune_alpha: Option<f64>,
    /// Gemma 2: logits become `cap * tanh(logit / cap)`.
    #[module(skip)]
    pub final_logit_softcapping: Option<f64>,
}

/// Per-forward inputs shared by every layer: rotary tables and which keys each query sees.
#[derive(Clone)]
pub struct AttentionContext<B: Backend> {
    /// `[batch, seq, 1, head_dim]`, in the activation dtype.
    pub cos: Tensor<B, 4>,
    pub sin: Tensor<B, 4>,
    /// The keys of full-attention layers.
    pub mask: AttentionMask,
    /// What sliding-window layers attend with instead (`None`: the same as the others).
    pub sliding: Option<SlidingContext<B>>,
}

/// The keys and rotary tables of sliding-window layers, where they differ from the others'.
#[derive(Clone)]
pub struct SlidingContext<B: Backend> {
    /// Which layers slide.
    pub layers: Vec<bool>,
    /// Their keys (`None`: the window hides no key in this batch).
    pub mask: Option<AttentionMask>,
    /// Their `cos` and `sin` (`None`: the same as the other layers'; Gemma 3 has its own).
    pub rope: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> AttentionContext<B> {
    /// The context layer `layer` attends with: its window's keys and tables where it slides.
    pub fn for_layer(&self, layer: usize) -> Cow<'_, Self> {
        match &self.sliding {
            Some(sl) if sl.layers.get(layer) == Some(&true) => {
                let (cos, sin) = sl
                    .rope
                    .clone()
                    .unwrap_or_else(|| (self.cos.clone(), self.sin.clone()));
                Cow::Owned(Self {
                    cos,
                    sin,
                    mask: sl.mask.clone().unwrap_or_else(|| self.mask.clone()),
                    sliding: None,
                })
            }
            _ => Cow::Borrowed(self),
        }
    }
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

impl<B: Backend> DecoderLayer<B> {
    /// The seven projections in `LINEAR_MODULES` order (`q, k, v, o, gate, up, down`): the
    /// order adapters, dropout streams and checkpointed gradients are indexed by.
    pub fn projections(&self) -> [&LoraLinear<B>; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }

    pub fn projections_mut(&mut self) -> [&mut LoraLinear<B>; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }
}

/// Dropout streams of one layer in a training forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDropout {
    pub seed: DropoutSeed,
    pub layer: usize,
}

impl<B: Kernels> DecoderLayer<B> {
    /// `cache`: keys and values of earlier positions (generation); `dropout`: the layer's
    /// dropout streams in training (`None` in inference).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &AttentionContext<B>,
        cache: Option<(&mut LayerCache<B>, usize)>,
        dropout: Option<&LayerDropout>,
    ) -> Tensor<B, 3> {
        self.forward_saving(x, ctx, cache, dropout, None)
    }

    /// The layer's one forward pass. With `saved` (gradient checkpointing's recomputation, on
    /// a backend without autodiff) every intermediate the hand-written backward in
    /// `recompute.rs` needs is kept there, and the fused ops' saved-for-backward values (`x A^T`,
    /// the attention log-sum-exp) are returned by their `_forward` variants.
    pub(crate) fn forward_saving(
        &self,
        x: Tensor<B, 3>,
        ctx: &AttentionContext<B>,
        cache: Option<(&mut LayerCache<B>, usize)>,
        dropout: Option<&LayerDropout>,
        mut saved: Option<&mut Saved<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let rows = batch * seq;
        let at = &self.self_attn;
        let (nh, nkv, hd) = (at.num_heads, at.num_kv_heads, at.head_dim);
        let drops: [Option<Dropout>; 7] = std::array::from_fn(|i| {
            let (p, d) = (self.projections()[i], dropout?);
            let rate = p.lora.as_ref().map_or(0.0, |l| l.dropout);
            (rate > 0.0).then(|| d.seed.at(d.layer, i, rate, seq))
        });
        let project = |i: usize, input: Tensor<B, 2>, saved: &mut Option<&mut Saved<B>>| {
            let p = self.projections()[i];
            match saved {
                Some(sv) => {
                    let (y, parts) = p.forward_parts(input, drops[i].as_ref());
                    sv.adapters[i] = parts;
                    y
                }
                None => p.forward(input, drops[i].as_ref()),
            }
        };
        let x2 = x.reshape([rows, hidden]);
        let ln1 = &self.input_layernorm;
        let n1 = B::rms_norm(x2.clone(), ln1.weight.val(), ln1.eps);
        let q = project(0, n1.clone(), &mut saved);
        let k = project(1, n1.clone(), &mut saved);
        let v = project(2, n1.clone(), &mut saved);
        let norm_heads = |norm: &Option<RmsNorm<B>>, t: Tensor<B, 2>, heads: usize| match norm {
            Some(n) => {
                let pre = t.reshape([rows * heads, hd]);
                (Some(pre.clone()), B::rms_norm(pre, n.weight.val(), n.eps))
            }
            None => (None, t),
        };
        let (q_pre, q) = norm_heads(&at.q_norm, q, nh);
        let (k_pre, k) = norm_heads(&at.k_norm, k, nkv);
        let qr = B::rope(q.reshape([batch, seq, nh, hd]), &ctx.cos, &ctx.sin);
        let mut kr = B::rope(k.reshape([batch, seq, nkv, hd]), &ctx.cos, &ctx.sin);
        let mut v = v.reshape([batch, seq, nkv, hd]);
        if let Some((cache, start)) = cache {
            let end = start + seq;
            cache.k = cache
                .k
                .clone()
                .slice_assign([0..batch, start..end, 0..nkv, 0..hd], kr);
            cache.v = cache
                .v
                .clone()
                .slice_assign([0..batch, start..end, 0..nkv, 0..hd], v);
            kr = cache.k.clone().narrow(1, 0, end);
            v = cache.v.clone().narrow(1, 0, end);
        }
        let att = match saved.as_deref_mut() {
            Some(sv) => {
                let (out, lse) = B::attention_forward(qr.clone(), kr.clone(), v.clone(), &ctx.mask);
                sv.attention = Some((qr, kr, v, out.clone(), lse));
                out
            }
            None => <B as Kernels>::attention(qr, kr, v, &ctx.mask),
        };
        let att = att.reshape([rows, nh * hd]);
        let o = project(3, att.clone(), &mut saved);
        let ln2 = &self.post_attention_layernorm;
        // Gemma normalises the attention output and the MLP output before each residual sum,
        // and the MLP input with a norm of its own.
        let (h, n2) = match &self.pre_feedforward_layernorm {
            Some(pre) => {
                let h = x2.clone() + B::rms_norm(o.clone(), ln2.weight.val(), ln2.eps);
                let n2 = B::rms_norm(h.clone(), pre.weight.val(), pre.eps);
                (h, n2)
            }
            None => {
                let h = x2.clone() + o.clone();
                let n2 = B::rms_norm(h.clone(), ln2.weight.val(), ln2.eps);
                (h, n2)
            }
        };
        let gate = project(4, n2.clone(), &mut saved);
        let up = project(5, n2.clone(), &mut saved);
        let act = B::glu(gate.clone(), up.clone(), self.mlp.act);
        let down = project(6, act.clone(), &mut saved);
        let mlp_out = match &self.post_feedforward_layernorm {
            Some(post) => {
                let normed = B::rms_norm(down.clone(), post.weight.val(), post.eps);
                if let Some(sv) = saved.as_deref_mut() {
                    sv.down = Some(down);
                }
                normed
            }
            None => down,
        };
        let y = (h.clone() + mlp_out).reshape([batch, seq, hidden]);
        if let Some(sv) = saved {
            if self.pre_feedforward_layernorm.is_some() {
                sv.o = Some(o);
            }
            sv.x = Some(x2);
            sv.n1 = Some(n1);
            sv.q_pre = q_pre;
            sv.k_pre = k_pre;
            sv.att = Some(att);
            sv.h = Some(h);
            sv.n2 = Some(n2);
            sv.mlp = Some((gate, up, act));
            sv.dropouts = drops;
        }
        y
    }
}

impl<B: ModelBackend> CausalLm<B> {
    /// Final hidden states `[batch, seq, hidden]` (after the last norm).
    /// `train`: the dropout seed of a training forward (`None` in inference).
    pub fn hidden_states(
        &self,
        input_ids: Tensor<B, 2, Int>,
        ctx: &AttentionContext<B>,
        mut cache: Option<&mut KvCache<B>>,
        train: Option<&DropoutSeed>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let embed = self.embed_tokens.val();
        let hidden = embed.dims()[1];
        let mut x = embed
            .select(0, input_ids.reshape([batch * seq]))
            .reshape([batch, seq, hidden]);
        if let Some(scale) = self.embed_scale {
            // transformers casts the scale to the weights' dtype first (sqrt(640) is 25.25 in
            // bf16, not 25.298).
            x = x.mul_scalar(round_to(scale, self.embed_tokens.val().dtype()));
        }
        if let (Some(seed), Some(alpha)) = (train, self.neftune_alpha) {
            // After the scale, as TRL's hook on the embedding module's output.
            let noise = super::kernels::dropout::embedding_noise(seed, alpha, batch, seq, hidden);
            let noise = Tensor::<B, 3>::from_data(
                burn::tensor::TensorData::new(noise, [batch, seq, hidden]),
                (&x.device(), DType::F32),
            );
            x = x.clone() + noise.cast(x.dtype());
        }
        let start = cache.as_ref().map_or(0, |c| c.len);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (&mut c.layers[i], start));
            let dropout = train.map(|&seed| LayerDropout { seed, layer: i });
            let ctx = ctx.for_layer(i);
            let ctx = ctx.as_ref();
            x = match layer_cache {
                None if train.is_some() && self.gradient_checkpointing => {
                    B::checkpointed_layer(layer, x, ctx, dropout.as_ref())
                }
                layer_cache => layer.forward(x, ctx, layer_cache, dropout.as_ref()),
            };
        }
        if let Some(c) = cache {
            c.len = start + seq;
        }
        self.norm.forward(x)
    }

    /// Full logits `[batch, seq, vocab]` in f32 (for tests and generation; training uses the
    /// chunked loss instead, which never materialises them).
    pub fn logits(&self, input_ids: Tensor<B, 2, Int>, ctx: &AttentionContext<B>) -> Tensor<B, 3> {
        let h = self.hidden_states(input_ids, ctx, None, None);
        let [b, s, d] = h.dims();
        let logits = self.logits_2d(h.reshape([b * s, d]));
        let vocab = logits.dims()[1];
        logits.reshape([b, s, vocab])
    }
}

impl<B: Backend> CausalLm<B> {
    /// The output projection `[vocab, hidden]` (the embedding when tied).
    pub fn output_weight(&self) -> Tensor<B, 2> {
        match &self.lm_head {
            Some(w) => w.val(),
            None => self.embed_tokens.val(),
        }
    }

    /// Logits `[rows, vocab]` for hidden states `[rows, hidden]`, in f32 (soft-capped where
    /// the model caps them).
    pub fn logits_2d(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let logits = hidden.matmul(self.output_weight().transpose());
        let logits = if logits.dtype() == DType::F32 {
            logits
        } else {
            logits.cast(DType::F32)
        };
        match self.final_logit_softcapping {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// How the fused losses form this model's logits, `rows` rows at a time.
    pub fn logit_chunks(&self, rows: usize) -> LogitChunks {
        LogitChunks {
            rows,
            softcap: self.final_logit_softcapping.map(|c| c as f32),
        }
    }

    /// The projection `module` (`q_proj` ... `down_proj`) of layer `layer`.
    pub fn projection(&self, layer: usize, module: &str) -> Option<&LoraLinear<B>> {
        let i = LINEAR_MODULES.iter().position(|m| *m == module)?;
        Some(self.layers.get(layer)?.projections()[i])
    }

    pub fn projection_mut(&mut self, layer: usize, module: &str) -> Option<&mut LoraLinear<B>> {
        let i = LINEAR_MODULES.iter().position(|m| *m == module)?;
        let [q, k, v, o, g, u, d] = self.layers.get_mut(layer)?.projections_mut();
        [q, k, v, o, g, u, d].into_iter().nth(i)
    }
}

/// `value` rounded to `dtype`'s precision, as a PyTorch scalar tensor cast to it.
fn round_to(value: f64, dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => half::bf16::from_f64(value).to_f64(),
        DType::F16 => half::f16::from_f64(value).to_f64(),
        _ => value as f32 as f64,
    }
}
