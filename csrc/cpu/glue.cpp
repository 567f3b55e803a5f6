// The B-vector work after the kernels, for CPU tensors (srem_kernels/backends/glue.py is the contract and
// its torch form the readable statement): the value checks of the inputs, SPEC.md's GMM
// filtration, the glue forward (energies, c, w, the hinge, L_i and the reduction) and the
// backward's upstream vectors. Each is one call: no ATen operator, no host read.
//
// Deterministic: single-threaded over B-vectors in a fixed order (the value checks, which read
// B×D, OR their flags over threads, which is order-free). Arithmetic in the vectors' dtype T
// (fp32, or fp64 for fp64 inputs), except the GMM's, which is fp64 throughout (its cost is
// O(B) per round, and fp64 keeps its flags those of the fp64 reference).
//
// Built with the module's flags (-ffp-contract=off, no -ffast-math).

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <utility>
#include <vector>

#include "kernels.h"  // the fp32 entry points below
#include "vecmath.h"  // exp_neg_d

namespace py = pybind11;

namespace {

constexpr double kVarFloor = 1e-6;  // python_ref/filtration.py GMM_VAR_FLOOR
constexpr int kRounds = 20;         // GMM_ROUNDS

template <class T>
const T* cptr(uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <class T>
T* mptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

// ------------------------------------------------------------------ value checks

// Whether any element of a strided 2-D tensor is NaN or ±Inf, read from its bits (all four
// dtypes: an all-ones exponent). dtype: 0 fp32, 1 fp16, 2 bf16, 3 fp64.
template <class U>
bool nonfinite_bits(const U* x, int64_t rows, int64_t cols, int64_t s0, int64_t s1, U mask, int threads) {
  if (s1 != 1 && s0 == 1) {  // a transposed tensor: walk its contiguous direction innermost
    std::swap(rows, cols);
    std::swap(s0, s1);
  }
  if (s1 == 1 && s0 == cols) {  // contiguous: one flat run
    cols *= rows;
    rows = 1;
  }
  const int64_t chunk = 1 << 14;  // a contiguous run is split so threads share it
  const int64_t pieces = rows * ((cols + chunk - 1) / chunk);
  int64_t bad = 0;
#pragma omp parallel for reduction(+ : bad) num_threads(std::max(1, threads)) if (rows * cols > (1 << 18))
  for (int64_t p = 0; p < pieces; ++p) {
    const int64_t per_row = (cols + chunk - 1) / chunk;
    const U* r = x + (p / per_row) * s0;
    const int64_t lo = (p % per_row) * chunk, hi = std::min(cols, lo + chunk);
    int64_t n = 0;
    if (s1 == 1) {
      for (int64_t j = lo; j < hi; ++j) n += (r[j] & mask) == mask;  // vectorises: an integer sum
    } else {
      for (int64_t j = lo; j < hi; ++j) n += (r[j * s1] & mask) == mask;
    }
    bad += n;
  }
  return bad > 0;
}

bool nonfinite(uintptr_t x, int64_t rows, int64_t cols, int64_t s0, int64_t s1, int dtype, int threads) {
  switch (dtype) {
    case 0: return nonfinite_bits<uint32_t>(cptr<uint32_t>(x), rows, cols, s0, s1, 0x7f800000u, threads);
    case 1: return nonfinite_bits<uint16_t>(cptr<uint16_t>(x), rows, cols, s0, s1, 0x7c00u, threads);
    case 2: return nonfinite_bits<uint16_t>(cptr<uint16_t>(x), rows, cols, s0, s1, 0x7f80u, threads);
    case 3: return nonfinite_bits<uint64_t>(cptr<uint64_t>(x), rows, cols, s0, s1, 0x7ff0000000000000ull, threads);
  }
  throw std::invalid_argument("nonfinite: dtype code must be 0..3");
}

// Whether any element of a strided vector lies outside [0, 1] (NaN included).
template <class T>
bool outside_unit(const T* x, int64_t n, int64_t stride) {
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i * stride];
    bad |= !(v >= T(0) && v <= T(1));
  }
  return bad;
}

// ------------------------------------------------------------------ GMM filtration

