//! Reproducible randomness: a stable 64-bit hash to derive seeds from names, and seeded normal
//! samples. Every random choice of a run (data order, adapter init, preset weights) comes from
//! these and the recipe's seed, so a run can be repeated and resumed bit for bit.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// A 64-bit FNV-1a hash: stable across platforms and releases, used to derive per-module seeds.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Standard normal by Box-Muller (two uniforms per sample; simple and reproducible).
pub fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random::<f64>();
    (-2.0f64 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
