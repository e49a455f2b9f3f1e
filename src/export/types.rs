//! ggml tensor types and llama.cpp file types (`burnish export --type`), with the ids GGUF
//! stores for them and their block layouts (ggml.h `ggml_type`, llama.h `llama_ftype`).

use std::fmt;

/// A tensor storage type of ggml, as GGUF records it per tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q5_0,
    Q8_0,
    Q4K,
    Q6K,
}

impl GgmlType {
    /// `enum ggml_type` value.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q5_0 => 6,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q6K => (256, 210),
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block().0 > 1
    }

    /// Bytes of a row of `n` values (`n` a multiple of the block size).
    pub fn row_bytes(self, n: usize) -> usize {
        let (values, bytes) = self.block();
        n / values * bytes
    }

    /// ggml's name (`ggml_type_name`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::BF16 => "bf16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q5_0 => "q5_0",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q4K => "q4_K",
            GgmlType::Q6K => "q6_K",
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `--type` asks for: a llama.cpp file type (`llama_ftype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportType {
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4KM,
    Q6K,
}

pub const EXPORT_TYPES: &[&str] = &["f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q6_k"];

impl std::str::FromStr for ExportType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(ExportType::F16),
            "bf16" => Ok(ExportType::Bf16),
            "q8_0" => Ok(ExportType::Q8_0),
            "q4_0" => Ok(ExportType::Q4_0),
            "q4_k_m" => Ok(ExportType::Q4KM),
            "q6_k" => Ok(ExportType::Q6K),
            other => Err(format!(
                "unknown GGUF type '{other}' (expected one of {})",
                EXPORT_TYPES.join(", ")
            )),
        }
    }
}

impl ExportType {
    /// `llama_ftype`, stored as `general.file_type`.
    pub fn file_type(self) -> u32 {
        match self {
            ExportType::F16 => 1,
            ExportType::Q4_0 => 2,
            ExportType::Q8_0 => 7,
            ExportType::Q4KM => 15,
            ExportType::Q6K => 18,
            ExportType::Bf16 => 32,
        }
    }

    /// The type most weight matrices get (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            ExportType::F16 => GgmlType::F16,
            ExportType::Bf16 => GgmlType::BF16,
            ExportType::Q8_0 => GgmlType::Q8_0,
            ExportType::Q4_0 => GgmlType::Q4_0,
            ExportType::Q4KM => GgmlType::Q4K,
            ExportType::Q6K => GgmlType::Q6K,
        }
    }

    /// The name as it appears in file names (`Qwen2.5-0.5B-Q4_K_M.gguf`).
    pub fn label(self) -> &'static str {
        match self {
            ExportType::F16 => "F16",
            ExportType::Bf16 => "BF16",
            ExportType::Q8_0 => "Q8_0",
            ExportType::Q4_0 => "Q4_0",
            ExportType::Q4KM => "Q4_K_M",
            ExportType::Q6K => "Q6_K",
        }
    }

    /// The `--type` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportType::F16 => "f16",
            ExportType::Bf16 => "bf16",
            ExportType::Q8_0 => "q8_0",
            ExportType::Q4_0 => "q4_0",
            ExportType::Q4KM => "q4_k_m",
            ExportType::Q6K => "q6_k",
        }
    }
}

impl fmt::Display for ExportType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
