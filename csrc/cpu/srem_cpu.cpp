// Fused CPU kernels of the SREM loss (SPEC.md), the `cpu` backend's B×B work.
//
// The caller (srem_kernels/cpu_srem.py) streams the similarity matrix in row panels: it forms
// P = S[I, :] (and, for the second pass, Q = S[:, I]ᵀ) with torch's GEMM, then hands each panel
// here. Every function below runs over one panel, multi-threaded with each thread owning the rows
// (or columns) it writes, and keeps all arithmetic in fp32 in the cancellation-free forms of
// tests/dense_kernels.py: a row's max m apart from log l, l - 1 summed without one maximal
// element, every -log P written as (m - Z) + log l, log1p(eps - P) in the complementary term.
//
// Built with -ffp-contract=off: an FMA in (m - S/tau) + log l would skip the rounding of Z that
// m was taken from, and the max element's -log P would no longer be exactly log l.
//
// C ABI: raw pointers, sizes and leading dimensions (unit column stride); pybind11 binds them.

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// By value (std::max returns a reference, which keeps `omp simd` loops from vectorising).
// Same NaN behaviour as std::max / std::min: the first argument wins unless the comparison holds.
// Forced: a call left in the loop body (GCC declines to inline into a large loop) stops vectorisation.
#define SREM_INLINE inline __attribute__((always_inline))
SREM_INLINE float vmax(float a, float b) { return a < b ? b : a; }
SREM_INLINE float vmin(float a, float b) { return b < a ? b : a; }

SREM_INLINE float as_float(int32_t i) { return __builtin_bit_cast(float, i); }
SREM_INLINE int32_t as_int(float f) { return __builtin_bit_cast(int32_t, f); }

// exp and log1p without branches or libm calls, so the loops around them vectorise (Cephes
// polynomials, about 1 ulp). NaN propagates; exp(x) for x below -87.3 flushes to 0.
SREM_INLINE float fast_exp(float x) {
  const float xc = vmin(vmax(x, -87.3f), 88.3f);
  // round to nearest by the 1.5·2^23 trick (|x·log2 e| < 2^22 here): floorf blocks vectorisation
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  y = y * as_float((static_cast<int32_t>(n) + 127) << 23);
  y = x < -87.3f ? 0.0f : y;
  y = x > 88.3f ? kInf : y;
  return x != x ? x : y;
}

// log(u) for u > 0 (u = 0 gives -inf, u < 0 NaN).
SREM_INLINE float fast_log(float u) {
  const int32_t bits = as_int(u);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = as_float((bits & 0x807fffff) | 0x3f000000);  // [0.5, 1)
  const bool lo = m < 0.707106781186547524f;
  e = lo ? e - 1.0f : e;
  m = lo ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  float r = m + y + 0.693359375f * e;
  r = u == 0.0f ? -kInf : r;
  r = u < 0.0f ? std::numeric_limits<float>::quiet_NaN() : r;
  return u != u ? u : r;
}

// log1p(x) = log(u) * x / (u - 1) with u = 1 + x (Goldberg): exact to a few ulp for tiny x.
SREM_INLINE float fast_log1p(float x) {
  const float u = 1.0f + x;
  const float r = fast_log(u) * (x / (u - 1.0f));
  return u == 1.0f ? x : r;
}

// q = 1 - p for p = exp(-nl), nl >= 0, accurate also as p -> 1 (Kahan's expm1 trick: the
// rounding of p cancels between p - 1 and log p). 1 - p itself loses an off-diagonal p that
// rounds to 1 — a confidently wrong pair — where the reference's 1 - p + eps is ~eps.
SREM_INLINE float one_minus(float p, float nl) {
  const float k = (1.0f - p) * (nl / -fast_log(p));
  const float q = p < 0.5f ? 1.0f - p : k;
  return p == 1.0f ? nl : q;
}

// log(1 - p + eps): log1p(eps - p) keeps a small p, log(q + eps) a p close to 1.
SREM_INLINE float log_q_eps(float p, float q, float eps) {
  return p < 0.5f ? fast_log1p(eps - p) : fast_log(q + eps);
}

