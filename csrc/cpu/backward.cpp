// The backward's dS over a row panel of S (fused.py's contract; see kernels.h), and with a tensor
// tau its share of d_tau.
//
// A row's few special elements — the diagonal, the row's maximal element, and the elements that
// are their column's maximal one — take forms of their own (no CBCL term on the diagonal; E·(1 - P)
// - P·A_rest where P may be close to 1). The vector loop runs the plain form over every element,
// with no per-element index test (64-bit index compares and masked loads cost it twice the
// arithmetic), and the specials are then recomputed in scalar from the same function.

#include <vector>

#include "kernels.h"
#include "terms.h"

namespace srem {
namespace {

struct Grad {
  float d, t;  // dS_ij, and its d_tau term g_i R_ij (-log Pr_ij) + g_j C_ij (-log Pc_ij) (fused.py)
};

// One element: Pr_ij = r, Pc_ij = c; off: j != i; at_r: j = at_r[i] (then ari is A_r_rest[i], else
// A_r[i]); at_c: i = at_c[j] (then acj is A_c_rest[j], else A_c[j]).
SREM_INLINE Grad element(Prob r, Prob c, float unb, float eps, float inv_tau, float gi, float gj, float ari, float acj,
                         bool off, bool at_r, bool at_c) {
  const float er = e_term(vmax(c.q, unb), r.p, r.q, eps), ec = e_term(vmax(r.q, unb), c.p, c.q, eps);
  const float e_r = off ? er : 0.0f, e_c = off ? ec : 0.0f;
  // E - P A at the maximal element of a row (column) whose P is close to 1 — a confident
  // off-diagonal, where E ~ 1/(1 - P + eps) is huge — cancels: E - P (A_rest + E) =
  // E (1 - P) - P A_rest instead. Elsewhere P <= 1 - P_max keeps P A small.
  const float row = at_r ? e_r * r.q - r.p * ari : e_r - r.p * ari;
  const float col = at_c ? e_c * c.q - c.p * acj : e_c - c.p * acj;
  const float gr = gi * row, gcol = gj * col;
  return {(gr + gcol) * inv_tau, gr * r.nl + gcol * c.nl};
}

// The plain form over columns [lo, hi) of row i (d may alias p: each element is read before it is
// written; a masked lane of SREM_SIMD_RANGE's last step neither stores nor sums, as its p may hold
// dS already). TAU: returns the sum of the elements' d_tau terms; a template, so that the float-tau
// path compiles to a loop without that reduction.
template <bool TAU>
__attribute__((noinline)) float plain(const float* p, float* d, int64_t lo, int64_t hi, float inv_tau, float eps,
                                      float unb, float mr, float lr, float gi, float ari, const float* __restrict mc,
                                      const float* __restrict lc, const float* __restrict gc,
                                      const float* __restrict ac) {
  float t = 0.0f;
  SREM_SIMD_RANGE(j, lo, hi, reduction(+ : t),
    const float z = p[j] * inv_tau;
    const Grad e = element(prob_plain(mr, lr, z), prob_plain(mc[j], lc[j], z), unb, eps, inv_tau, gi, gc[j], ari,
                           ac[j], true, false, false);
    if (live) {
      d[j] = e.d;
      if constexpr (TAU) t += e.t;
    });
  return t;
}

// The row's special columns (sorted, distinct) and the inverse of at_c for the panel's rows.
struct Specials {
  std::vector<int64_t> start, cols;  // the columns j with at_c[j] == row0 + a: cols[start[a] .. start[a + 1])

  Specials(const int64_t* at_c, int64_t B, int64_t row0, int64_t rows) : start(rows + 1, 0) {
    for (int64_t j = 0; j < B; ++j)
      if (at_c[j] >= row0 && at_c[j] < row0 + rows) ++start[at_c[j] - row0 + 1];
    for (int64_t a = 0; a < rows; ++a) start[a + 1] += start[a];
    cols.resize(start[rows]);
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t j = 0; j < B; ++j)  // ascending j within each row
      if (at_c[j] >= row0 && at_c[j] < row0 + rows) cols[fill[at_c[j] - row0]++] = j;
  }

