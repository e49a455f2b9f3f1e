//! The `--quant-bits`/`--quant-block-size` flags of the commands that load a base model (a
//! QLoRA adapter runs on the quantized base it was trained with).

use crate::error::user;
use crate::model::quant::QuantSpec;

#[derive(clap::Args, Debug, Clone)]
pub struct QuantArgs {
    /// Quantize the base's projections to this many bits (4 or 8), as a QLoRA adapter was
    /// trained.
    #[arg(long)]
    pub quant_bits: Option<u8>,
    /// Block size of that quantization.
    #[arg(long, default_value_t = 64)]
    pub quant_block_size: usize,
}

impl QuantArgs {
    /// The quantization asked for, checked; `None` without `--quant-bits`.
    pub fn spec(&self) -> anyhow::Result<Option<QuantSpec>> {
        let Some(bits) = self.quant_bits else {
            return Ok(None);
        };
        let spec = QuantSpec {
            bits,
            block_size: self.quant_block_size,
        };
        if let Some(p) = spec.problem() {
            return Err(user(format!("--quant-bits/--quant-block-size: {p}")));
        }
        Ok(Some(spec))
    }
}
