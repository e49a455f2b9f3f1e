//! Putting adapters on a model and taking them off again: fresh seeded init (PEFT's default
//! kaiming-uniform or gaussian `A`, zero `B`), init from adapter files, and copying the factors
//! back to the host for saving.

use burn::module::Param;
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::layer::LoraAdapter;
use super::peft::{AdapterFiles, HostFactors};
use super::settings::{InitKind, TargetModule};
use crate::model::CausalLm;

/// A 64-bit FNV-1a hash: stable across platforms and releases, used to derive per-module seeds.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

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

/// Standard normal by Box-Muller (two uniforms per sample; simple and reproducible).
pub fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random::<f64>();
    (-2.0f64 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
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
