//! Which ggml type each tensor gets for a `--type`: llama.cpp's rules, ported from
//! `llama_tensor_get_type` and `tensor_type_fallback` in src/llama-quant.cpp (no importance
//! matrix, no user overrides), plus convert_hf_to_gguf.py's rule that 1-D tensors and norms stay
//! f32. For the dense families burnish supports the rules reduce to:
//!
//! - 1-D tensors (norms, biases, `rope_freqs`) and `*_norm.weight`: f32.
//! - f16 / bf16 / q8_0: every other tensor in that type.
//! - `output.weight`, and `token_embd.weight` when the embeddings are tied (no `output.weight`):
//!   q6_K for the quantized types other than q8_0, q8_0 when the row length is not a multiple
//!   of the type's block.
//! - q4_k_m: `attn_v` and `ffn_down` get q6_K in the layers where `use_more_bits` holds (the
//!   first and last eighth of the layers and every third layer between), the rest q4_K.
//! - A k-quant whose row length is not a multiple of 256 falls back to q5_0 (q4_K) or q8_0
//!   (q6_K); a 32-block type whose row length is not a multiple of 32 falls back to f16.
//!
//! Not ported: llama.cpp's exceptions for Falcon, mixture-of-experts and 70B Llama models (which
//! bump `attn_v` to q5_K), none of which burnish can load.

use super::types::{ExportType, GgmlType};

/// llama.cpp's `use_more_bits`.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2
}

/// What the rule needs to know about one tensor.
pub struct TensorKind<'a> {
    /// GGUF name (`blk.3.attn_v.weight`).
    pub name: &'a str,
    pub n_dims: usize,
    /// Row length (`ne[0]`).
    pub cols: usize,
    pub layer: Option<usize>,
}

/// The ggml type of a tensor in a `ftype` export of a model with `n_layers` layers;
/// `tied`: the file has no `output.weight`.
pub fn tensor_type(ftype: ExportType, t: &TensorKind<'_>, n_layers: usize, tied: bool) -> GgmlType {
    if t.n_dims < 2 || !t.name.ends_with("weight") || t.name.ends_with("_norm.weight") {
        return GgmlType::F32;
    }
    let default = ftype.default_type();
    if !default.is_quantized() {
        return default;
    }
    let mut ty = default;
    let is_output = t.name == "output.weight" || (tied && t.name == "token_embd.weight");
    if is_output {
        if !t.cols.is_multiple_of(ty.block().0) {
            ty = GgmlType::Q8_0;
        } else if ty != GgmlType::Q8_0 {
            ty = GgmlType::Q6K;
        }
    } else if ftype == ExportType::Q4KM
        && (t.name.contains("attn_v.weight") || t.name.contains("ffn_down"))
        && t.layer.is_some_and(|l| use_more_bits(l, n_layers))
    {
        ty = GgmlType::Q6K;
    }
    fallback(ty, t.cols)
}

/// `tensor_type_fallback`: a type whose block does not divide the row length.
fn fallback(ty: GgmlType, cols: usize) -> GgmlType {
    if cols.is_multiple_of(ty.block().0) {
        return ty;
    }
    let smaller = match ty {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q6K => GgmlType::Q8_0,
        other => other,
    };
    if cols.is_multiple_of(smaller.block().0) {
        smaller
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(ftype: ExportType, name: &str, cols: usize, tied: bool) -> GgmlType {
        let t = TensorKind {
            name,
            n_dims: 2,
            cols,
            layer: super::super::names::layer_of(name),
        };
        tensor_type(ftype, &t, 8, tied)
    }

    #[test]
    fn q4_k_m_follows_llama_cpp() {
        use ExportType::Q4KM;
        // 8 layers: use_more_bits for layers 0, 3, 6, 7.
        let v: Vec<GgmlType> = (0..8)
            .map(|l| ty(Q4KM, &format!("blk.{l}.attn_v.weight"), 512, false))
            .collect();
        let (k4, k6) = (GgmlType::Q4K, GgmlType::Q6K);
        assert_eq!(v, [k6, k4, k4, k6, k4, k4, k6, k6]);
        assert_eq!(ty(Q4KM, "blk.3.ffn_down.weight", 1024, false), k6);
        assert_eq!(ty(Q4KM, "blk.3.ffn_up.weight", 512, false), k4);
        assert_eq!(ty(Q4KM, "blk.0.attn_q.weight", 512, false), k4);
        assert_eq!(ty(Q4KM, "output.weight", 512, false), k6);
        assert_eq!(ty(Q4KM, "token_embd.weight", 512, false), k4);
        assert_eq!(ty(Q4KM, "token_embd.weight", 512, true), k6);
        // Qwen2.5-0.5B: hidden 896 is no multiple of 256.
        assert_eq!(ty(Q4KM, "blk.1.attn_q.weight", 896, false), GgmlType::Q5_0);
        assert_eq!(ty(Q4KM, "blk.0.attn_v.weight", 896, false), GgmlType::Q8_0);
        assert_eq!(ty(Q4KM, "token_embd.weight", 896, true), GgmlType::Q8_0);
        assert_eq!(ty(Q4KM, "blk.1.ffn_down.weight", 40, false), GgmlType::F16);
    }

    #[test]
    fn other_types() {
        assert_eq!(
            ty(ExportType::Q4_0, "output.weight", 512, false),
            GgmlType::Q6K
        );
        assert_eq!(
            ty(ExportType::Q4_0, "output.weight", 96, false),
            GgmlType::Q8_0
        );
        assert_eq!(
            ty(ExportType::Q4_0, "token_embd.weight", 96, false),
            GgmlType::Q4_0
        );
        assert_eq!(
            ty(ExportType::Q8_0, "output.weight", 512, false),
            GgmlType::Q8_0
        );
        assert_eq!(
            ty(ExportType::Q6K, "blk.0.attn_q.weight", 96, false),
            GgmlType::Q8_0
        );
        assert_eq!(
            ty(ExportType::F16, "blk.0.attn_q.weight", 96, false),
            GgmlType::F16
        );
        let norm = TensorKind {
            name: "blk.0.attn_norm.weight",
            n_dims: 1,
            cols: 64,
            layer: Some(0),
        };
        assert_eq!(
            tensor_type(ExportType::Q4KM, &norm, 8, false),
            GgmlType::F32
        );
    }
}