// Subnormal fp32 results (probabilities below 1e-38 times small factors) cost ~100 cycles each on
// x86; flushing them to zero changes nothing above 1e-38 and keeps the loops at SIMD speed.
template <class F>
void flush_subnormals(F&& f) {
#if defined(__SSE__)
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | 0x8040);  // FTZ | DAZ
  f();
  _mm_setcsr(csr);
#else
  f();
#endif
}

// Rows [0, n) split into `threads` contiguous ranges, one per thread: each owns what it writes.
template <class F>
void parallel_for(int64_t n, int threads, F body) {
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, n));
  auto f = [&body](int64_t lo, int64_t hi) { flush_subnormals([&] { body(lo, hi); }); };
  if (t == 1) {
    f(int64_t{0}, n);
    return;
  }
  const int64_t chunk = (n + t - 1) / t;
#ifdef _OPENMP
  // torch's own libgomp (same SONAME, already loaded): one thread pool with torch's GEMMs, not two
  // pools spinning against each other on few cores.
#pragma omp parallel for schedule(static, 1) num_threads(static_cast<int>(t))
  for (int64_t k = 0; k < t; ++k) {
    const int64_t lo = k * chunk, hi = std::min(n, lo + chunk);
    if (lo < hi) f(lo, hi);
  }
#else
  std::vector<std::thread> pool;
  for (int64_t k = 1; k < t; ++k) {
    const int64_t lo = k * chunk, hi = std::min(n, lo + chunk);
    if (lo < hi) pool.emplace_back(f, lo, hi);
  }
  f(int64_t{0}, std::min(n, chunk));
  for (auto& th : pool) th.join();
#endif
}

// NaN-propagating max with the lowest index on ties (SPEC: hardest negative; a NaN row points
// at its first NaN). Returns the value; *at gets its index (-1 when every entry is excluded).
SREM_INLINE float hardest(const float* p, int64_t n, int64_t skip, int64_t* at) {
  float best = -kInf;
  bool nan = false;
#pragma omp simd reduction(max : best) reduction(| : nan)
  for (int64_t j = 0; j < n; ++j) {
    const float v = j == skip ? -kInf : p[j];
    best = vmax(best, v);
    nan |= v != v;
  }
  if (nan) best = std::numeric_limits<float>::quiet_NaN();
  *at = -1;
  for (int64_t j = 0; j < n; ++j) {
    if (j == skip) continue;
    if (p[j] == best || (nan && p[j] != p[j])) {
      *at = j;
      break;
    }
  }
  return best;
}

struct RowSums {
  float e_r, e_c, s, cb, ar, ac, ar_at, ac_at;
};