  // row a's special columns into out, sorted and distinct: i, at_r[i] and its at_c columns
  void of_row(int64_t a, int64_t i, int64_t atr, std::vector<int64_t>& out) const {
    out.assign(cols.begin() + start[a], cols.begin() + start[a + 1]);
    for (const int64_t s : {i, atr}) add_special(out, s);
  }
};

}  // namespace
}  // namespace srem

using namespace srem;

extern "C" void srem_cpu_backward_panel(const float* P, int64_t ldp, float* D, int64_t ldd, int64_t rows, int64_t B,
                                        int64_t row0, float inv_tau, float eps, int bias, const float* m_r,
                                        const float* logl_r, const float* m_c, const float* logl_c,
                                        const int64_t* at_r, const int64_t* at_c, const float* A_r, const float* A_c,
                                        const float* A_r_rest, const float* A_c_rest, const float* g,
                                        const float* k_r, const float* k_c, const int64_t* hard_r_idx,
                                        const int64_t* hard_c_idx, int threads, double* tau_acc) {
  const float unb = bias ? 0.0f : 1.0f;
  const Specials specials(at_c, B, row0, rows);
  std::vector<float> t_rows(tau_acc != nullptr ? rows : 0);  // each row's d_tau share, written by its thread
  float* t = t_rows.data();
  parallel_for(rows, threads, [=, &specials](int64_t a0, int64_t a1) {
    std::vector<int64_t> special;
    for (int64_t a = a0; a < a1; ++a) {
      const float* p = P + a * ldp;
      float* d = D + a * ldd;
      const int64_t i = row0 + a, atr = at_r[i];
      const float mr = m_r[i], lr = logl_r[i], gi = g[i];
      specials.of_row(a, i, atr, special);
      // the special elements' inputs, read before the loops may overwrite them (d aliasing p)
      float z[8];
      std::vector<float> zs;
      float* zk = special.size() <= 8 ? z : (zs.resize(special.size()), zs.data());
      for (size_t k = 0; k < special.size(); ++k) zk[k] = p[special[k]] * inv_tau;
      float sum = 0.0f;
      if (t != nullptr) {  // the plain elements between the specials, in order: their d_tau terms only
        int64_t lo = 0;
        for (const int64_t s : special) {
          sum += plain<true>(p, d, lo, s, inv_tau, eps, unb, mr, lr, gi, A_r[i], m_c, logl_c, g, A_c);
          lo = s + 1;
        }
        sum += plain<true>(p, d, lo, B, inv_tau, eps, unb, mr, lr, gi, A_r[i], m_c, logl_c, g, A_c);
      } else {
        plain<false>(p, d, 0, B, inv_tau, eps, unb, mr, lr, gi, A_r[i], m_c, logl_c, g, A_c);
      }
      for (size_t k = 0; k < special.size(); ++k) {
        const int64_t j = special[k];
        const bool is_at_r = j == atr, is_at_c = at_c[j] == i;
        const Grad e = element(prob(mr, lr, zk[k]), prob(m_c[j], logl_c[j], zk[k]), unb, eps, inv_tau, gi, g[j],
                               is_at_r ? A_r_rest[i] : A_r[i], is_at_c ? A_c_rest[j] : A_c[j], j != i, is_at_r,
                               is_at_c);
        d[j] = e.d;
        sum += e.t;
      }
      if (t != nullptr) t[a] = sum;
      d[i] -= k_r[i] + k_c[i];
      if (hard_r_idx[i] >= 0 && hard_r_idx[i] < B) d[hard_r_idx[i]] += k_r[i];
    }
  });
  for (int64_t j = 0; j < B; ++j) {  // the t2i hinges whose hardest image lies in this panel
    const int64_t r = hard_c_idx[j] - row0;
    if (r >= 0 && r < rows) D[r * ldd + j] += k_c[j];
  }
  if (tau_acc != nullptr) {  // in row order, whatever the threads: bitwise reproducible
    double sum = 0.0;
    for (int64_t a = 0; a < rows; ++a) sum += t[a];
    *tau_acc += sum * static_cast<double>(inv_tau);
  }
}
