//! Distance kernels over `f32` slices, with SIMD versions chosen at run time.
//!
//! [`kernels()`] returns the fastest set this CPU supports (AVX-512F, then AVX2 with FMA, then
//! the scalar loops); [`available()`] returns every set the CPU can run, so tests and benchmarks
//! can compare them. All sets accumulate in `f32`, as pgvector does, and callers turn the sums into
//! `f64` distances with the helpers at the bottom of this file.
//!
//! Callers pass slices of equal length; a kernel reads `min(a.len(), b.len())` elements, so a
//! mismatch can never read out of bounds.

use std::sync::OnceLock;

/// A reduction over two slices of equal length.
pub type Reduction<T> = fn(&[f32], &[f32]) -> T;

/// One implementation of the three reductions every distance is built from.
#[derive(Debug)]
pub struct Kernels {
    /// A short name for reports: `scalar`, `avx2`, `avx512`.
    pub name: &'static str,
    /// Sum of squared differences.
    pub l2_squared: Reduction<f32>,
    /// Sum of products.
    pub dot: Reduction<f32>,
    /// `(dot(a, b), dot(a, a), dot(b, b))` in one pass.
    pub cosine_parts: Reduction<(f32, f32, f32)>,
}

pub static SCALAR: Kernels =
    Kernels { name: "scalar", l2_squared: scalar::l2_squared, dot: scalar::dot, cosine_parts: scalar::cosine_parts };

/// Every kernel set this CPU can run, scalar first.
pub fn available() -> Vec<&'static Kernels> {
    let mut sets = vec![&SCALAR];
    #[cfg(target_arch = "x86_64")]
    {
        if x86::avx2_supported() {
            sets.push(&x86::AVX2);
        }
        if x86::avx512_supported() {
            sets.push(&x86::AVX512);
        }
    }
    sets
}

/// The fastest kernel set this CPU can run, detected once.
#[inline]
pub fn kernels() -> &'static Kernels {
    static BEST: OnceLock<&'static Kernels> = OnceLock::new();
    BEST.get_or_init(|| *available().last().expect("scalar kernels are always available"))
}

/// Euclidean distance.
#[inline]
pub fn l2_distance(a: &[f32], b: &[f32]) -> f64 {
    ((kernels().l2_squared)(a, b) as f64).sqrt()
}

/// Inner product.
#[inline]
pub fn inner_product(a: &[f32], b: &[f32]) -> f64 {
    (kernels().dot)(a, b) as f64
}

/// Cosine distance, `1 - cos(a, b)`, in `[0, 2]`; NaN when either vector is all zeros.
#[inline]
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f64 {
    let (dot, na, nb) = (kernels().cosine_parts)(a, b);
    cosine_from_parts(dot, na, nb)
}

/// Turns the sums of [`Kernels::cosine_parts`] into a cosine distance.
#[inline]
pub fn cosine_from_parts(dot: f32, na: f32, nb: f32) -> f64 {
    let similarity = dot as f64 / ((na as f64) * (nb as f64)).sqrt();
    if similarity.is_nan() {
        return f64::NAN;
    }
    // Rounding can push the similarity just past ±1.
    1.0 - similarity.clamp(-1.0, 1.0)
}

/// Euclidean norm, accumulated in `f64`.
pub fn norm(a: &[f32]) -> f64 {
    a.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt()
}

