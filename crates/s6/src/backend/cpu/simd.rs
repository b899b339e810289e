//! Runtime CPU feature dispatch and branch-free math that LLVM vectorizes.
//!
//! Kernels are written once as `#[inline(always)]` functions generic over `const FMA: bool`, over
//! fixed-width lane arrays; each has an entry point compiled with `avx2,fma` enabled, chosen at run
//! time. (Rust never fuses `a * b + c` on its own, and `mul_add` without hardware FMA is a slow libm
//! call, hence the const parameter.) Builds stay portable: no `target-cpu=native`.
//!
//! `FMA = true` is only ever instantiated inside those `avx2,fma` entry points, so the lane-array
//! math ([`exp8`], [`softplus8`], [`silu8`]) uses AVX2 intrinsics when it is set. Those exist
//! because LLVM fully unrolls an 8-lane loop before its loop vectorizer runs, and the SLP
//! vectorizer that sees the unrolled code gives up on anything as long as `ln` or `exp`: written
//! as lane loops, they ran one lane at a time.

use std::sync::OnceLock;

/// Lanes processed together: one AVX2 register of f32.
pub const LANES: usize = 8;
pub type Lanes = [f32; LANES];

#[cfg(test)]
thread_local! {
    /// Makes [`has_avx2_fma`] answer false on this thread, so that tests cover the portable
    /// kernels too. Kernels decide on the calling thread, before any work reaches the pool.
    pub(crate) static PORTABLE_FOR_TESTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Flushes subnormal floats to zero on the current thread while alive (x86-64: the MXCSR FTZ and
/// DAZ bits; elsewhere nothing), restoring the previous mode on drop.
///
/// Why: in the scan backward, `∂h` decays by `exp(Δ·A)` at every step; where a loss has few
/// targets (one answer per sequence in the synthetic tasks), it spends long stretches in the
/// subnormal range, where every x86 multiply takes a microcode assist of about a hundred cycles.
/// That made the scan backward 70% of an induction-heads training step. Values below 1.2e-38
/// contribute nothing measurable to gradients of order 1; the official CUDA kernels flush them too
/// (`--use_fast_math`).
pub struct FlushSubnormals {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
    /// MXCSR is per thread: the guard must drop where it was made.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl FlushSubnormals {
    /// Bits 15 (flush to zero) and 6 (denormals are zero) of MXCSR.
    #[cfg(target_arch = "x86_64")]
    const FTZ_DAZ: u32 = 0x8040;

    pub fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let mut saved: u32 = 0;
            // SAFETY: stmxcsr/ldmxcsr read and write this thread's SSE control register; the
            // new value only sets the FTZ and DAZ bits of the current one.
            unsafe {
                std::arch::asm!("stmxcsr [{}]", in(reg) &mut saved, options(nostack));
                let flushed = saved | Self::FTZ_DAZ;
                std::arch::asm!("ldmxcsr [{}]", in(reg) &flushed, options(nostack, readonly));
            }
            FlushSubnormals { saved, _not_send: std::marker::PhantomData }
        }
        #[cfg(not(target_arch = "x86_64"))]
        FlushSubnormals { _not_send: std::marker::PhantomData }
    }
}

impl Default for FlushSubnormals {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FlushSubnormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: restores the value read in `new` on the same thread (the guard is not Send).
        unsafe {
            std::arch::asm!("ldmxcsr [{}]", in(reg) &self.saved, options(nostack, readonly));
        }
    }
}

