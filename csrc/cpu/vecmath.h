// Elementwise fp32 functions the kernels call once or more per element of S, written without
// branches or libm calls so that the loops around them vectorise (AVX-512 / AVX2 through GCC's
// auto-vectoriser and `omp simd`). Cephes-style range reduction and polynomials, evaluated with
// explicit fused multiply-adds (__builtin_fmaf: one rounding, and the build's -ffp-contract=off
// keeps every other expression as written). NaN propagates.
//
// Error against the correctly rounded result, bounded by tests/test_cpu_vecmath.py over the ranges
// the kernels use (2^21 arguments each, every binade; worst case seen in brackets):
//   exp_neg(x)       exp(x), x in [-87.3, 0]                          <= 1.5 ulp (0.99)
//   exp_pq(nl)       p = exp(-nl), nl in [0, 87.3]                    <= 1.5 ulp (1.01)
//                    q = 1 - p = -expm1(-nl), nl in [1e-30, 87.3]     <= 1.5 ulp (0.84)
//   log_pos(u)       log(u), u in [1e-37, 1e30]                       <= 1.5 ulp (0.81)
//   log1p_neg(x)     log1p(x), x in [-1/2, 1e-6]                      <= 3 ulp   (2.55; the
//                    rounding of 2 + x and of the division, at x near -0.4)
// log_q_eps is log_pos or log1p_neg of its argument (one of them per element). In double, for the
// GMM's posteriors:
//   exp_neg_d(x)     exp(x), x in [-708, 0]                           <= 2 ulp
#pragma once

#include "common.h"

