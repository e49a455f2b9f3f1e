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

/// SplitMix64's finaliser: a bijective mix of 64 bits, each output bit depending on every input
/// bit. Counter-based randomness hashes an element's coordinates with it, so any element's
/// draw can be regenerated alone, in any order, on any thread.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A key for a random stream derived from `parent` and a label (`(layer, projection)`, ...).
pub fn subkey(parent: u64, label: u64) -> u64 {
    mix64(parent ^ mix64(label))
}
