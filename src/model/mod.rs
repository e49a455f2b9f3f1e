//! Hugging Face causal LMs as Burn modules: `config.json` parsing, the shared decoder, weight
//! loading from safetensors, and the tokenizer files.

pub mod arch;
pub mod config;
pub mod decoder;
pub mod error;
pub mod family;
pub mod inputs;
pub mod kernels;
pub mod load;
pub mod loss;
pub mod norm;
pub mod params;
pub mod preset;
pub mod quant;
pub mod recompute;
pub mod rope;
pub mod safetensors_out;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor, backend::Backend};

pub use config::ModelConfig;
pub use decoder::CausalLm;
pub use error::ModelError;
pub use inputs::HostBatch;
pub use rope::RopeFrequencies;
pub use tokenizer::TokenizerBundle;
pub use weights::WeightFiles;

/// A backend a model runs on: burnish's kernels, and a way to checkpoint decoder layers.
pub trait ModelBackend: kernels::Kernels + recompute::CheckpointLayer {}

impl<B: kernels::Kernels + recompute::CheckpointLayer> ModelBackend for B {}

/// A local Hugging Face model folder, checked to have a readable `config.json`.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub dir: PathBuf,
    pub config: ModelConfig,
}

impl ModelFolder {
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::NotAModelFolder {
                dir: dir.to_path_buf(),
                missing: "the folder itself".into(),
            });
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::NotAModelFolder {
                dir: dir.to_path_buf(),
                missing: "config.json".into(),
            });
        }
        let config = ModelConfig::from_file(&config_path)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
        })
    }

    pub fn tokenizer(&self) -> Result<TokenizerBundle, ModelError> {
        TokenizerBundle::from_dir(&self.dir)
    }

    pub fn weights(&self) -> Result<WeightFiles, ModelError> {
        WeightFiles::open(&self.dir)
    }

    /// Load the network onto `device`, frozen weights held as `dtype`.
    pub fn load<B: Backend>(
        &self,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Model<B>, ModelError> {
        let files = self.weights()?;
        files.validate(&self.config)?;
        let net = load::load_model_with::<B>(&self.config, &files, dtype, device, &|w| w)?;
        Ok(Model::new(net, self.config.clone(), dtype, device.clone()))
    }

    /// [`ModelFolder::load`] for training and inference: the decoder projections quantized by
    /// `quant` when given, else laid out for the backend's kernels.
    pub fn load_quantized<B: kernels::Kernels>(
        &self,
        dtype: DType,
        quant: Option<&quant::QuantSpec>,
        device: &B::Device,
    ) -> Result<Model<B>, ModelError> {
        if let Some(spec) = quant {
            quant::check(spec, &self.config)?;
        }
        let files = self.weights()?;
        files.validate(&self.config)?;
        let net = load_for_training::<B>(&self.config, &files, dtype, quant, device)?;
        Ok(Model::new(net, self.config.clone(), dtype, device.clone()))
    }
}

/// The network of `config` from `source`, ready for training and inference: the decoder
/// projections quantized by `quant` when given, else laid out for the backend's kernels.
pub fn load_for_training<B: kernels::Kernels>(
    config: &ModelConfig,
    source: &dyn load::TensorSource,
    dtype: DType,
    quant: Option<&quant::QuantSpec>,
    device: &B::Device,
) -> Result<CausalLm<B>, ModelError> {
    let scheme = quant.map(quant::QuantSpec::scheme);
    let finish = |w: Tensor<B, 2>| match &scheme {
        Some(scheme) => B::quantize_weight(w, scheme),
        None => B::layout_frozen_weight(w),
    };
    load::load_model_with::<B>(config, source, dtype, device, &finish)
}

/// A loaded network with what its forward pass needs besides weights.
#[derive(Debug)]
pub struct Model<B: Backend> {
    pub net: CausalLm<B>,
    pub config: ModelConfig,
    pub rope: RopeFrequencies,
    /// Dtype of the frozen weights and activations (LoRA factors are always f32).
    pub dtype: DType,
    pub device: B::Device,
}

impl<B: Backend> Model<B> {
    pub fn new(net: CausalLm<B>, config: ModelConfig, dtype: DType, device: B::Device) -> Self {
        let rope = RopeFrequencies::new(&config);
        Self {
            net,
            config,
            rope,
            dtype,
            device,
        }
    }
}

impl<B: ModelBackend> Model<B> {
    /// Logits `[batch, seq, vocab]` in f32, no dropout.
    pub fn logits(&self, batch: &HostBatch) -> Tensor<B, 3> {
        let ctx = batch.context::<B>(
            &self.rope,
            self.config.sliding_window.as_ref(),
            self.config.attention_scores(),
            self.dtype,
            &self.device,
        );
        self.net.logits(batch.ids_tensor(&self.device), &ctx)
    }

    /// Final hidden states `[batch, seq, hidden]`; `train`: the dropout seed of a training
    /// forward (`None` in inference).
    pub fn hidden_states(
        &self,
        batch: &HostBatch,
        train: Option<&kernels::DropoutSeed>,
    ) -> Tensor<B, 3> {
        let ctx = batch.context::<B>(
            &self.rope,
            self.config.sliding_window.as_ref(),
            self.config.attention_scores(),
            self.dtype,
            &self.device,
        );
        self.net
            .hidden_states(batch.ids_tensor(&self.device), &ctx, None, train)
    }
}

impl<B: burn::tensor::backend::AutodiffBackend> Model<B> {
    /// The same network on the inner backend, without autodiff (for evaluation and generation).
    pub fn valid(&self) -> Model<B::InnerBackend> {
        use burn::module::AutodiffModule;
        Model::new(
            self.net.valid(),
            self.config.clone(),
            self.dtype,
            self.device.clone(),
        )
    }
}
