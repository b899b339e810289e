//! Runtime CPU feature dispatch and branch-free math that LLVM vectorizes.
//!
//! Kernels are written once as `#[inline(always)]` functions generic over `const FMA: bool`, over
//! fixed-width lane arrays; each has an entry point compiled with `avx2,fma` enabled, chosen at run
//! time. (Rust never fuses `a * b + c` on its own, and `mul_add` without hardware FMA is a slow libm
//! call, hence the const parameter.) Builds stay portable: no `target-cpu=native`.

use std::sync::OnceLock;

/// Lanes processed together: one AVX2 register of f32.
pub const LANES: usize = 8;
pub type Lanes = [f32; LANES];

/// Whether the AVX2 + FMA kernels can run on this CPU.
pub fn has_avx2_fma() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `a * b + c`, fused when the kernel was compiled for FMA.
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `exp(x)` to ~2 ulp, branch-free (range reduction by ln 2, degree-6 polynomial); 0 below -87.3.
#[inline(always)]
pub fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let xc = x.clamp(-87.3, 88.7);
    let k = madd::<FMA>(xc, LOG2E, 0.5).floor();
    let r = madd::<FMA>(k, -LN2_LO, madd::<FMA>(k, -LN2_HI, xc));
    // Taylor coefficients 1/i!, evaluated by Horner; |r| <= ln2/2 keeps the error below 2e-7.
    let mut p = 1.0 / 720.0;
    p = madd::<FMA>(p, r, 1.0 / 120.0);
    p = madd::<FMA>(p, r, 1.0 / 24.0);
    p = madd::<FMA>(p, r, 1.0 / 6.0);
    p = madd::<FMA>(p, r, 0.5);
    p = madd::<FMA>(p, r, 1.0);
    p = madd::<FMA>(p, r, 1.0);
    let scale = f32::from_bits(((k as i32 + 127) << 23) as u32);
    let v = p * scale;
    if x < -87.3 {
        0.0
    } else {
        v
    }
}

/// Natural log for x > 0 (normal numbers), branch-free: x = m·2^e with m in [√½, √2), then a
/// polynomial in (m - 1) (Cephes `logf`).
#[inline(always)]
pub fn ln<const FMA: bool>(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // in [0.5, 1)
    if m < std::f32::consts::FRAC_1_SQRT_2 {
        m += m;
        e -= 1;
    }
    let m = m - 1.0;
    let z = m * m;
    let mut p = 7.037_683_6e-2;
    p = madd::<FMA>(p, m, -1.151_461e-1);
    p = madd::<FMA>(p, m, 1.167_699_9e-1);
    p = madd::<FMA>(p, m, -1.242_014_1e-1);
    p = madd::<FMA>(p, m, 1.424_932_3e-1);
    p = madd::<FMA>(p, m, -1.666_805_8e-1);
    p = madd::<FMA>(p, m, 2.000_071_5e-1);
    p = madd::<FMA>(p, m, -2.499_999_4e-1);
    p = madd::<FMA>(p, m, 3.333_333e-1);
    let mut y = p * m * z;
    let ef = e as f32;
    y = madd::<FMA>(ef, -2.121_944_4e-4, y);
    y = madd::<FMA>(z, -0.5, y);
    let r = m + y;
    madd::<FMA>(ef, 0.693_359_4, r)
}

/// `softplus(x) = ln(1 + eˣ)` with PyTorch's threshold (x > 20 returns x), accurate for small eˣ.
#[inline(always)]
pub fn softplus<const FMA: bool>(x: f32) -> f32 {
    let e = exp::<FMA>(x.min(20.0));
    let u = 1.0 + e;
    // log1p(e) = ln(u) · e / (u - 1) corrects the rounding of 1 + e (Goldberg's trick).
    let d = u - 1.0;
    let l = if d == 0.0 { e } else { ln::<FMA>(u) * (e / d) };
    if x > 20.0 {
        x
    } else {
        l
    }
}

/// `silu(x) = x · sigmoid(x)`.
#[inline(always)]
pub fn silu<const FMA: bool>(x: f32) -> f32 {
    x / (1.0 + exp::<FMA>(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, f: impl Fn(f32) -> f32, g: impl Fn(f64) -> f64, lo: f32, hi: f32, rtol: f64) {
        let n = 200_001;
        for i in 0..n {
            let x = lo + (hi - lo) * i as f32 / (n - 1) as f32;
            let (got, want) = (f(x) as f64, g(x as f64));
            let err = (got - want).abs() / want.abs().max(1e-30);
            assert!(err <= rtol || (got - want).abs() < 1e-37, "{name}({x}) = {got}, want {want}, rel err {err}");
        }
    }

    #[test]
    fn math_matches_f64() {
        for fma in [false, true] {
            if fma && !has_avx2_fma() {
                continue;
            }
            let pick = |a: fn(f32) -> f32, b: fn(f32) -> f32| if fma { b } else { a };
            check("exp", pick(exp::<false>, exp::<true>), f64::exp, -87.0, 88.0, 4e-7);
            check("ln", pick(ln::<false>, ln::<true>), f64::ln, 1e-30, 1e30, 4e-7);
            check("ln", pick(ln::<false>, ln::<true>), f64::ln, 0.5, 2.0, 4e-7);
            check(
                "softplus",
                pick(softplus::<false>, softplus::<true>),
                super::super::super::reference::softplus,
                -80.0,
                40.0,
                1e-6,
            );
            check("silu", pick(silu::<false>, silu::<true>), super::super::super::reference::silu, -80.0, 80.0, 1e-6);
        }
        assert_eq!(exp::<false>(-100.0), 0.0);
    }
}