/// Whether the AVX2 + FMA kernels can run on this CPU.
pub fn has_avx2_fma() -> bool {
    #[cfg(test)]
    if PORTABLE_FOR_TESTS.with(|p| p.get()) {
        return false;
    }
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
///
/// `k = round(x / ln 2)` comes from the 1.5·2²³ "magic number" addition, which leaves `k` in the
/// low mantissa bits: integer arithmetic on the bits then builds `2^k`. A float-to-int `as` cast
/// would instead saturate and test for NaN per element, and LLVM keeps that scalar — one such cast
/// made every kernel calling `exp` (scan, conv, softplus, SiLU) run one lane at a time.
#[inline(always)]
pub fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Upper clamp keeps k <= 127 (a finite 2^k); exp(88.3) = 2.2e38 is still finite.
    let xc = x.clamp(-87.3, 88.3);
    let kf = madd::<FMA>(xc, LOG2E, MAGIC);
    let k = kf - MAGIC;
    let r = madd::<FMA>(k, -LN2_LO, madd::<FMA>(k, -LN2_HI, xc));
    // Taylor coefficients 1/i!, evaluated by Horner; |r| <= ln2/2 keeps the error below 2e-7.
    let mut p = 1.0 / 720.0;
    p = madd::<FMA>(p, r, 1.0 / 120.0);
    p = madd::<FMA>(p, r, 1.0 / 24.0);
    p = madd::<FMA>(p, r, 1.0 / 6.0);
    p = madd::<FMA>(p, r, 0.5);
    p = madd::<FMA>(p, r, 1.0);
    p = madd::<FMA>(p, r, 1.0);
    // kf's bits are MAGIC's plus k (two's complement, |k| <= 127 < 2²²): 2^k = (k + 127) << 23.
    let ki = kf.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f32::from_bits(ki.wrapping_add(127) << 23);
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
    // A select rather than f32::min, which would turn NaN into 20.
    let e = exp::<FMA>(if x > 20.0 { 20.0 } else { x });
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

/// Coefficients of `2^f ≈ Σ cᵢ fⁱ` on `f ∈ [-½, ½]`: a degree-6 relative minimax fit (Remez), with
/// 7.7e-8 relative error when evaluated in f32 with FMA — below the current `exp`'s Taylor error.
const EXP2_POLY: [f32; 7] =
    [1.0, 0.693_147_24, 0.240_226_5, 0.055_502_973, 0.009_618_031, 0.001_341_000_1, 0.000_154_697_32];
/// 1.5 · 2²³: adding it rounds to an integer and leaves that integer in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;

/// `2^x` for the selective scan's decays, whose exponents `Δ·A·log₂e` are never positive:
/// 15 operations per 8 lanes instead of `exp`'s 19, which matters because the scan evaluates
/// one per (token, channel, state).
///
/// Below -126 the result is 2⁻¹²⁶ (1.2e-38) instead of a smaller number or 0 — an absolute error
/// no state update can see — which saves the underflow test. Valid for `x ≤ 127`; NaN propagates.
#[inline(always)]
pub fn exp2_decay<const FMA: bool>(x: f32) -> f32 {
    let xc = if x < -126.0 { -126.0 } else { x };
    let kf = xc + MAGIC;
    let f = xc - (kf - MAGIC);
    let mut p = EXP2_POLY[6];
    for &c in EXP2_POLY[..6].iter().rev() {
        p = madd::<FMA>(p, f, c);
    }
    // kf's bits are MAGIC's plus k; MAGIC's bits vanish in the shift, leaving k << 23.
    p * f32::from_bits((kf.to_bits() << 23).wrapping_add(127 << 23))
}

/// Hints the cache line holding `p` into L1; `write` for a line about to be stored to. Never
/// faults and never dereferences: `p` may point anywhere (e.g. past the end of a buffer), which
/// is why callers compute it with `wrapping_add`.
#[inline(always)]
pub fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch instructions have no architectural effect (SSE, part of x86_64's baseline).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `exp` of each lane (see [`exp`]; same results up to FMA contraction).
#[inline(always)]
pub fn exp8<const FMA: bool>(x: Lanes) -> Lanes {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: FMA = true is only instantiated in avx2+fma code (module docs).
        return unsafe { x86::store(x86::exp(x86::load(&x))) };
    }
    x.map(exp::<FMA>)
}

/// [`exp2_decay`] of each lane.
#[inline(always)]
pub fn exp2_decay8<const FMA: bool>(x: Lanes) -> Lanes {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: as in exp8.
        return unsafe { x86::store(x86::exp2_decay(x86::load(&x))) };
    }
    x.map(exp2_decay::<FMA>)
}

/// `softplus` of each lane (see [`softplus`]).
#[inline(always)]
pub fn softplus8<const FMA: bool>(x: Lanes) -> Lanes {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: as in exp8.
        return unsafe { x86::store(x86::softplus(x86::load(&x))) };
    }
    x.map(softplus::<FMA>)
}

/// `silu` of each lane (see [`silu`]).
#[inline(always)]
pub fn silu8<const FMA: bool>(x: Lanes) -> Lanes {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: as in exp8.
        return unsafe { x86::store(x86::silu(x86::load(&x))) };
    }
    x.map(silu::<FMA>)
}