namespace srem {

SREM_INLINE float fma_(float a, float b, float c) { return __builtin_fmaf(a, b, c); }

// Everything returns by value: a pointer or reference into a local struct makes GCC keep the
// struct in memory per SIMD lane, and the loop no longer vectorises.

// exp(x) = s (1 + e) with s = 2^n and e = expm1(r), r = x - n log 2 in [-log(2)/2, log(2)/2], for
// x in [-87.3, 0] (2^n stays a normal number).
struct ExpSplit {
  float s, e;
};

SREM_INLINE ExpSplit exp_split(float x) {
  const float xc = vmax(x, -87.3f);
  // n = round(x / log 2) by the 1.5·2^23 shifter (|n| < 2^22): floorf would block vectorisation
  const float n = fma_(xc, 1.44269504088896341f, 12582912.0f) - 12582912.0f;
  float r = fma_(n, -0.693359375f, xc);  // n·0.693359375 is exact (9 + 8 bits)
  r = fma_(n, 2.12194440e-4f, r);
  float y = 1.9875691500e-4f;
  y = fma_(y, r, 1.3981999507e-3f);
  y = fma_(y, r, 8.3334519073e-3f);
  y = fma_(y, r, 4.1665795894e-2f);
  y = fma_(y, r, 1.6666665459e-1f);
  y = fma_(y, r, 5.0000001201e-1f);
  return {as_float((static_cast<int32_t>(n) + 127) << 23), fma_(y, r * r, r)};
}

// exp(x) for x <= 0. Below -87.3 it returns exp(-87.3) ≈ 1.2e-38 (the bottom of fp32's normal
// range; every use sums such terms against 1). NaN propagates through the arithmetic (no blend).
SREM_INLINE float exp_neg(float x) {
  const ExpSplit t = exp_split(x);
  return fma_(t.s, t.e, t.s);
}

// p = exp(-nl) and q = 1 - p for nl >= 0 (nl = -log P), q accurate also as p -> 1: from the same
// reduction, q = (1 - 2^n) - 2^n e with 1 - 2^n exact and no cancellation (n = 0: q = -e; n <= -1:
// q >= 0.29). 1 - p itself loses an off-diagonal p that rounds to 1 — a confidently wrong pair —
// where the reference's 1 - p + eps is ~eps.
struct PQ {
  float p, q;
};

// As exp_neg, p is at least 1.2e-38 (q then 1).
SREM_INLINE PQ exp_pq(float nl) {
  const ExpSplit t = exp_split(-nl);
  return {fma_(t.s, t.e, t.s), fma_(-t.s, t.e, 1.0f - t.s)};
}

// log(u) for u > 0 normal, or NaN (every caller's u is at least eps = 1e-10 or 1/2; no blends for
// 0, negative or subnormal u).
SREM_INLINE float log_pos(float u) {
  const int32_t bits = as_int(u);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = as_float((bits & 0x807fffff) | 0x3f000000);  // [0.5, 1)
  const bool lo = m < 0.707106781186547524f;
  e = lo ? e - 1.0f : e;
  m = lo ? m + m - 1.0f : m - 1.0f;  // exact: [-0.29, 0.41]
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = fma_(y, m, -1.1514610310e-1f);
  y = fma_(y, m, 1.1676998740e-1f);
  y = fma_(y, m, -1.2420140846e-1f);
  y = fma_(y, m, 1.4249322787e-1f);
  y = fma_(y, m, -1.6668057665e-1f);
  y = fma_(y, m, 2.0000714765e-1f);
  y = fma_(y, m, -2.4999993993e-1f);
  y = fma_(y, m, 3.3333331174e-1f);
  y = y * m * z;
  y = fma_(e, -2.12194440e-4f, y);
  y = fma_(z, -0.5f, y);
  const float r = fma_(e, 0.693359375f, m + y);
  return u != u ? u : r;
}

// log1p(x) for x in [-1/2, 2^-20] as 2 atanh(s), s = x / (2 + x) in [-1/3, 2^-21]: the odd series
// to s^15 (its remainder below 1e-9 relative). One division, no range reduction.
SREM_INLINE float log1p_neg(float x) {
  const float s = x / (2.0f + x), t = s * s;
  float y = 2.0f / 15.0f;
  y = fma_(y, t, 2.0f / 13.0f);
  y = fma_(y, t, 2.0f / 11.0f);
  y = fma_(y, t, 2.0f / 9.0f);
  y = fma_(y, t, 2.0f / 7.0f);
  y = fma_(y, t, 2.0f / 5.0f);
  y = fma_(y, t, 2.0f / 3.0f);
  return s * fma_(y, t, 2.0f);
}

// log(1 - p + eps) for a probability p with q = 1 - p (exp_pq): log1p(eps - p) keeps a small p,
// log(q + eps) a p close to 1 (in fp32 log1p(eps - p) is -inf once p rounds to 1).
SREM_INLINE float log_q_eps(float p, float q, float eps) {
  return p < 0.5f ? log1p_neg(eps - p) : log_pos(q + eps);
}

// exp(x) in double for x <= 0, without libm, so that the GMM's E-step loop (glue.cpp) vectorises
// (4 lanes on AVX2; a call to exp per energy and round made the GMM 5 % of the three GEMMs' time
// at B=1024): n =
// round(x / log 2) by the 1.5·2^52 shifter, whose low bits are n as an integer; r = x - n log 2
// (Cody–Waite, log 2's high part exact in 32 bits); exp(r) by its Taylor series to r^13 (|r| <=
// log(2)/2: remainder below 5e-18), times 2^n. Below -708 it returns exp(-708) ≈ 3e-308 (normal);
// NaN propagates. Within 2 ulp of the correctly rounded result.
SREM_INLINE double exp_neg_d(double x) {
  const double xc = x < -708.0 ? -708.0 : x;
  const double shifter = 6755399441055744.0;  // 1.5·2^52
  const double t = __builtin_fma(xc, 1.4426950408889634, shifter);
  const double n = t - shifter;
  double r = __builtin_fma(n, -0.6931471803691238, xc);  // log 2's 32 high bits
  r = __builtin_fma(n, -1.9082149292705877e-10, r);       // and the rest
  double p = 1.0 / 6227020800.0;                          // 1/13!, then Horner down to 1 (written out: a
  p = __builtin_fma(p, r, 1.0 / 479001600.0);             // loop over the coefficients stays a loop, and
  p = __builtin_fma(p, r, 1.0 / 39916800.0);              // the E-step's with it scalar)
  p = __builtin_fma(p, r, 1.0 / 3628800.0);
  p = __builtin_fma(p, r, 1.0 / 362880.0);
  p = __builtin_fma(p, r, 1.0 / 40320.0);
  p = __builtin_fma(p, r, 1.0 / 5040.0);
  p = __builtin_fma(p, r, 1.0 / 720.0);
  p = __builtin_fma(p, r, 1.0 / 120.0);
  p = __builtin_fma(p, r, 1.0 / 24.0);
  p = __builtin_fma(p, r, 1.0 / 6.0);
  p = __builtin_fma(p, r, 0.5);
  p = __builtin_fma(p, r, 1.0);
  p = __builtin_fma(p, r, 1.0);
  const int64_t bits = (__builtin_bit_cast(int64_t, t) - __builtin_bit_cast(int64_t, shifter) + 1023) << 52;
  return p * __builtin_bit_cast(double, bits);
}


}  // namespace srem