// The second pass's sums for sample i over row p = S[i, :] and q = S[:, i]. A function of its own
// (not inlined into the thread lambdas) so that one vectorised copy serves every caller.
__attribute__((noinline)) RowSums forward_row(const float* __restrict p, const float* __restrict q, int64_t B,
                                              int64_t i, float inv_tau, float eps, float one_if_unbiased, float mr,
                                              float lr, float mc, float lc, int64_t atr, int64_t atc,
                                              const float* __restrict m_r, const float* __restrict logl_r,
                                              const float* __restrict m_c, const float* __restrict logl_c) {
  float e_r = 0, e_c = 0, s = 0, cb = 0, ar = 0, ac = 0, ar_at = 0, ac_at = 0;
#pragma omp simd reduction(+ : e_r, e_c, s, cb, ar, ac, ar_at, ac_at)
  for (int64_t j = 0; j < B; ++j) {
    const float z = p[j] * inv_tau, zq = q[j] * inv_tau;
    const float nlr = vmax((mr - z) + lr, 0.0f);            // -log Pr_ij
    const float nlc = vmax((m_c[j] - z) + logl_c[j], 0.0f);  // -log Pc_ij
    const float nlr_q = vmax((m_r[j] - zq) + logl_r[j], 0.0f);  // -log Pr_ji
    const float nlc_q = vmax((mc - zq) + lc, 0.0f);             // -log Pc_ji
    const float pr = fast_exp(-nlr), pc = fast_exp(-nlc), pr_q = fast_exp(-nlr_q), pc_q = fast_exp(-nlc_q);
    e_r += pr * nlr;
    e_c += pc_q * nlc_q;
    s += pr * nlc_q + pc_q * nlr;
    const float qr = one_minus(pr, nlr), qc_q = one_minus(pc_q, nlc_q);  // 1 - Pr_ij, 1 - Pc_ji
    const float b_r = vmax(one_minus(pc, nlc), one_if_unbiased), b_c = vmax(one_minus(pr_q, nlr_q), one_if_unbiased);
    const bool off = j != i;
    cb += off ? -(b_r * log_q_eps(pr, qr, eps)) - b_c * log_q_eps(pc_q, qc_q, eps) : 0.0f;
    const float er = off ? b_r * pr / (qr + eps) : 0.0f, ec = off ? b_c * pc_q / (qc_q + eps) : 0.0f;
    ar += j == atr ? 0.0f : er;
    ar_at += j == atr ? er : 0.0f;
    ac += j == atc ? 0.0f : ec;
    ac_at += j == atc ? ec : 0.0f;
  }
  return {e_r, e_c, s, cb, ar, ac, ar_at, ac_at};
}

// dS for row i of the panel (d may alias p: each element is read before it is written).
__attribute__((noinline)) void backward_row(const float* p, float* d, int64_t B, int64_t i, float inv_tau, float eps,
                                            float one_if_unbiased, float mr, float lr, float gi, float ari,
                                            float ari_rest, int64_t atr, const float* __restrict mc,
                                            const float* __restrict lc, const float* __restrict gc,
                                            const float* __restrict ac, const float* __restrict acr,
                                            const int64_t* __restrict atc) {
#pragma omp simd
  for (int64_t j = 0; j < B; ++j) {
    const float z = p[j] * inv_tau;
    const float nlr = vmax((mr - z) + lr, 0.0f), nlc = vmax((mc[j] - z) + lc[j], 0.0f);
    const float pr = fast_exp(-nlr), pc = fast_exp(-nlc);
    const float qr = one_minus(pr, nlr), qc = one_minus(pc, nlc);
    const float b_r = vmax(qc, one_if_unbiased), b_c = vmax(qr, one_if_unbiased);
    const bool off = j != i;
    const float e_r = off ? b_r * pr / (qr + eps) : 0.0f;
    const float e_c = off ? b_c * pc / (qc + eps) : 0.0f;
    // E - P A at the maximal element of a row (column) whose P is close to 1 — a confident
    // off-diagonal, where E ~ 1/(1 - P + eps) is huge — cancels: E - P (A_rest + E) =
    // E (1 - P) - P A_rest instead. Elsewhere P <= 1 - P_max keeps P A small.
    const bool mr_j = j == atr, mc_j = atc[j] == i;
    const float row = mr_j ? e_r * qr - pr * ari_rest : e_r - pr * ari;
    const float col = mc_j ? e_c * qc - pc * acr[j] : e_c - pc * ac[j];
    d[j] = (gi * row + gc[j] * col) * inv_tau;
  }
}


}  // namespace