// Two 1-D Gaussians' parameters, as python_ref/filtration.py holds them, in fp64 whatever the
// energies' dtype: a flag then differs from the fp64 reference's only where that posterior is
// within rounding (~1e-12) of 1/2, not within fp32's ~1e-6.
struct Mixture {
  double w[2], m[2], v[2];
  double lognorm[2];  // log w - log(2π v) / 2, once per round

  void prepare() {
    for (int k = 0; k < 2; ++k) lognorm[k] = std::log(w[k]) + (-0.5 * std::log(2 * M_PI * v[k]));
  }
};

// E-step of one energy x under the mixture g (its fields passed as scalars, so that the loops
// around it vectorise): the responsibility of component 0 and of component 1, the softmax of
// log w + log N(x; m, v) over the two, each from the pair's difference so neither is 1 - other.
struct Resp {
  double r0, r1;
};

inline __attribute__((always_inline)) Resp posterior(double x, double m0, double m1, double h0, double h1,
                                                     double l0, double l1) {
  const double d0 = x - m0, d1 = x - m1;  // h_k = 2 v_k, l_k = lognorm_k
  const double diff = (l1 - d1 * d1 / h1) - (l0 - d0 * d0 / h0);
  const double e = srem::exp_neg_d(-std::fabs(diff));  // exp(lower - higher) ∈ [0, 1]
  const double big = 1 / (1 + e), small = e / (1 + e);
  return {diff > 0 ? small : big, diff > 0 ? big : small};
}

// c_i (0/1) and, where `post` is not null, the lower-mean component's final posterior. The
// energies are read once into a contiguous fp64 copy; each round is two vectorised sweeps over it
// (the E-step with the responsibilities' sums, then the spread about the new means).
template <class T>
void gmm_filtration(const T* x, int64_t n, int64_t stride, T* clean, int64_t clean_stride, T* post) {
  std::vector<double> xs(n), r0(n), r1(n);  // the energies; this round's responsibilities
  double lo = x[0], hi = x[0], sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i * stride];
    xs[i] = v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    sum += v;
  }
  const double* __restrict xv = xs.data();
  double* __restrict q0 = r0.data();
  double* __restrict q1 = r1.data();
  const double mean = sum / double(n);
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = xv[i] - mean;
    ss += d * d;
  }
  Mixture g;
  g.w[0] = g.w[1] = 0.5;
  g.m[0] = lo;
  g.m[1] = hi;
  g.v[0] = g.v[1] = std::max(ss / double(n), kVarFloor);
  for (int round = 0; round < kRounds; ++round) {
    g.prepare();
    const double m0 = g.m[0], m1 = g.m[1], h0 = 2 * g.v[0], h1 = 2 * g.v[1], l0 = g.lognorm[0], l1 = g.lognorm[1];
    double n0 = 0, n1 = 0, s0 = 0, s1 = 0;
#pragma omp simd reduction(+ : n0, n1, s0, s1)
    for (int64_t i = 0; i < n; ++i) {
      const Resp r = posterior(xv[i], m0, m1, h0, h1, l0, l1);
      q0[i] = r.r0, q1[i] = r.r1;
      n0 += r.r0, n1 += r.r1;
      s0 += r.r0 * xv[i], s1 += r.r1 * xv[i];
    }
    const double nk[2] = {n0, n1};
    const double means[2] = {n0 > 0 ? s0 / n0 : m0, n1 > 0 ? s1 / n1 : m1};
    double v0 = 0, v1 = 0;
#pragma omp simd reduction(+ : v0, v1)
    for (int64_t i = 0; i < n; ++i) {  // spread about the new means, with this round's responsibilities
      v0 += q0[i] * (xv[i] - means[0]) * (xv[i] - means[0]);
      v1 += q1[i] * (xv[i] - means[1]) * (xv[i] - means[1]);
    }
    const double vk[2] = {v0, v1};
    for (int k = 0; k < 2; ++k) {
      g.w[k] = nk[k] / double(n);
      if (nk[k] > 0) {  // a component with no responsibility keeps its mean and variance
        g.m[k] = means[k];
        g.v[k] = std::max(vk[k] / nk[k], kVarFloor);
      }
    }
  }
  g.prepare();
  const int low = g.m[1] < g.m[0] ? 1 : 0;
  const bool spread = g.m[0] != g.m[1];  // SPEC: equal final means carry no evidence: all clean
  for (int64_t i = 0; i < n; ++i) {
    const Resp r = posterior(xv[i], g.m[0], g.m[1], 2 * g.v[0], 2 * g.v[1], g.lognorm[0], g.lognorm[1]);
    const double p = low ? r.r1 : r.r0;
    clean[i * clean_stride] = (!spread || p > 0.5) ? T(1) : T(0);
    if (post) post[i] = T(spread ? p : 0.5);
  }
}