/// The scalar algorithms above, eight lanes per AVX2 register. Only call from code compiled with
/// `avx2,fma` (the functions are inlined into it); that is the safety contract of every function
/// here.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::Lanes;

    #[inline(always)]
    pub unsafe fn load(x: &Lanes) -> __m256 {
        _mm256_loadu_ps(x.as_ptr())
    }

    #[inline(always)]
    pub unsafe fn store(v: __m256) -> Lanes {
        let mut out = [0.0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), v);
        out
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }

    /// [`super::exp`]: same constants, same operation order.
    #[inline(always)]
    pub unsafe fn exp(x: __m256) -> __m256 {
        const MAGIC: f32 = super::MAGIC;
        // max/min return their second operand when either is NaN: a NaN x stays NaN.
        let xc = _mm256_min_ps(splat(88.3), _mm256_max_ps(splat(-87.3), x));
        let kf = _mm256_fmadd_ps(xc, splat(std::f32::consts::LOG2_E), splat(MAGIC));
        let k = _mm256_sub_ps(kf, splat(MAGIC));
        let r = _mm256_fmadd_ps(k, splat(-1.428_606_8e-6), _mm256_fmadd_ps(k, splat(-0.693_145_75), xc));
        let mut p = splat(1.0 / 720.0);
        p = _mm256_fmadd_ps(p, r, splat(1.0 / 120.0));
        p = _mm256_fmadd_ps(p, r, splat(1.0 / 24.0));
        p = _mm256_fmadd_ps(p, r, splat(1.0 / 6.0));
        p = _mm256_fmadd_ps(p, r, splat(0.5));
        p = _mm256_fmadd_ps(p, r, splat(1.0));
        p = _mm256_fmadd_ps(p, r, splat(1.0));
        let ki = _mm256_sub_epi32(_mm256_castps_si256(kf), _mm256_set1_epi32(MAGIC.to_bits() as i32));
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(ki, _mm256_set1_epi32(127))));
        let v = _mm256_mul_ps(p, scale);
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, splat(-87.3));
        _mm256_andnot_ps(under, v)
    }

    /// Transposes an 8×8 block held as eight row registers (standard unpack/shuffle/permute
    /// network): `out[j]` lane `i` = `rows[i]` lane `j`.
    #[inline(always)]
    pub unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }

    /// [`super::exp2_decay`], same operation order.
    #[inline(always)]
    pub unsafe fn exp2_decay(x: __m256) -> __m256 {
        let c = super::EXP2_POLY;
        // max returns its second operand when either is NaN: a NaN x stays NaN.
        let xc = _mm256_max_ps(splat(-126.0), x);
        let kf = _mm256_add_ps(xc, splat(super::MAGIC));
        let f = _mm256_sub_ps(xc, _mm256_sub_ps(kf, splat(super::MAGIC)));
        let mut p = splat(c[6]);
        for &ci in c[..6].iter().rev() {
            p = _mm256_fmadd_ps(p, f, splat(ci));
        }
        let scale = _mm256_add_epi32(_mm256_slli_epi32::<23>(_mm256_castps_si256(kf)), _mm256_set1_epi32(127 << 23));
        _mm256_mul_ps(p, _mm256_castsi256_ps(scale))
    }

    /// [`super::ln`] (Cephes `logf`) for x > 0.
    #[inline(always)]
    pub unsafe fn ln(x: __m256) -> __m256 {
        let bits = _mm256_castps_si256(x);
        let mut e = _mm256_sub_epi32(
            _mm256_and_si256(_mm256_srli_epi32::<23>(bits), _mm256_set1_epi32(0xff)),
            _mm256_set1_epi32(126),
        );
        let mut m = _mm256_castsi256_ps(_mm256_or_si256(
            _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)),
            _mm256_set1_epi32(0x3f00_0000),
        ));
        // m < √½: m += m and e -= 1 (the mask is all ones, i.e. -1, in those lanes).
        let small = _mm256_cmp_ps::<_CMP_LT_OQ>(m, splat(std::f32::consts::FRAC_1_SQRT_2));
        m = _mm256_add_ps(m, _mm256_and_ps(small, m));
        e = _mm256_add_epi32(e, _mm256_castps_si256(small));
        let m = _mm256_sub_ps(m, splat(1.0));
        let z = _mm256_mul_ps(m, m);
        let mut p = splat(7.037_683_6e-2);
        for c in [-1.151_461e-1, 1.167_699_9e-1, -1.242_014_1e-1, 1.424_932_3e-1, -1.666_805_8e-1, 2.000_071_5e-1] {
            p = _mm256_fmadd_ps(p, m, splat(c));
        }
        p = _mm256_fmadd_ps(p, m, splat(-2.499_999_4e-1));
        p = _mm256_fmadd_ps(p, m, splat(3.333_333e-1));
        let mut y = _mm256_mul_ps(_mm256_mul_ps(p, m), z);
        let ef = _mm256_cvtepi32_ps(e);
        y = _mm256_fmadd_ps(ef, splat(-2.121_944_4e-4), y);
        y = _mm256_fmadd_ps(z, splat(-0.5), y);
        let r = _mm256_add_ps(m, y);
        _mm256_fmadd_ps(ef, splat(0.693_359_4), r)
    }

    /// [`super::softplus`]: `ln(1 + eˣ)` with the rounding of `1 + eˣ` corrected; `x` above 20.
    #[inline(always)]
    pub unsafe fn softplus(x: __m256) -> __m256 {
        let e = exp(_mm256_min_ps(splat(20.0), x));
        let u = _mm256_add_ps(splat(1.0), e);
        let d = _mm256_sub_ps(u, splat(1.0));
        let l = _mm256_mul_ps(ln(u), _mm256_div_ps(e, d));
        let l = _mm256_blendv_ps(l, e, _mm256_cmp_ps::<_CMP_EQ_OQ>(d, _mm256_setzero_ps()));
        _mm256_blendv_ps(l, x, _mm256_cmp_ps::<_CMP_GT_OQ>(x, splat(20.0)))
    }

    /// [`super::silu`]: `x / (1 + e⁻ˣ)`.
    #[inline(always)]
    pub unsafe fn silu(x: __m256) -> __m256 {
        let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_div_ps(x, _mm256_add_ps(splat(1.0), e))
    }
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

    #[test]
    fn exp2_decay_matches_f64() {
        for fma in [false, true] {
            if fma && !has_avx2_fma() {
                continue;
            }
            let f = if fma { exp2_decay::<true> } else { exp2_decay::<false> };
            check("exp2_decay", f, |x: f64| x.exp2(), -126.0, 0.0, 2e-7);
            check("exp2_decay", f, |x: f64| x.exp2(), -1.0, 1.0, 2e-7);
        }
        assert_eq!(exp2_decay::<false>(-1000.0), 2f32.powi(-126));
        assert_eq!(exp2_decay::<false>(0.0), 1.0);
        assert!(exp2_decay::<false>(f32::NAN).is_nan());
    }

    /// The AVX2 lane versions against the scalar ones they transcribe, on the whole useful range
    /// and on the edge cases (underflow, softplus threshold, NaN).
    #[test]
    fn lane_math_matches_scalar() {
        if !has_avx2_fma() {
            return;
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn lanes(f: usize, x: Lanes) -> Lanes {
            match f {
                0 => exp8::<true>(x),
                1 => softplus8::<true>(x),
                2 => exp2_decay8::<true>(x),
                _ => silu8::<true>(x),
            }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn transposed(m: &[Lanes; 8]) -> [Lanes; 8] {
            x86::transpose8(m.map(|r| x86::load(&r))).map(|v| x86::store(v))
        }
        let m: [Lanes; 8] = std::array::from_fn(|i| std::array::from_fn(|j| (i * 8 + j) as f32));
        // SAFETY: avx2+fma checked above.
        let t = unsafe { transposed(&m) };
        for i in 0..8 {
            for j in 0..8 {
                assert_eq!(t[j][i], m[i][j]);
            }
        }
        let scalar: [fn(f32) -> f32; 4] = [exp::<true>, softplus::<true>, exp2_decay::<true>, silu::<true>];
        let mut xs: Vec<f32> = (0..80_000).map(|i| -100.0 + i as f32 * 0.0025).collect();
        xs.extend([-87.3, -87.31, 88.3, 20.0, 20.001, -0.0, 1e-30, -1e-30, f32::NAN, f32::INFINITY, -f32::INFINITY]);
        xs.resize(xs.len().next_multiple_of(LANES), 0.5);
        for (f, g) in scalar.iter().enumerate() {
            for chunk in xs.chunks_exact(LANES) {
                let x: Lanes = chunk.try_into().unwrap();
                // SAFETY: avx2+fma checked above.
                let got = unsafe { lanes(f, x) };
                for (l, &v) in x.iter().enumerate() {
                    let want = g(v);
                    let ok = (got[l].is_nan() && want.is_nan())
                        || got[l] == want
                        || (got[l] - want).abs() <= 2e-7 * want.abs().max(1e-30);
                    assert!(ok, "function {f} at {v}: lanes {}, scalar {want}", got[l]);
                }
            }
        }
    }

    #[test]
    fn subnormals_flush_inside_the_guard_only() {
        use std::hint::black_box;
        // 1e-30 · 1e-10 = 1e-40 is subnormal (the smallest normal f32 is 1.18e-38).
        let product = || black_box(1e-30f32) * black_box(1e-10f32);
        let subnormal = black_box(1e-40f32);
        assert!(product() > 0.0 && product().is_subnormal());
        {
            let _flush = FlushSubnormals::new();
            if cfg!(target_arch = "x86_64") {
                assert_eq!(product(), 0.0, "flush to zero");
                assert_eq!(subnormal * black_box(1.0f32), 0.0, "subnormal inputs read as zero");
            }
            {
                // Nested guards restore the outer mode, not the original one.
                let _inner = FlushSubnormals::new();
            }
            if cfg!(target_arch = "x86_64") {
                assert_eq!(product(), 0.0);
            }
        }
        assert!(product().is_subnormal(), "the previous mode is restored");
    }
}