mod scalar {
    pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
        let mut s = 0.0f32;
        for (x, y) in a.iter().zip(b) {
            let d = x - y;
            s += d * d;
        }
        s
    }

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut s = 0.0f32;
        for (x, y) in a.iter().zip(b) {
            s += x * y;
        }
        s
    }

    pub fn cosine_parts(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
        let (mut d, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
        for (x, y) in a.iter().zip(b) {
            d += x * y;
            na += x * x;
            nb += y * y;
        }
        (d, na, nb)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The SIMD kernels. Each safe wrapper below calls a `#[target_feature]` function; the
    //! wrappers are reachable only through the `AVX2` / `AVX512` sets, which [`super::available`]
    //! hands out only after the CPU reported the features, so the calls are sound.
    use super::Kernels;
    use std::arch::x86_64::*;

    pub fn avx2_supported() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    pub fn avx512_supported() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    pub static AVX2: Kernels = Kernels {
        name: "avx2",
        // SAFETY (all three): see the module comment; AVX2 and FMA were detected.
        l2_squared: |a, b| unsafe { l2_squared_avx2(a, b) },
        dot: |a, b| unsafe { dot_avx2(a, b) },
        cosine_parts: |a, b| unsafe { cosine_parts_avx2(a, b) },
    };

    pub static AVX512: Kernels = Kernels {
        name: "avx512",
        // SAFETY (all three): see the module comment; AVX-512F was detected.
        l2_squared: |a, b| unsafe { l2_squared_avx512(a, b) },
        dot: |a, b| unsafe { dot_avx512(a, b) },
        cosine_parts: |a, b| unsafe { cosine_parts_avx512(a, b) },
    };

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    // SAFETY of the loads in the functions below: `i + 8 <= n` (or `i + 32 <= n`) with
    // `n <= a.len()` and `n <= b.len()`, so every 8-lane unaligned load stays inside both slices.

    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2_squared_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, s) in acc.iter_mut().enumerate() {
                let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i + 8 * k)), _mm256_loadu_ps(pb.add(i + 8 * k)));
                *s = _mm256_fmadd_ps(d, d, *s);
            }
            i += 32;
        }
        while i + 8 <= n {
            let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum256(sum);
        while i < n {
            let d = a[i] - b[i];
            s += d * d;
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, s) in acc.iter_mut().enumerate() {
                *s = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * k)), _mm256_loadu_ps(pb.add(i + 8 * k)), *s);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum256(sum);
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn cosine_parts_avx2(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut dot = [_mm256_setzero_ps(); 2];
        let mut na = [_mm256_setzero_ps(); 2];
        let mut nb = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 16 <= n {
            for k in 0..2 {
                let x = _mm256_loadu_ps(pa.add(i + 8 * k));
                let y = _mm256_loadu_ps(pb.add(i + 8 * k));
                dot[k] = _mm256_fmadd_ps(x, y, dot[k]);
                na[k] = _mm256_fmadd_ps(x, x, na[k]);
                nb[k] = _mm256_fmadd_ps(y, y, nb[k]);
            }
            i += 16;
        }
        while i + 8 <= n {
            let x = _mm256_loadu_ps(pa.add(i));
            let y = _mm256_loadu_ps(pb.add(i));
            dot[0] = _mm256_fmadd_ps(x, y, dot[0]);
            na[0] = _mm256_fmadd_ps(x, x, na[0]);
            nb[0] = _mm256_fmadd_ps(y, y, nb[0]);
            i += 8;
        }
        let mut d = hsum256(_mm256_add_ps(dot[0], dot[1]));
        let mut sa = hsum256(_mm256_add_ps(na[0], na[1]));
        let mut sb = hsum256(_mm256_add_ps(nb[0], nb[1]));
        while i < n {
            d += a[i] * b[i];
            sa += a[i] * a[i];
            sb += b[i] * b[i];
            i += 1;
        }
        (d, sa, sb)
    }

    /// Mask of the lanes `0..rest` for a tail of `rest < 16` elements.
    #[inline]
    fn tail_mask(rest: usize) -> __mmask16 {
        ((1u32 << rest) - 1) as __mmask16
    }

    // SAFETY of the loads below: full loads as above; the masked tail loads touch only the lanes
    // `i..n`, and masked-off lanes are not read (no fault), so they stay inside both slices.

    #[target_feature(enable = "avx512f")]
    unsafe fn l2_squared_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            let d0 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
            let d1 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i + 16)), _mm512_loadu_ps(pb.add(i + 16)));
            acc0 = _mm512_fmadd_ps(d0, d0, acc0);
            acc1 = _mm512_fmadd_ps(d1, d1, acc1);
            i += 32;
        }
        while i + 16 <= n {
            let d = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
            acc0 = _mm512_fmadd_ps(d, d, acc0);
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)));
            acc1 = _mm512_fmadd_ps(d, d, acc1);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16)), _mm512_loadu_ps(pb.add(i + 16)), acc1);
            i += 32;
        }
        while i + 16 <= n {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)), acc1);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn cosine_parts_avx512(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut dot = _mm512_setzero_ps();
        let mut na = _mm512_setzero_ps();
        let mut nb = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let x = _mm512_loadu_ps(pa.add(i));
            let y = _mm512_loadu_ps(pb.add(i));
            dot = _mm512_fmadd_ps(x, y, dot);
            na = _mm512_fmadd_ps(x, x, na);
            nb = _mm512_fmadd_ps(y, y, nb);
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            let x = _mm512_maskz_loadu_ps(m, pa.add(i));
            let y = _mm512_maskz_loadu_ps(m, pb.add(i));
            dot = _mm512_fmadd_ps(x, y, dot);
            na = _mm512_fmadd_ps(x, x, na);
            nb = _mm512_fmadd_ps(y, y, nb);
        }
        (_mm512_reduce_add_ps(dot), _mm512_reduce_add_ps(na), _mm512_reduce_add_ps(nb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ref_l2sq(a: &[f32], b: &[f32]) -> (f64, f64) {
        let terms = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2));
        let v: Vec<f64> = terms.collect();
        (v.iter().sum(), v.iter().map(|t| t.abs()).sum())
    }

    fn ref_dot(a: &[f32], b: &[f32]) -> (f64, f64) {
        let v: Vec<f64> = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).collect();
        (v.iter().sum(), v.iter().map(|t| t.abs()).sum())
    }

    /// The error bound of any order of `n` f32 additions of terms whose magnitudes sum to `abs`
    /// (each term itself rounded once): `(n + 2) * eps * abs`, plus a little for denormals.
    fn close(got: f32, want: f64, abs: f64, n: usize) -> bool {
        let bound = (n as f64 + 2.0) * f32::EPSILON as f64 * abs + 1e-30;
        (got as f64 - want).abs() <= bound
    }

    fn pair() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
        (1usize..300).prop_flat_map(|n| {
            (proptest::collection::vec(-1000.0f32..1000.0, n), proptest::collection::vec(-1000.0f32..1000.0, n))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn every_kernel_matches_the_f64_reference((a, b) in pair()) {
            let n = a.len();
            let (l2, l2_abs) = ref_l2sq(&a, &b);
            let (dot, dot_abs) = ref_dot(&a, &b);
            let (na, na_abs) = ref_dot(&a, &a);
            let (nb, nb_abs) = ref_dot(&b, &b);
            for k in available() {
                prop_assert!(close((k.l2_squared)(&a, &b), l2, l2_abs, n), "{} l2", k.name);
                prop_assert!(close((k.dot)(&a, &b), dot, dot_abs, n), "{} dot", k.name);
                let (d, sa, sb) = (k.cosine_parts)(&a, &b);
                prop_assert!(close(d, dot, dot_abs, n), "{} cos dot", k.name);
                prop_assert!(close(sa, na, na_abs, n), "{} cos |a|", k.name);
                prop_assert!(close(sb, nb, nb_abs, n), "{} cos |b|", k.name);
            }
        }

        #[test]
        fn distances_match_the_f64_reference((a, b) in pair()) {
            let (l2, _) = ref_l2sq(&a, &b);
            prop_assert!((l2_distance(&a, &b) - l2.sqrt()).abs() <= 1e-3 * (1.0 + l2.sqrt()));
            let (dot, _) = ref_dot(&a, &b);
            let (na, _) = ref_dot(&a, &a);
            let (nb, _) = ref_dot(&b, &b);
            let cos = 1.0 - (dot / (na * nb).sqrt()).clamp(-1.0, 1.0);
            prop_assert!((cosine_distance(&a, &b) - cos).abs() <= 1e-4, "{} vs {}", cosine_distance(&a, &b), cos);
            prop_assert!((norm(&a) - na.sqrt()).abs() <= 1e-9 * (1.0 + na.sqrt()));
        }
    }

    #[test]
    fn every_length_reads_every_element() {
        // Lengths around each SIMD width, with a single non-zero element at every position: a
        // kernel that drops or repeats a tail element gets this wrong.
        for n in 1..70 {
            for pos in 0..n {
                let a = vec![0.0f32; n];
                let mut b = vec![0.0f32; n];
                b[pos] = 2.0;
                let ones = vec![1.0f32; n];
                for k in available() {
                    assert_eq!((k.l2_squared)(&a, &b), 4.0, "{} n={n} pos={pos}", k.name);
                    assert_eq!((k.dot)(&ones, &b), 2.0, "{} n={n} pos={pos}", k.name);
                    assert_eq!((k.cosine_parts)(&ones, &b), (2.0, n as f32, 4.0), "{}", k.name);
                }
            }
        }
    }

    #[test]
    fn cosine_edge_cases() {
        assert!(cosine_distance(&[0.0, 0.0], &[1.0, 2.0]).is_nan());
        assert_eq!(cosine_distance(&[1.0, 2.0], &[2.0, 4.0]), 0.0);
        assert_eq!(cosine_distance(&[1.0, 0.0], &[-1.0, 0.0]), 2.0);
        assert_eq!(cosine_distance(&[1.0, 0.0], &[0.0, 1.0]), 1.0);
    }

    #[test]
    fn best_kernels_are_the_last_available() {
        assert_eq!(kernels().name, available().last().unwrap().name);
    }
}
