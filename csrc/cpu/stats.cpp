// Pass 1 of the SREM loss over a row panel of S: row and column max, log l (split form: the sum of
// exp(Z - m) over all but one maximal element), hardest negatives, S_ii. See kernels.h.

#include <cmath>

#include "kernels.h"
#include "vecmath.h"

namespace srem {
namespace {

// First j in [from, n), j != skip, with p[j] == v (v NaN: p[j] NaN); n when there is none. Chunks of
// 64 are tested with one vector OR (no index test in it: `skip` is stepped over after a hit).
int64_t first_equal(const float* p, int64_t from, int64_t n, float v, int64_t skip) {
  if (v != v) {  // NaN inputs only (check_finite=False)
    for (int64_t j = from; j < n; ++j)
      if (j != skip && p[j] != p[j]) return j;
    return n;
  }
  for (int64_t c = from; c < n; c += 64) {
    const int64_t e = std::min(n, c + 64);
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t j = c; j < e; ++j) hit |= p[j] == v;
    if (!hit) continue;
    for (int64_t j = c; j < e; ++j)
      if (p[j] == v && j != skip) return j;
  }
  return n;
}

// max over p[lo, hi) ignoring NaN (as std::max does), and whether a NaN is there
struct MaxNaN {
  float m;
  int nan;
};

SREM_INLINE MaxNaN max_nan(const float* __restrict p, int64_t lo, int64_t hi) {
  float m = -kInf;
  int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : nan)
  for (int64_t j = lo; j < hi; ++j) {
    m = vmax(m, p[j]);
    nan |= p[j] != p[j];
  }
  return {m, nan};
}

// sum of exp(p[j] inv_tau - m) over [lo, hi)
SREM_INLINE float exp_sum(const float* __restrict p, int64_t lo, int64_t hi, float inv_tau, float m) {
  float rest = 0.0f;
#pragma omp simd reduction(+ : rest)
  for (int64_t j = lo; j < hi; ++j) rest += exp_neg(p[j] * inv_tau - m);
  return rest;
}

struct RowStats {
  float m, logl, hard;
  int64_t at, hard_at;
};

// Row p = S[i, :] (B entries). m = max Z ignoring NaN (as std::max does), at its first index;
// hard = max_{j≠i} S_ij, NaN when the row holds a NaN off the diagonal, hard_at its first index
// (ties: lowest; NaN: the first NaN). logl = log1p(sum_{j≠at} exp(Z_ij - m)). The loops run on
// either side of the element they leave out, with no index test inside.
RowStats row_stats(const float* __restrict p, int64_t B, int64_t i, float inv_tau) {
  const MaxNaN lo = max_nan(p, 0, i), hi = max_nan(p, i + 1, B);
  const float hm = vmax(lo.m, hi.m);
  const bool nans = lo.nan | hi.nan;
  RowStats r;
  const float mx = vmax(hm, p[i]);
  if (p[i] > hm) {
    r.at = i;  // an earlier equal entry would be off-diagonal and above hm
  } else {
    r.at = first_equal(p, 0, B, mx, -1);
    if (r.at == B) r.at = B - 1;  // every entry NaN
  }
  r.hard = nans ? kNaN : hm;
  if (nans) {
    r.hard_at = first_equal(p, 0, B, kNaN, i);
  } else if (r.at != i) {
    r.hard_at = r.at;  // the first entry equal to mx = hm, and not the diagonal
  } else {
    r.hard_at = first_equal(p, p[i] > hm ? 0 : i + 1, B, hm, i);
  }
  if (r.hard_at == B) r.hard_at = -1;
  r.m = mx * inv_tau;
  const float rest = exp_sum(p, 0, r.at, inv_tau, r.m) + exp_sum(p, r.at + 1, B, inv_tau, r.m);
  r.logl = std::log1p(rest);
  return r;
}

constexpr int64_t kColumnBlock = 512;  // columns per sweep: the running arrays stay in L1
constexpr int64_t kRowChunk = 256;     // rows per sweep: a chunk of a block (512 KiB) stays in L2