extern "C" {

// Pass 1 over the panel P = S[row0 : row0+rows, :] (B columns, leading dimension ld).
// Rows: m_r (in Z units), logl_r, at_r (the maximal element left out of log l: the row's first
// argmax), pos, hard_i2t and its index, complete for these rows.
// Columns: folds the panel into the running (m_c, rest_c, at_c, hard_t2i, index), rest_c the sum of
// exp(Z - m_c) over all but one maximal element so far; `first` starts them. m_c == nullptr: rows
// only (the column pointers are then not read).
void srem_cpu_stats_panel(const float* P, int64_t ld, int64_t rows, int64_t B, int64_t row0, float inv_tau,
                          float* m_r, float* logl_r, int64_t* at_r, float* pos, float* hard_r, int64_t* hard_r_idx,
                          float* m_c, float* rest_c, int64_t* at_c, float* hard_c, int64_t* hard_c_idx, int first,
                          int threads) {
  parallel_for(rows, threads, [=](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
      const float* p = P + a * ld;
      const int64_t i = row0 + a;
      float mx = -kInf;
#pragma omp simd reduction(max : mx)
      for (int64_t j = 0; j < B; ++j) mx = vmax(mx, p[j]);
      int64_t at = 0;
      while (at < B - 1 && !(p[at] == mx)) ++at;  // first maximal element
      const float m = mx * inv_tau;
      float rest = 0.0f;
#pragma omp simd reduction(+ : rest)
      for (int64_t j = 0; j < B; ++j) rest += j == at ? 0.0f : fast_exp(p[j] * inv_tau - m);
      m_r[i] = m;
      logl_r[i] = std::log1p(rest);
      at_r[i] = at;
      pos[i] = p[i];
      hard_r[i] = hardest(p, B, i, &hard_r_idx[i]);
    }
  });
  if (m_c == nullptr) return;  // rows only (a row range of the distributed loss)
  parallel_for(B, threads, [=](int64_t c0, int64_t c1) {
    const int64_t n = c1 - c0;
    std::vector<float> pm_v(n, -kInf), prest_v(n, 0.0f), ph_v(n, -kInf);
    std::vector<int64_t> pat_v(n, 0), phi_v(n, -1);
    float *pm = pm_v.data(), *prest = prest_v.data(), *ph = ph_v.data();
    int64_t *pat = pat_v.data(), *phi = phi_v.data();
    for (int64_t a = 0; a < rows; ++a) {  // rows in order: strict > keeps the lowest index
      const float* p = P + a * ld + c0;
      const int64_t i = row0 + a;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const float v = p[j];
        const bool gt = v > pm[j];
        pm[j] = gt ? v : pm[j];
        pat[j] = gt ? a : pat[j];
        const bool hit = c0 + j != i && ph[j] == ph[j] && (v > ph[j] || v != v);
        ph[j] = hit ? v : ph[j];
        phi[j] = hit ? i : phi[j];
      }
    }
    for (int64_t a = 0; a < rows; ++a) {
      const float* p = P + a * ld + c0;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const float e = fast_exp(p[j] * inv_tau - pm[j] * inv_tau);
        prest[j] += pat[j] == a ? 0.0f : e;
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t c = c0 + j;
      const float pmz = pm[j] * inv_tau;
      // NaN columns: pm ignores NaN, prest carries it.
      if (first) {
        m_c[c] = pmz;
        rest_c[c] = prest[j];
        at_c[c] = row0 + pat[j];
        hard_c[c] = ph[j];
        hard_c_idx[c] = phi[j];
      } else {
        if (pmz > m_c[c]) {
          rest_c[c] = prest[j] + (rest_c[c] + 1.0f) * std::exp(m_c[c] - pmz);
          m_c[c] = pmz;
          at_c[c] = row0 + pat[j];
        } else {
          rest_c[c] = rest_c[c] + (prest[j] + 1.0f) * std::exp(pmz - m_c[c]);
        }
        if (hard_c[c] == hard_c[c] && phi[j] >= 0 && (ph[j] > hard_c[c] || ph[j] != ph[j] || hard_c_idx[c] < 0)) {
          hard_c[c] = ph[j];
          hard_c_idx[c] = phi[j];
        }
      }
    }
  });
}

