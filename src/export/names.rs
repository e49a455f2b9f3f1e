//! llama.cpp's names for Hugging Face tensors (gguf-py `tensor_mapping.py`, as
//! convert_hf_to_gguf.py applies them), the GGUF architecture of each family, and the Q/K row
//! permutation llama.cpp's `llama` architecture expects.
//!
//! Hugging Face stores q/k projections for the `rotate_half` RoPE (each head's first half of
//! dimensions paired with its second half); llama.cpp's `llama` graph rotates adjacent pairs, so
//! the converter interleaves the halves of every head (`LlamaModel.permute`). Qwen2 and Qwen3 use
//! the NeoX rotation in llama.cpp and are written as they are.

use crate::model::arch::Architecture;

/// `general.architecture`: Mistral is converted to llama.cpp's `llama` as well.
pub fn gguf_arch(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Qwen2 => "qwen2",
        Architecture::Llama | Architecture::Mistral => "llama",
        Architecture::Qwen3 => "qwen3",
        Architecture::Gemma3 => "gemma3",
        Architecture::Gemma2 => "gemma2",
    }
}

/// Whether q/k rows are permuted for this architecture.
pub fn permutes_qk(arch: Architecture) -> bool {
    gguf_arch(arch) == "llama"
}

/// The GGUF name of a Hugging Face tensor, or None for a tensor llama.cpp does not take.
/// `arch` matters for one name: Gemma's `post_attention_layernorm` normalises the attention
/// output (llama.cpp's `post_attention_norm`), where Llama's is the pre-MLP `ffn_norm`.
pub fn gguf_name(hf: &str, arch: Architecture) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let short = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if arch.is_gemma() => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

/// The layer index of a `blk.N.` name.
pub fn layer_of(gguf: &str) -> Option<usize> {
    gguf.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// `LlamaModel.permute`: rows of each of `heads` heads reordered from [first half, second half]
/// to interleaved pairs. `values` holds `rows x cols` (a bias is `rows x 1`).
pub fn permute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for t in 0..2 {
                let dst = h * head_dim + 2 * i + t;
                let src = h * head_dim + t * half + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(
            gguf_name("model.layers.12.self_attn.k_proj.bias", Architecture::Qwen2).as_deref(),
            Some("blk.12.attn_k.bias")
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.down_proj.weight", Architecture::Qwen2).as_deref(),
            Some("blk.0.ffn_down.weight")
        );
        assert_eq!(
            gguf_name("model.rotary_emb.inv_freq", Architecture::Qwen2),
            None
        );
        assert_eq!(layer_of("blk.7.attn_v.weight"), Some(7));
    }

    #[test]
    fn permutation_interleaves_halves_per_head() {
        // 2 heads of dim 4, one column: rows [a0 a1 a2 a3 | b0 b1 b2 b3].
        let v = [0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0];
        assert_eq!(
            permute_rows(&v, 8, 1, 2),
            vec![0.0, 2.0, 1.0, 3.0, 10.0, 12.0, 11.0, 13.0]
        );
    }
}