// ------------------------------------------------------------------ glue forward / upstream

// Rows of the glue workspace (srem_kernels/backends/glue.py ROWS).
enum Row { kEnergyI2t, kEnergyT2i, kEnergy, kClean, kWeight, kLossHard, kPerSample, kHingeR, kHingeC, kRows };
enum Select { kGiven = 0, kGmm = 1, kNone = 2 };
enum Reduction { kMean = 0, kSum = 1, kNoReduction = 2 };

template <class T>
void glue_forward(int64_t B, const T* lse_r, const T* lse_c, const T* pos, const T* hard_r, const T* hard_c,
                  const T* sce, const T* cbcl, const T* margin, int64_t margin_stride, T margin_value,
                  const T* given, int64_t given_stride, const T* weight, const T* factor, int select,
                  bool sce_weight, int reduction, T tau, T lambda_hard, T lambda_cbcl, T* ws, T* loss) {
  T* row[kRows];
  for (int k = 0; k < kRows; ++k) row[k] = ws + k * B;
  for (int64_t i = 0; i < B; ++i) {
    row[kEnergyI2t][i] = -tau * lse_r[i];
    row[kEnergyT2i][i] = -tau * lse_c[i];
    row[kEnergy][i] = -tau * (lse_r[i] + lse_c[i]) / T(2);
  }
  T* c = row[kClean];
  if (select == kGiven) {
    for (int64_t i = 0; i < B; ++i) c[i] = given[i * given_stride];
  } else if (select == kGmm) {
    gmm_filtration<T>(row[kEnergy], B, 1, c, 1, nullptr);
  } else {
    std::fill(c, c + B, T(1));
  }
  if (factor) {  // a sensitivity mode's factor on c (srem_kernels/sensitivity.py)
    for (int64_t i = 0; i < B; ++i) c[i] *= factor[i];
  }
  double total = 0;
  for (int64_t i = 0; i < B; ++i) {
    const T w = weight ? weight[i] : sce_weight ? std::exp(-sce[i]) : T(1);
    const T m = margin ? margin[i * margin_stride] : margin_value;
    const T x_r = m - pos[i] + hard_r[i], x_c = m - pos[i] + hard_c[i];
    const T lh = std::max(x_r, T(0)) + std::max(x_c, T(0));
    const T hw = lambda_hard * c[i] * w;  // λ_hard c_i w_i: the hinge's weight in L_i
    const T li = hw * lh + lambda_cbcl * cbcl[i];
    row[kWeight][i] = w;
    row[kLossHard][i] = lh;
    row[kPerSample][i] = li;
    row[kHingeR][i] = x_r > T(0) ? hw : T(0);
    row[kHingeC][i] = x_c > T(0) ? hw : T(0);
    total += li;
  }
  *loss = reduction == kMean ? T(total / double(B)) : T(total);
}

// g_cbcl, k_r, k_c (rows 0, 1, 2 of out) from the upstream gradient of the loss: a scalar for
// mean/sum (scaled by `scale`: 1/B or 1), a B-vector for reduction "none".
template <class T>
void glue_upstream(int64_t B, const T* g, int64_t g_stride, T scale, T lambda_cbcl, const T* hinge_r,
                   const T* hinge_c, T* out) {
  for (int64_t i = 0; i < B; ++i) {
    const T gi = g[i * g_stride] * scale;
    out[i] = gi * lambda_cbcl;
    out[B + i] = gi * hinge_r[i];
    out[2 * B + i] = gi * hinge_c[i];
  }
}

}  // namespace

