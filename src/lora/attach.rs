//! Putting adapters on a model and taking them off again: fresh seeded init (PEFT's default
//! kaiming-uniform or gaussian `A`, zero `B`), init from adapter files, and copying the factors
//! back to the host for saving.

use burn::module::Param;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::layer::LoraAdapter;
use super::peft::{AdapterFiles, HostFactors};
use super::settings::{InitKind, TargetModule};
use crate::model::CausalLm;
use crate::rng::{fnv1a, standard_normal};

/// Fresh factors for one module, reproducible from `seed` and the module's name alone (so the
/// order in which modules are initialised never matters).
pub fn init_factors(target: &TargetModule, init: InitKind, seed: u64) -> HostFactors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(target.full_name().as_bytes()));
    let n = target.r * target.in_features;
    let a: Vec<f32> = match init {
        InitKind::Default => {
            // kaiming_uniform_(a=sqrt(5)) on [r, in]: gain sqrt(2/(1+5)), bound gain*sqrt(3/in)
            // = 1/sqrt(in).
            let bound = 1.0 / (target.in_features as f64).sqrt();
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        }
        InitKind::Gaussian => {
            // PEFT: normal_(std = 1/r).
            let std = 1.0 / target.r as f64;
            (0..n)
                .map(|_| (standard_normal(&mut rng) * std) as f32)
                .collect()
        }
    };
    HostFactors {
        r: target.r,
        in_features: target.in_features,
        out_features: target.out_features,
        a,
        b: vec![0.0; target.out_features * target.r],
        scaling: target.scaling,
    }
}

/// Attach `factors` to the projection of `target`. `trainable` marks A and B as requiring grad.
pub fn attach<B: Backend>(
    net: &mut CausalLm<B>,
    target: &TargetModule,
    factors: &HostFactors,
    dropout: f64,
    trainable: bool,
    device: &B::Device,
) {
    let to_param = |values: &[f32], shape: [usize; 2]| {
        let t = Tensor::<B, 2>::from_data(
            TensorData::new(values.to_vec(), shape),
            (device, DType::F32),
        );
        Param::from_tensor(t).set_require_grad(trainable)
    };
    if let Some(proj) = net.projection_mut(target.layer, target.module) {
        proj.lora = Some(LoraAdapter {
            a: to_param(&factors.a, [factors.r, factors.in_features]),
            b: to_param(&factors.b, [factors.out_features, factors.r]),
            scaling: factors.scaling,
            dropout,
        });
    }
}

/// Attach every module of an adapter read from disk.
pub fn attach_files<B: Backend>(
    net: &mut CausalLm<B>,
    adapter: &AdapterFiles,
    targets: &[TargetModule],
    dropout: f64,
    trainable: bool,
    device: &B::Device,
) {
    for t in targets {
        if let Some(f) = adapter.factors.get(&(t.layer, t.module)) {
            attach(net, t, f, dropout, trainable, device);
        }
    }
}

/// Copy the factors of `targets` back to the host, in model order.
pub fn extract<B: Backend>(
    net: &CausalLm<B>,
    targets: &[TargetModule],
) -> Vec<(TargetModule, Vec<f32>, Vec<f32>)> {
    targets
        .iter()
        .filter_map(|t| {
            let lora = net.projection(t.layer, t.module)?.lora.as_ref()?;
            let a = lora
                .a
                .val()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .ok()?;
            let b = lora
                .b
                .val()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .ok()?;
            Some((t.clone(), a, b))
        })
        .collect()
}

/// The factor tensors of `targets` in a fixed order, `A` then `B` of each: what the optimizer
/// steps and what its state is keyed by.
pub fn factor_tensors<B: Backend>(
    net: &CausalLm<B>,
    targets: &[TargetModule],
) -> Vec<Tensor<B, 2>> {
    let mut out = Vec::with_capacity(targets.len() * 2);
    for t in targets {
        if let Some(l) = net
            .projection(t.layer, t.module)
            .and_then(|p| p.lora.as_ref())
        {
            out.push(l.a.val());
            out.push(l.b.val());
        }
    }
    out
}

/// The PEFT names of [`factor_tensors`], in the same order.
pub fn factor_names(targets: &[TargetModule]) -> Vec<String> {
    targets
        .iter()
        .flat_map(|t| [true, false].map(|is_a| super::peft::peft_key(t.layer, t.module, is_a)))
        .collect()
}

/// Put updated factor values (in [`factor_tensors`] order) back as trainable parameters,
/// keeping their parameter ids.
pub fn set_factor_tensors<B: AutodiffBackend>(
    net: &mut CausalLm<B>,
    targets: &[TargetModule],
    values: Vec<Tensor<B::InnerBackend, 2>>,
) {
    let mut it = values.into_iter();
    for t in targets {
        if let Some(l) = net
            .projection_mut(t.layer, t.module)
            .and_then(|p| p.lora.as_mut())
            && let (Some(a), Some(b)) = (it.next(), it.next())
        {
            l.a = Param::initialized(l.a.id, Tensor::from_inner(a).require_grad());
            l.b = Param::initialized(l.b.id, Tensor::from_inner(b).require_grad());
        }
    }
}
