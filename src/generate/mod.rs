//! Text generation with a KV cache: the prompt in one forward pass, then one token per step
//! against the cached keys and values, stopping at any of the model's end tokens.

pub mod sampler;

use std::time::Instant;

use crate::model::ModelBackend;

use crate::model::Model;
use crate::model::decoder::KvCache;
use crate::model::inputs::incremental_context;
pub use sampler::{Sampler, SamplingParams};

#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_seconds: f64,
    pub generation_seconds: f64,
}

impl GenerationStats {
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_seconds.max(1e-9)
    }
    pub fn generation_tokens_per_sec(&self) -> f64 {
        self.generated_tokens as f64 / self.generation_seconds.max(1e-9)
    }
}

/// Last-position logits (f32, host) of a forward over `ids` appended to the cache.
fn step_logits<B: ModelBackend>(model: &Model<B>, cache: &mut KvCache<B>, ids: &[u32]) -> Vec<f32> {
    let past = cache.len;
    let ctx = incremental_context::<B>(
        &model.rope,
        model.config.sliding_window.as_ref(),
        model.config.attention_scores(),
        1,
        past,
        ids.len(),
        model.dtype,
        &model.device,
    );
    let batch = crate::model::HostBatch::from_rows(&[ids.to_vec()], 0);
    let hidden = model
        .net
        .hidden_states(batch.ids_tensor(&model.device), &ctx, Some(cache), None);
    let [_, s, d] = hidden.dims();
    let last = hidden.narrow(1, s - 1, 1).reshape([1, d]);
    model
        .net
        .logits_2d(last)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// Generate up to `max_new_tokens` after `prompt`; `on_token` sees each new id as it is chosen.
pub fn generate<B: ModelBackend>(
    model: &Model<B>,
    prompt: &[u32],
    max_new_tokens: usize,
    stop_ids: &[u32],
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32),
) -> (Vec<u32>, GenerationStats) {
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    if prompt.is_empty() || max_new_tokens == 0 {
        return (Vec::new(), stats);
    }
    let capacity = prompt.len() + max_new_tokens;
    let mut cache = KvCache::new(&model.config, 1, capacity, model.dtype, &model.device);
    let t = Instant::now();
    let mut logits = step_logits(model, &mut cache, prompt);
    stats.prompt_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut out = Vec::with_capacity(max_new_tokens);
    for i in 0..max_new_tokens {
        let next = sampler.sample(&logits);
        out.push(next);
        on_token(next);
        if stop_ids.contains(&next) || i + 1 == max_new_tokens {
            break;
        }
        logits = step_logits(model, &mut cache, &[next]);
    }
    stats.generated_tokens = out.len();
    stats.generation_seconds = t.elapsed().as_secs_f64();
    (out, stats)
}

/// Logits of every position of `ids`, computed one token at a time through the cache (for
/// checking the cache against a full forward pass).
pub fn incremental_logits<B: ModelBackend>(
    model: &Model<B>,
    ids: &[u32],
    prefix: usize,
) -> Vec<Vec<f32>> {
    let mut cache = KvCache::new(&model.config, 1, ids.len(), model.dtype, &model.device);
    let mut out = vec![step_logits(model, &mut cache, &ids[..prefix.max(1)])];
    for &id in &ids[prefix.max(1)..] {
        out.push(step_logits(model, &mut cache, &[id]));
    }
    out
}
