// The backward's dS over a row panel of S (fused.py's contract; see kernels.h), and with a tensor
// tau its share of d_tau.

#include <vector>

#include "kernels.h"
#include "terms.h"

namespace srem {
namespace {

// dS for row i of the panel (d may alias p: each element is read before it is written). TAU: also
// returns the row's sum of g_i R_ij (-log Pr_ij) + g_j C_ij (-log Pc_ij) (fused.py's d_tau before
// its 1/tau); a template, so that the float-tau path compiles to the loop it always was.
template <bool TAU>
__attribute__((noinline)) float backward_row(const float* p, float* d, int64_t B, int64_t i, float inv_tau, float eps,
                                             float unb, float mr, float lr, float gi, float ari, float ari_rest,
                                             int64_t atr, const float* __restrict mc, const float* __restrict lc,
                                             const float* __restrict gc, const float* __restrict ac,
                                             const float* __restrict acr, const int32_t* __restrict atc) {
  const int32_t i32 = static_cast<int32_t>(i);
  float t = 0.0f;
#pragma omp simd reduction(+ : t)
  for (int64_t j = 0; j < B; ++j) {
    const float z = p[j] * inv_tau;
    const Prob r = prob(mr, lr, z), c = prob(mc[j], lc[j], z);  // Pr_ij, Pc_ij
    const bool off = j != i;
    const float er = e_term(vmax(c.q, unb), r.p, r.q, eps), ec = e_term(vmax(r.q, unb), c.p, c.q, eps);
    const float e_r = off ? er : 0.0f, e_c = off ? ec : 0.0f;
    // E - P A at the maximal element of a row (column) whose P is close to 1 — a confident
    // off-diagonal, where E ~ 1/(1 - P + eps) is huge — cancels: E - P (A_rest + E) =
    // E (1 - P) - P A_rest instead. Elsewhere P <= 1 - P_max keeps P A small.
    const float row = j == atr ? e_r * r.q - r.p * ari_rest : e_r - r.p * ari;
    const float col = atc[j] == i32 ? e_c * c.q - c.p * acr[j] : e_c - c.p * ac[j];
    const float gr = gi * row, gcol = gc[j] * col;
    d[j] = (gr + gcol) * inv_tau;
    if constexpr (TAU) t += gr * r.nl + gcol * c.nl;
  }
  return t;
}

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
  const std::vector<int32_t> atc(at_c, at_c + B);
  const int32_t* atc32 = atc.data();
  std::vector<float> t_rows(tau_acc != nullptr ? rows : 0);  // each row's d_tau share, written by its thread
  float* t = t_rows.data();
  parallel_for(rows, threads, [=](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
      const float* p = P + a * ldp;
      float* d = D + a * ldd;
      const int64_t i = row0 + a;
      if (t != nullptr)
        t[a] = backward_row<true>(p, d, B, i, inv_tau, eps, unb, m_r[i], logl_r[i], g[i], A_r[i], A_r_rest[i],
                                  at_r[i], m_c, logl_c, g, A_c, A_c_rest, atc32);
      else
        backward_row<false>(p, d, B, i, inv_tau, eps, unb, m_r[i], logl_r[i], g[i], A_r[i], A_r_rest[i], at_r[i],
                            m_c, logl_c, g, A_c, A_c_rest, atc32);
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