// Pass 2 over P = S[I, :] and Q = S[:, I]ᵀ (Q[a, j] = S[j, row0 + a]): every statistic of sample
// i = row0 + a that needs the probabilities — row i of P for its i2t problem, row a of Q (column
// i of S) for its t2i problem, and both for sce, which couples (i, j) with (j, i).
// A_r_rest / A_c_rest: A_r / A_c without the term of the row's (column's) maximal element at_r
// (at_c), which the backward needs apart (see there).
void srem_cpu_forward_panel(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t rows, int64_t B,
                            int64_t row0, float inv_tau, float eps, int bias, const float* m_r, const float* logl_r,
                            const float* m_c, const float* logl_c, const int64_t* at_r, const int64_t* at_c,
                            float* ce_i2t, float* ce_t2i, float* ent_i2t, float* ent_t2i, float* sce, float* cbcl,
                            float* A_r, float* A_c, float* A_r_rest, float* A_c_rest, int threads) {
  const float one_if_unbiased = bias ? 0.0f : 1.0f;
  parallel_for(rows, threads, [=](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
      const float* p = P + a * ldp;
      const float* q = Q + a * ldq;
      const int64_t i = row0 + a;
      const float mr = m_r[i], lr = logl_r[i], mc = m_c[i], lc = logl_c[i];
      const RowSums r = forward_row(p, q, B, i, inv_tau, eps, one_if_unbiased, mr, lr, mc, lc, at_r[i], at_c[i], m_r,
                                    logl_r, m_c, logl_c);
      const float e_r = r.e_r, e_c = r.e_c, s = r.s, cb = r.cb, ar = r.ar, ac = r.ac, ar_at = r.ar_at, ac_at = r.ac_at;
      ce_i2t[i] = (mr - p[i] * inv_tau) + lr;
      ce_t2i[i] = (mc - q[i] * inv_tau) + lc;
      ent_i2t[i] = e_r;
      ent_t2i[i] = e_c;
      sce[i] = 0.5f * s;
      cbcl[i] = cb;
      A_r[i] = ar + ar_at;
      A_c[i] = ac + ac_at;
      A_r_rest[i] = ar;
      A_c_rest[i] = ac;
    }
  });
}

// Backward over P = S[I, :]: dS[I, :] into D (may alias P), per fused.py's contract:
//   dS_ij = ( g_i (E_r_ij - Pr_ij A_r_i) + g_j (E_c_ij - Pc_ij A_c_j) ) / tau
//           - (k_r_i + k_c_i) [i = j] + k_r_i [j = hard_i2t_index_i] + k_c_j [i = hard_t2i_index_j]
void srem_cpu_backward_panel(const float* P, int64_t ldp, float* D, int64_t ldd, int64_t rows, int64_t B, int64_t row0,
                             float inv_tau, float eps, int bias, const float* m_r, const float* logl_r,
                             const float* m_c, const float* logl_c, const int64_t* at_r, const int64_t* at_c,
                             const float* A_r, const float* A_c, const float* A_r_rest, const float* A_c_rest,
                             const float* g, const float* k_r, const float* k_c, const int64_t* hard_r_idx,
                             const int64_t* hard_c_idx, int threads) {
  const float one_if_unbiased = bias ? 0.0f : 1.0f;
  parallel_for(rows, threads, [=](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
      const float* p = P + a * ldp;
      float* d = D + a * ldd;
      const int64_t i = row0 + a;
      const float mr = m_r[i], lr = logl_r[i], gi = g[i], ari = A_r[i], ari_rest = A_r_rest[i];
      const int64_t atr = at_r[i];
      backward_row(p, d, B, i, inv_tau, eps, one_if_unbiased, mr, lr, gi, ari, ari_rest, atr, m_c, logl_c, g, A_c,
                   A_c_rest, at_c);
      d[i] -= k_r[i] + k_c[i];
      if (hard_r_idx[i] >= 0 && hard_r_idx[i] < B) d[hard_r_idx[i]] += k_r[i];
    }
  });
  for (int64_t j = 0; j < B; ++j) {  // the t2i hinges whose hardest image lies in this panel
    const int64_t r = hard_c_idx[j] - row0;
    if (r >= 0 && r < rows) D[r * ldd + j] += k_c[j];
  }
}

}  // extern "C"

namespace py = pybind11;

template <class T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

void register_glue(py::module_& m);  // glue.cpp: value checks, GMM, the glue's B-vector work