// Folds column statistics (Z max m, rest = sum of exp(Z - m) over all but one maximal element, its
// index at, hardest off-diagonal value and index) of later rows into those of earlier ones: the
// online log-sum-exp of streamed panels; strict > keeps the lowest index on ties.
SREM_INLINE void fold(float& m, float& rest, int64_t& at, float& hard, int64_t& hard_at, float m2, float rest2,
                      int64_t at2, float hard2, int64_t hard_at2) {
  if (m2 > m) {  // the old maximal element joins the sum
    rest = rest2 + (rest + 1.0f) * std::exp(m - m2);
    m = m2;
    at = at2;
  } else {
    rest = rest + (rest2 + 1.0f) * std::exp(m2 - m);
  }
  if (hard == hard && hard_at2 >= 0 && (hard2 > hard || hard2 != hard2 || hard_at < 0)) {
    hard = hard2;
    hard_at = hard_at2;
  }
}

// Row a's entries v = p[j], j in [lo, hi), folded into the columns' running max (pm, pat: row a) and
// hardest off-diagonal (ph, phi: sample ii; NaN sticks, the first NaN wins); DIAG: the diagonal
// column, whose entry joins the max only. Rows go in order, strict > keeps the lowest index.
template <bool DIAG>
SREM_INLINE void column_max(const float* __restrict p, int64_t lo, int64_t hi, int32_t ai, int32_t ii,
                            float* __restrict pm, int32_t* __restrict pat, float* __restrict ph,
                            int32_t* __restrict phi) {
#pragma omp simd
  for (int64_t j = lo; j < hi; ++j) {
    const float v = p[j];
    const bool gt = v > pm[j];
    pm[j] = gt ? v : pm[j];
    pat[j] = gt ? ai : pat[j];
    if constexpr (!DIAG) {
      const bool hit = (ph[j] == ph[j]) & ((v > ph[j]) | (v != v));
      ph[j] = hit ? v : ph[j];
      phi[j] = hit ? ii : phi[j];
    }
  }
}

// Rows [r0, r1) of the panel, columns [c0, c0 + n): their statistics into the arrays (Z units).
void column_chunk(const float* P, int64_t ld, int64_t r0, int64_t r1, int64_t row0, int64_t c0, int64_t n,
                  float inv_tau, float* __restrict pm, float* __restrict prest, int32_t* __restrict pat,
                  float* __restrict ph, int32_t* __restrict phi) {
  for (int64_t j = 0; j < n; ++j) pm[j] = -kInf, prest[j] = 0.0f, ph[j] = -kInf, pat[j] = 0, phi[j] = -1;
  for (int64_t a = r0; a < r1; ++a) {  // rows in order: strict > keeps the lowest index
    const float* __restrict p = P + a * ld + c0;
    const int64_t diag = row0 + a - c0;  // column (in this block) of the diagonal element, if any
    const int32_t ai = static_cast<int32_t>(a), ii = static_cast<int32_t>(row0 + a);
    if (diag < 0 || diag >= n) {
      column_max<false>(p, 0, n, ai, ii, pm, pat, ph, phi);
    } else {  // either side of the diagonal, which the hardest negatives leave out
      column_max<false>(p, 0, diag, ai, ii, pm, pat, ph, phi);
      column_max<true>(p, diag, diag + 1, ai, ii, pm, pat, ph, phi);
      column_max<false>(p, diag + 1, n, ai, ii, pm, pat, ph, phi);
    }
  }
  for (int64_t j = 0; j < n; ++j) pm[j] *= inv_tau;
  for (int64_t a = r0; a < r1; ++a) {
    const float* __restrict p = P + a * ld + c0;
    const int32_t ai = static_cast<int32_t>(a);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {  // evaluated unconditionally: a conditional exp becomes masked loads
      const float e = exp_neg(p[j] * inv_tau - pm[j]);
      prest[j] += pat[j] == ai ? 0.0f : e;
    }
  }
}

