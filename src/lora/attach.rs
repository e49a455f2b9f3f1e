//! Putting adapters on a model and taking them off again: fresh seeded init (PEFT's default
//! kaiming-uniform or gaussian `A`, zero `B`, DoRA's magnitude at the adapted weight's row
//! norms), init from adapter files, and copying the factors back to the host for saving.

use burn::module::Param;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::dora::row_norms;
use super::layer::LoraAdapter;
use super::peft::{AdapterFiles, HostFactors};
use super::settings::{InitKind, TargetModule};
use crate::model::CausalLm;
use crate::model::kernels::Kernels;
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
        // Filled when attached: it needs the base weight.
        magnitude: None,
    }
}

/// Attach `factors` to the projection of `target`. `trainable` marks A and B (and DoRA's
/// magnitude) as requiring grad. A DoRA target without a magnitude gets PEFT's initial one, the
/// row norms of `W + s B A` (with B = 0, of the base weight), so it starts at the base model; a
/// frozen DoRA adapter gets its row norms computed once, here.
pub fn attach<B: Kernels>(
    net: &mut CausalLm<B>,
    target: &TargetModule,
    factors: &HostFactors,
    dropout: f64,
    trainable: bool,
    device: &B::Device,
) {
    let tensor = |values: &[f32], shape: [usize; 2]| {
        Tensor::<B, 2>::from_data(
            TensorData::new(values.to_vec(), shape),
            (device, DType::F32),
        )
    };
    let to_param = |t: Tensor<B, 2>| Param::from_tensor(t).set_require_grad(trainable);
    if let Some(proj) = net.projection_mut(target.layer, target.module) {
        let a = tensor(&factors.a, [factors.r, factors.in_features]);
        let b = tensor(&factors.b, [factors.out_features, factors.r]);
        let out = factors.out_features;
        let w = proj.weight.val();
        let w_sq = target.dora.then(|| B::weight_row_sq_norms(w.clone()));
        // Only DoRA targets carry one (the optimizer's tensor list follows `target.dora`).
        let magnitude = match (&factors.magnitude, &w_sq) {
            (Some(m), Some(_)) => Some(tensor(m, [1, out])),
            (None, Some(sq)) => Some(row_norms(
                w.clone(),
                Some(sq.clone()),
                a.clone(),
                b.clone(),
                factors.scaling,
            )),
            (_, None) => None,
        };
        let frozen_inverse_norm = match &w_sq {
            Some(sq) if !trainable => {
                let n = row_norms(w, Some(sq.clone()), a.clone(), b.clone(), factors.scaling);
                let inv = n.recip();
                Some(Param::from_tensor(inv).set_require_grad(false))
            }
            _ => None,
        };
        proj.lora = Some(LoraAdapter {
            a: to_param(a),
            b: to_param(b),
            magnitude: magnitude.map(to_param),
            weight_sq_norms: w_sq.map(|t| Param::from_tensor(t).set_require_grad(false)),
            frozen_inverse_norm,
            scaling: factors.scaling,
            dropout,
        });
    }
}

/// Attach every module of an adapter read from disk.
pub fn attach_files<B: Kernels>(
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
) -> Vec<(TargetModule, HostFactors)> {
    let host = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().ok();
    targets
        .iter()
        .filter_map(|t| {
            let lora = net.projection(t.layer, t.module)?.lora.as_ref()?;
            let magnitude = match &lora.magnitude {
                Some(m) => Some(host(m.val())?),
                None => None,
            };
            let f = HostFactors {
                r: t.r,
                in_features: t.in_features,
                out_features: t.out_features,
                a: host(lora.a.val())?,
                b: host(lora.b.val())?,
                scaling: lora.scaling,
                magnitude,
            };
            Some((t.clone(), f))
        })
        .collect()
}

/// The trained tensors of `targets` in a fixed order, `A`, `B` (and DoRA's magnitude, as
/// `[1, out]`) of each: what the optimizer steps and what its state is keyed by.
pub fn factor_tensors<B: Backend>(
    net: &CausalLm<B>,
    targets: &[TargetModule],
) -> Vec<Tensor<B, 2>> {
    let mut out = Vec::with_capacity(targets.len() * 3);
    for t in targets {
        if let Some(l) = net
            .projection(t.layer, t.module)
            .and_then(|p| p.lora.as_ref())
        {
            out.push(l.a.val());
            out.push(l.b.val());
            if let Some(m) = &l.magnitude {
                out.push(m.val());
            }
        }
    }
    out
}

/// What [`factor_tensors`] holds for one target: `(PEFT name, shape, is a B-like tensor)`;
/// LoRA+ gives the B factors, and PEFT's 1-D magnitudes with them, the higher learning rate.
fn trained_tensors(t: &TargetModule) -> Vec<(String, [usize; 2], bool)> {
    let mut v = vec![
        (
            super::peft::peft_key(t.layer, t.module, true),
            [t.r, t.in_features],
            false,
        ),
        (
            super::peft::peft_key(t.layer, t.module, false),
            [t.out_features, t.r],
            true,
        ),
    ];
    if t.dora {
        v.push((
            super::peft::magnitude_key(t.layer, t.module),
            [1, t.out_features],
            true,
        ));
    }
    v
}

/// The PEFT names of [`factor_tensors`], in the same order.
pub fn factor_names(targets: &[TargetModule]) -> Vec<String> {
    targets
        .iter()
        .flat_map(trained_tensors)
        .map(|(name, _, _)| name)
        .collect()
}

/// The shapes of [`factor_tensors`], in the same order.
pub fn factor_shapes(targets: &[TargetModule]) -> Vec<[usize; 2]> {
    targets
        .iter()
        .flat_map(trained_tensors)
        .map(|(_, shape, _)| shape)
        .collect()
}

/// LoRA+'s learning-rate factor of each of [`factor_tensors`]: `ratio` for B and magnitudes
/// (PEFT's `create_loraplus_optimizer` puts 1-D parameters in B's group), 1 for A.
pub fn loraplus_scales(targets: &[TargetModule], ratio: f64) -> Vec<f64> {
    targets
        .iter()
        .flat_map(trained_tensors)
        .map(|(_, _, b_like)| if b_like { ratio } else { 1.0 })
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
    let param = |id, t| Param::initialized(id, Tensor::from_inner(t).require_grad());
    for t in targets {
        if let Some(l) = net
            .projection_mut(t.layer, t.module)
            .and_then(|p| p.lora.as_mut())
            && let (Some(a), Some(b)) = (it.next(), it.next())
        {
            l.a = param(l.a.id, a);
            l.b = param(l.b.id, b);
            if let Some(m) = l.magnitude.as_mut()
                && let Some(v) = it.next()
            {
                *m = param(m.id, v);
            }
        }
    }
}