PYBIND11_MODULE(_srem_cpu, m) {
  m.doc() = "Fused CPU kernels of the SREM loss over row panels of S (raw pointers; see srem_kernels/cpu_srem.py)";
  register_glue(m);
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("stats_panel", [](uintptr_t P, int64_t ld, int64_t rows, int64_t B, int64_t row0, float inv_tau, uintptr_t m_r,
                          uintptr_t logl_r, uintptr_t at_r, uintptr_t pos, uintptr_t hard_r, uintptr_t hard_r_idx,
                          uintptr_t m_c, uintptr_t rest_c, uintptr_t at_c, uintptr_t hard_c, uintptr_t hard_c_idx,
                          bool first, int threads) {
    srem_cpu_stats_panel(ptr<const float>(P), ld, rows, B, row0, inv_tau, ptr<float>(m_r), ptr<float>(logl_r),
                         ptr<int64_t>(at_r), ptr<float>(pos), ptr<float>(hard_r), ptr<int64_t>(hard_r_idx),
                         ptr<float>(m_c), ptr<float>(rest_c), ptr<int64_t>(at_c), ptr<float>(hard_c),
                         ptr<int64_t>(hard_c_idx), first, threads);
  }, nogil);
  m.def("forward_panel", [](uintptr_t P, int64_t ldp, uintptr_t Q, int64_t ldq, int64_t rows, int64_t B, int64_t row0,
                            float inv_tau, float eps, bool bias, uintptr_t m_r, uintptr_t logl_r, uintptr_t m_c,
                            uintptr_t logl_c, uintptr_t at_r, uintptr_t at_c, uintptr_t ce_i2t, uintptr_t ce_t2i,
                            uintptr_t ent_i2t, uintptr_t ent_t2i, uintptr_t sce, uintptr_t cbcl, uintptr_t A_r,
                            uintptr_t A_c, uintptr_t A_r_rest, uintptr_t A_c_rest, int threads) {
    srem_cpu_forward_panel(ptr<const float>(P), ldp, ptr<const float>(Q), ldq, rows, B, row0, inv_tau, eps, bias,
                           ptr<const float>(m_r), ptr<const float>(logl_r), ptr<const float>(m_c),
                           ptr<const float>(logl_c), ptr<const int64_t>(at_r), ptr<const int64_t>(at_c),
                           ptr<float>(ce_i2t), ptr<float>(ce_t2i), ptr<float>(ent_i2t), ptr<float>(ent_t2i),
                           ptr<float>(sce), ptr<float>(cbcl), ptr<float>(A_r), ptr<float>(A_c), ptr<float>(A_r_rest),
                           ptr<float>(A_c_rest), threads);
  }, nogil);
  m.def("backward_panel", [](uintptr_t P, int64_t ldp, uintptr_t D, int64_t ldd, int64_t rows, int64_t B, int64_t row0,
                             float inv_tau, float eps, bool bias, uintptr_t m_r, uintptr_t logl_r, uintptr_t m_c,
                             uintptr_t logl_c, uintptr_t at_r, uintptr_t at_c, uintptr_t A_r, uintptr_t A_c,
                             uintptr_t A_r_rest, uintptr_t A_c_rest, uintptr_t g, uintptr_t k_r, uintptr_t k_c,
                             uintptr_t hard_r_idx, uintptr_t hard_c_idx, int threads) {
    srem_cpu_backward_panel(ptr<const float>(P), ldp, ptr<float>(D), ldd, rows, B, row0, inv_tau, eps, bias,
                            ptr<const float>(m_r), ptr<const float>(logl_r), ptr<const float>(m_c),
                            ptr<const float>(logl_c), ptr<const int64_t>(at_r), ptr<const int64_t>(at_c),
                            ptr<const float>(A_r), ptr<const float>(A_c), ptr<const float>(A_r_rest),
                            ptr<const float>(A_c_rest), ptr<const float>(g),
                            ptr<const float>(k_r), ptr<const float>(k_c), ptr<const int64_t>(hard_r_idx),
                            ptr<const int64_t>(hard_c_idx), threads);
  }, nogil);
}
