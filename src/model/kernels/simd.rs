//! Runtime selection of vector width for the element-wise host kernels. The crate is built for
//! baseline x86-64 (SSE2, 4 floats a vector) so the binary runs anywhere; [`multiversion!`]
//! compiles a function body twice more, for AVX-512 (16 floats) and AVX2 + FMA (8 floats),
//! and picks the widest the CPU has on each call (a cached feature check). The bodies are
//! plain loops over slices that LLVM vectorises; `fastmath::exp` and friends are
//! `#[inline(always)]` so they are compiled at the caller's width.

/// Whether the CPU has the AVX-512 subset the fast path is compiled for.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("fma")
}

/// Whether the CPU has AVX2 with FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `fn name(args) -> ret { body }` compiled for AVX-512, AVX2 + FMA and the baseline, the
/// widest the CPU supports chosen at run time. Argument patterns must be plain identifiers.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
            fn wide($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn medium($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            {
                if $crate::model::kernels::simd::has_avx512() {
                    // SAFETY: the CPU has every feature `wide` is compiled for (checked above).
                    return unsafe { wide($($arg),*) };
                }
                if $crate::model::kernels::simd::has_avx2() {
                    // SAFETY: as above, for `medium`.
                    return unsafe { medium($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    multiversion! {
        fn dot(a: &[f32], b: &[f32]) -> f32 {
            a.iter().zip(b).map(|(x, y)| x * y).sum()
        }
    }

    #[test]
    fn dispatched_version_matches_scalar() {
        let a: Vec<f32> = (0..1000).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..1000).map(|i| (i % 5) as f32 * 0.5).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot(&a, &b), want);
    }
}