// The panel's column statistics for columns [c0, c1) (c1 - c0 <= kColumnBlock), folded into the
// running ones (`first`: started) chunk by chunk. NaN columns: pm ignores NaN, prest carries it.
void column_stats(const float* P, int64_t ld, int64_t rows, int64_t row0, int64_t c0, int64_t c1, float inv_tau,
                  float* m_c, float* rest_c, int64_t* at_c, float* hard_c, int64_t* hard_c_idx, bool first) {
  const int64_t n = c1 - c0;
  alignas(64) float pm[kColumnBlock], prest[kColumnBlock], ph[kColumnBlock];
  alignas(64) int32_t pat[kColumnBlock], phi[kColumnBlock];
  for (int64_t r0 = 0; r0 < rows; r0 += kRowChunk) {
    column_chunk(P, ld, r0, std::min(rows, r0 + kRowChunk), row0, c0, n, inv_tau, pm, prest, pat, ph, phi);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t c = c0 + j;
      if (first && r0 == 0) {
        m_c[c] = pm[j], rest_c[c] = prest[j], at_c[c] = row0 + pat[j], hard_c[c] = ph[j], hard_c_idx[c] = phi[j];
      } else {
        fold(m_c[c], rest_c[c], at_c[c], hard_c[c], hard_c_idx[c], pm[j], prest[j], row0 + pat[j], ph[j], phi[j]);
      }
    }
  }
}

}  // namespace
}  // namespace srem

using namespace srem;

extern "C" void srem_cpu_stats_panel(const float* P, int64_t ld, int64_t rows, int64_t B, int64_t row0, float inv_tau,
                                     float* m_r, float* logl_r, int64_t* at_r, float* pos, float* hard_r,
                                     int64_t* hard_r_idx, float* m_c, float* rest_c, int64_t* at_c, float* hard_c,
                                     int64_t* hard_c_idx, int first, int threads) {
  // one parallel region: (unless rows only) the column blocks, then tasks of kRowTask rows (the big
  // tasks first, the small ones to even out the threads' shares). Below 512 × threads columns the
  // blocks narrow so that every thread gets one: at B = 128 one column task (24 µs on one thread)
  // and two row tasks (20 µs each) kept a thread idle for a fifth of the pass. A column's statistics
  // do not depend on its block (each column is its own lane), so the results stay bitwise.
  constexpr int64_t kRowTask = 64;
  const int64_t row_tasks = (rows + kRowTask - 1) / kRowTask;
  const int64_t per_thread = (B + threads - 1) / std::max(threads, 1);
  const int64_t width = std::clamp<int64_t>((per_thread + 7) / 8 * 8, 64, kColumnBlock);
  const int64_t col_tasks = m_c == nullptr ? 0 : (B + width - 1) / width;
  parallel_tasks(row_tasks + col_tasks, threads, [=](int64_t t) {
    if (t < col_tasks) {
      const int64_t c0 = t * width;
      column_stats(P, ld, rows, row0, c0, std::min(B, c0 + width), inv_tau, m_c, rest_c, at_c, hard_c, hard_c_idx,
                   first != 0);
      return;
    }
    t -= col_tasks;
    for (int64_t a = t * kRowTask; a < std::min(rows, (t + 1) * kRowTask); ++a) {
      const float* p = P + a * ld;
      const int64_t i = row0 + a;
      const RowStats r = row_stats(p, B, i, inv_tau);
      m_r[i] = r.m;
      logl_r[i] = r.logl;
      at_r[i] = r.at;
      pos[i] = p[i];
      hard_r[i] = r.hard;
      hard_r_idx[i] = r.hard_at;
    }
  });
}

void srem_cpu_finish_pass1(int64_t B, const float* m_r, const float* logl_r, const float* m_c, const float* rest_c,
                           float* logl_c, float* lse_r, float* lse_c) {
  for (int64_t i = 0; i < B; ++i) {
    logl_c[i] = std::log1p(rest_c[i]);
    lse_r[i] = m_r[i] + logl_r[i];
    lse_c[i] = m_c[i] + logl_c[i];
  }
}
