// The SREM math of one element of S, in the cancellation-free forms of docs/numerics.md (and
// srem_kernels/backends/dense.py): every -log P as (m - Z) + log l, 1 - P from the same exponential
// (vecmath.h), log(1 - P + eps) by log_q_eps. Shared by the pass-2 kernels (coupled.cpp) and the
// backward (backward.cpp).
//
// Built with -ffp-contract=off: an FMA in (m - S/tau) + log l would skip the rounding of Z that
// m was taken from, and the max element's -log P would no longer be exactly log l.
#pragma once

#include "vecmath.h"

#include <algorithm>
#include <vector>

namespace srem {

// s into the sorted, distinct list of a row's special columns (pass 2's and the backward's).
inline void add_special(std::vector<int64_t>& out, int64_t s) {
  const auto at = std::lower_bound(out.begin(), out.end(), s);
  if (at == out.end() || *at != s) out.insert(at, s);
}

// P of one element under one softmax (a row's or a column's max m and log l): nl = -log P >= 0, P,
// and q = 1 - P. z is clamped to m (where Z comes from another GEMM call than m did, it can exceed
// m by a rounding): nl >= log l >= 0, P <= 1. Clamping z rather than nl keeps the two clamps of an
// element (this one and exp_split's) apart: GCC merges two chained selects into a compare-and-blend
// ladder of ten instructions where each alone is one vminps / vmaxps.
struct Prob {
  float nl, p, q;
};

SREM_INLINE Prob prob(float m, float logl, float z) {
  const float nl = (m - vmin(z, m)) + logl;
  const PQ e = exp_pq(nl);
  return {nl, e.p, e.q};
}

// The same where P <= 1/2 (an element that is not its softmax's maximal one): q = 1 - P has no
// cancellation there.
SREM_INLINE Prob prob_plain(float m, float logl, float z) {
  const float nl = (m - vmin(z, m)) + logl, p = exp_neg(-nl);
  return {nl, p, 1.0f - p};
}

// E = b P / (1 - P + eps): the CBCL gradient's weight of one off-diagonal element.
SREM_INLINE float e_term(float b, float p, float q, float eps) { return b * p / (q + eps); }

// The terms of one element pair (i, j), j != i, for sample i, added to its sums: `row` = Pr_ij
// (its i2t problem), `col` = Pc_ji (its t2i problem), with their bias weights b_row = 1 - Pc_ij and
// b_col = 1 - Pr_ji (1 with bias=False). Summed over j they give the sample's entropies, sce
// (times 2), L_cbcl, and A_r, A_c (fused.py) split as ar + ar_at: ar_at holds the term of the
// row's maximal element at_r (is_at_r: j = at_r[i]), ar the rest (A_rest, which the backward
// needs apart); ac, ac_at the same for the column. The diagonal j = i (off false) adds to the
// entropies and s only.
//
// L_cbcl's -b log(1 - P + eps) is log1p(eps - P) here, without the branch for P >= 1/2: two
// probabilities of one softmax cannot both exceed 1/2, so only a maximal element (at_r, at_c) can
// need it, and the loops leave those to cbcl_at after them.
//
// A macro over scalars, not a function: `omp simd` loops are lowered before inlining, and a sum
// passed by reference (or a struct passed by value or returned through memory) then stays in
// memory per SIMD lane, and the loop no longer vectorises. Small structs returned by value (Prob,
// in registers) are fine.
#define SREM_ADD_TERMS(row, col, b_row, b_col, eps, off, is_at_r, is_at_c, ent_r, ent_c, s, cb, ar, ac, ar_at, \
                       ac_at)                                                                                    \
  do {                                                                                                           \
    const float cr_ = (is_at_r) ? 0.0f : -((b_row) * log1p_neg((eps) - (row).p));                               \
    const float cc_ = (is_at_c) ? 0.0f : (b_col) * log1p_neg((eps) - (col).p);                                  \
    const float er_ = e_term(b_row, (row).p, (row).q, eps), ec_ = e_term(b_col, (col).p, (col).q, eps);          \
    ent_r = fma_((row).p, (row).nl, ent_r);                                                                      \
    ent_c = fma_((col).p, (col).nl, ent_c);                                                                      \
    s = fma_((col).p, (row).nl, fma_((row).p, (col).nl, s));                                                     \
    if (off) { /* constant flags (the vector loops') leave no add of 0 behind */                                 \
      cb += cr_ - cc_;                                                                                           \
      if (is_at_r) ar_at += er_; else ar += er_;                                                                 \
      if (is_at_c) ac_at += ec_; else ac += ec_;                                                                 \
    }                                                                                                            \
  } while (0)

// The L_cbcl term SREM_ADD_TERMS leaves out, of one side of one element: -b log(1 - P + eps) with
// P under the softmax (m, logl) at z and b = 1 - P' under the other one (m_o, logl_o). Scalar.
inline float cbcl_at(float z, float m, float logl, float m_o, float logl_o, float eps, float unb) {
  const Prob r = prob(m, logl, z);
  return -(vmax(prob(m_o, logl_o, z).q, unb) * log_q_eps(r.p, r.q, eps));
}

constexpr int kSums = 8;  // ent_r, ent_c, s, cb, ar, ac, ar_at, ac_at

}  // namespace srem
