//! Compiling a kernel for the vector extensions of the CPU at hand (chosen at run time).

/// Defines `$name` as a call of `$body` (an `#[inline(always)]` function), compiled three
/// times: for AVX-512F, for AVX2 and FMA, each taken where the CPU has them (checked at run
/// time), and for the build's baseline (SSE2 on x86-64). Loops of plain vector arithmetic in
/// `$body` then run 16 f32 lanes wide with AVX-512, 8 with AVX2, 4 without. Without fused
/// multiply-adds written out (Rust does not contract `a * b + c`), all versions round
/// identically.
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident = $body:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?) => {
        $(#[$doc])*
        #[allow(unsafe_code)]
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub(crate) use multiversion;