extern "C" void srem_cpu_glue_forward_f32(int64_t B, const float* lse_r, const float* lse_c, const float* pos,
                                          const float* hard_r, const float* hard_c, const float* sce,
                                          const float* cbcl, float margin, int select, int sce_weight, int reduction,
                                          float tau, float lambda_hard, float lambda_cbcl, float* ws, float* loss) {
  glue_forward<float>(B, lse_r, lse_c, pos, hard_r, hard_c, sce, cbcl, nullptr, 0, margin, nullptr, 0, nullptr,
                      nullptr, select, sce_weight != 0, reduction, tau, lambda_hard, lambda_cbcl, ws, loss);
}

extern "C" void srem_cpu_glue_upstream_f32(int64_t B, const float* g, int64_t g_stride, float scale,
                                           float lambda_cbcl, const float* ws, float* out) {
  glue_upstream<float>(B, g, g_stride, scale, lambda_cbcl, ws + kHingeR * B, ws + kHingeC * B, out);
}

// Called from module.cpp's PYBIND11_MODULE. Vectors: pointers of `double_` ? fp64 : fp32.
void register_glue(py::module_& m) {
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("nonfinite", &nonfinite, "whether a strided 2-D tensor holds NaN/Inf (dtype 0 fp32, 1 fp16, 2 bf16, 3 fp64)",
        nogil);
  m.def("outside_unit", [](uintptr_t x, int64_t n, int64_t stride, bool double_) {
    return double_ ? outside_unit(cptr<double>(x), n, stride) : outside_unit(cptr<float>(x), n, stride);
  }, nogil);
  m.def("gmm_filtration", [](uintptr_t x, int64_t n, int64_t stride, uintptr_t clean, int64_t clean_stride,
                             uintptr_t post, bool double_) {
    if (double_)
      gmm_filtration(cptr<double>(x), n, stride, mptr<double>(clean), clean_stride, mptr<double>(post));
    else
      gmm_filtration(cptr<float>(x), n, stride, mptr<float>(clean), clean_stride, mptr<float>(post));
  }, nogil);
  m.def("glue_forward", [](int64_t B, uintptr_t lse_r, uintptr_t lse_c, uintptr_t pos, uintptr_t hard_r,
                           uintptr_t hard_c, uintptr_t sce, uintptr_t cbcl, uintptr_t margin, int64_t margin_stride,
                           double margin_value, uintptr_t given, int64_t given_stride, uintptr_t weight,
                           uintptr_t factor, int select, bool sce_weight, int reduction, double tau,
                           double lambda_hard, double lambda_cbcl, uintptr_t ws, uintptr_t loss, bool double_) {
    if (double_)
      glue_forward<double>(B, cptr<double>(lse_r), cptr<double>(lse_c), cptr<double>(pos), cptr<double>(hard_r),
                           cptr<double>(hard_c), cptr<double>(sce), cptr<double>(cbcl), cptr<double>(margin),
                           margin_stride, margin_value, cptr<double>(given), given_stride, cptr<double>(weight),
                           cptr<double>(factor), select, sce_weight, reduction, tau, lambda_hard, lambda_cbcl,
                           mptr<double>(ws), mptr<double>(loss));
    else
      glue_forward<float>(B, cptr<float>(lse_r), cptr<float>(lse_c), cptr<float>(pos), cptr<float>(hard_r),
                          cptr<float>(hard_c), cptr<float>(sce), cptr<float>(cbcl), cptr<float>(margin),
                          margin_stride, float(margin_value), cptr<float>(given), given_stride, cptr<float>(weight),
                          cptr<float>(factor), select, sce_weight, reduction, float(tau), float(lambda_hard),
                          float(lambda_cbcl), mptr<float>(ws), mptr<float>(loss));
  }, nogil);
  m.def("glue_upstream", [](int64_t B, uintptr_t g, int64_t g_stride, double scale, double lambda_cbcl,
                            uintptr_t hinge_r, uintptr_t hinge_c, uintptr_t out, bool double_) {
    if (double_)
      glue_upstream<double>(B, cptr<double>(g), g_stride, scale, lambda_cbcl, cptr<double>(hinge_r),
                            cptr<double>(hinge_c), mptr<double>(out));
    else
      glue_upstream<float>(B, cptr<float>(g), g_stride, float(scale), float(lambda_cbcl), cptr<float>(hinge_r),
                           cptr<float>(hinge_c), mptr<float>(out));
  }, nogil);
}
