// Pass 2 of the SREM loss: every statistic that needs both softmaxes (entropies, sce, L_cbcl, the
// A vectors of the backward). Sample i needs row i of S and column i (sce couples (i, j) with
// (j, i)), so element pairs S_ij, S_ji are read together: one row of P = S[I, :] beside the same
// row of Q = S[:, I]ᵀ. See kernels.h.
//
// Paired (srem_cpu_pass2_panel / _full): the four probabilities of a pair (Pr_ij, Pc_ij, Pr_ji,
// Pc_ji) serve both samples, so each pair is formed and evaluated once — half the work of taking
// every sample's row and column on its own (srem_cpu_forward_panel, the row ranges' kernel).

#include <cmath>
#include <vector>

#include "kernels.h"
#include "terms.h"

namespace srem {
namespace {

// The L_cbcl terms SREM_ADD_TERMS leaves out for sample i (sums' arguments): those of its row's
// and its column's maximal elements, where they lie in [0, n) off the diagonal.
float own_cbcl_at(const float* p, const float* q, int64_t n, int64_t diag, int64_t atr, int64_t atc, float inv_tau,
                  float eps, float unb, float mr, float lr, float mc, float lc, const float* m_r, const float* logl_r,
                  const float* m_c, const float* logl_c) {
  float cb = 0.0f;
  if (atr >= 0 && atr < n && atr != diag) cb += cbcl_at(p[atr] * inv_tau, mr, lr, m_c[atr], logl_c[atr], eps, unb);
  if (atc >= 0 && atc < n && atc != diag) cb += cbcl_at(q[atc] * inv_tau, mc, lc, m_r[atc], logl_r[atc], eps, unb);
  return cb;
}

// Sample i over columns b in [0, n) (samples j = j0 + b): p[b] = S_ij, q[b] = S_ji; the vectors are
// offset by j0, and diag, atr, atc are i, at_r[i], at_c[i] minus j0 (diag -1: none). out: sample
// i's kSums sums. kPaired (no diagonal then): each pair's terms also go to sample j, added to
// col[k][b], with at_r_j, at_c_j the samples j's at_r, at_c (absolute, int32; offset by j0).
template <bool kPaired>
__attribute__((noinline)) void sums(const float* __restrict p, const float* __restrict q, int64_t n, int64_t diag,
                                    int64_t atr, int64_t atc, float inv_tau, float eps, float unb, float mr, float lr,
                                    float mc, float lc, const float* __restrict m_r, const float* __restrict logl_r,
                                    const float* __restrict m_c, const float* __restrict logl_c, float* out,
                                    int32_t i = 0, const int32_t* __restrict at_r_j = nullptr,
                                    const int32_t* __restrict at_c_j = nullptr, float* const* col = nullptr) {
  float ent_r = 0, ent_c = 0, s = 0, cb = 0, ar = 0, ac = 0, ar_at = 0, ac_at = 0;
  float *__restrict c0 = nullptr, *__restrict c1 = nullptr, *__restrict c2 = nullptr, *__restrict c3 = nullptr;
  float *__restrict c4 = nullptr, *__restrict c5 = nullptr, *__restrict c6 = nullptr, *__restrict c7 = nullptr;
  if constexpr (kPaired) c0 = col[0], c1 = col[1], c2 = col[2], c3 = col[3], c4 = col[4], c5 = col[5], c6 = col[6], c7 = col[7];
#pragma omp simd reduction(+ : ent_r, ent_c, s, cb, ar, ac, ar_at, ac_at)
  for (int64_t b = 0; b < n; ++b) {
    const float z = p[b] * inv_tau, zq = q[b] * inv_tau;
    const Prob r = prob(mr, lr, z), c = prob(mc, lc, zq);                  // Pr_ij, Pc_ji
    const Prob rj = prob(m_r[b], logl_r[b], zq), cj = prob(m_c[b], logl_c[b], z);  // Pr_ji, Pc_ij
    SREM_ADD_TERMS(r, c, vmax(cj.q, unb), vmax(rj.q, unb), eps, b != diag, b == atr, b == atc, ent_r, ent_c, s, cb, ar,
                   ac, ar_at, ac_at);
    if constexpr (kPaired)
      SREM_ADD_TERMS(rj, cj, vmax(c.q, unb), vmax(r.q, unb), eps, true, at_r_j[b] == i, at_c_j[b] == i, c0[b], c1[b],
                     c2[b], c3[b], c4[b], c5[b], c6[b], c7[b]);
  }
  cb += own_cbcl_at(p, q, n, diag, atr, atc, inv_tau, eps, unb, mr, lr, mc, lc, m_r, logl_r, m_c, logl_c);
  out[0] = ent_r, out[1] = ent_c, out[2] = s, out[3] = cb, out[4] = ar, out[5] = ac, out[6] = ar_at, out[7] = ac_at;
}

// Sample i's statistics from its sums (sums' order) and S_ii = sii.
SREM_INLINE void write_stats(int64_t i, const float* v, float sii, float inv_tau, float mr, float lr, float mc,
                             float lc, float* ce_i2t, float* ce_t2i, float* ent_i2t, float* ent_t2i, float* sce,
                             float* cbcl, float* A_r, float* A_c, float* A_r_rest, float* A_c_rest) {
  ce_i2t[i] = (mr - sii * inv_tau) + lr;
  ce_t2i[i] = (mc - sii * inv_tau) + lc;
  ent_i2t[i] = v[0];
  ent_t2i[i] = v[1];
  sce[i] = 0.5f * v[2];
  cbcl[i] = v[3];
  A_r[i] = v[4] + v[6];
  A_c[i] = v[5] + v[7];
  A_r_rest[i] = v[4];
  A_c_rest[i] = v[5];
}

// dst[a * ldd + b] = src[b * lds + a] for a in [0, na), b in [0, nb), in 16 × 16 blocks.
void transpose(const float* src, int64_t lds, int64_t na, int64_t nb, float* dst, int64_t ldd) {
  for (int64_t b0 = 0; b0 < nb; b0 += 16)
    for (int64_t a0 = 0; a0 < na; a0 += 16) {
      const int64_t b1 = std::min(nb, b0 + 16), a1 = std::min(na, a0 + 16);
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t a = a0; a < a1; ++a) dst[a * ldd + b] = src[b * lds + a];
    }
}

std::vector<int32_t> as_int32(const int64_t* v, int64_t n) { return std::vector<int32_t>(v, v + n); }

constexpr int64_t kPairColumns = 256;  // columns of a paired task (its column sums stay in L1)
constexpr int64_t kDiagRows = 32;      // rows of a task over the panel's own columns

struct Pass2Args {
  float inv_tau, eps, unb;
  const float *m_r, *logl_r, *m_c, *logl_c;
  const int32_t *at_r, *at_c;
};

// One panel of pass 2: P = S[row0 : row0+rows, row0 :], Q = S[row0 :, row0 : row0+rows]ᵀ, given as
// Q itself (q_trans false) or as Qᵀ, read in place from a materialised S (Q[a, b] = Q[b * ldq + a]).
// Its tasks: the panel's own columns kDiagRows rows at a time (sums<false>), then the columns beyond
// it kPairColumns at a time (sums<true>). Every task writes slots of its own: `part` holds the
// rows' sums per task, (1 + npair) × rows × kSums (slot 0: own columns, 1 + k: pair task k);
// `cols` the sums of the samples row0 + rows + b, b < B - row0 - rows, added per column (each
// column belongs to one task).
struct Panel {
  const float *P, *Q;
  int64_t ldp, ldq, rows, row0, n, ndiag, npair;  // n = B - row0: columns of P and Q
  bool q_trans;
  float *part, *cols;

  Panel(const float* P, int64_t ldp, const float* Q, int64_t ldq, bool q_trans, int64_t rows, int64_t row0, int64_t B)
      : P(P), Q(Q), ldp(ldp), ldq(ldq), rows(rows), row0(row0), n(B - row0), ndiag((rows + kDiagRows - 1) / kDiagRows),
        npair((n - rows + kPairColumns - 1) / kPairColumns), q_trans(q_trans), part(nullptr), cols(nullptr) {}

  int64_t tasks() const { return ndiag + npair; }
  int64_t part_size() const { return (1 + npair) * rows * kSums; }
  int64_t cols_size() const { return (n - rows) * kSums; }

  void run(int64_t t, const Pass2Args& g) const {
    thread_local std::vector<float> tile;
    const float *m_r = g.m_r + row0, *logl_r = g.logl_r + row0, *m_c = g.m_c + row0, *logl_c = g.logl_c + row0;
    if (t < ndiag) {
      const int64_t a0 = t * kDiagRows, a1 = std::min(rows, a0 + kDiagRows);
      if (q_trans) {
        tile.resize((a1 - a0) * rows);
        transpose(Q + a0, ldq, a1 - a0, rows, tile.data(), rows);
      }
      for (int64_t a = a0; a < a1; ++a) {
        const int64_t i = row0 + a;
        const float* q = q_trans ? tile.data() + (a - a0) * rows : Q + a * ldq;
        sums<false>(P + a * ldp, q, rows, a, g.at_r[i] - row0, g.at_c[i] - row0, g.inv_tau, g.eps, g.unb, g.m_r[i],
                    g.logl_r[i], g.m_c[i], g.logl_c[i], m_r, logl_r, m_c, logl_c, &part[a * kSums]);
      }
      return;
    }
    const int64_t k = t - ndiag, c0 = rows + k * kPairColumns;
    const int64_t w = std::min(n, c0 + kPairColumns) - c0;
    if (q_trans) {
      tile.resize(rows * w);
      transpose(Q + c0 * ldq, ldq, rows, w, tile.data(), w);
    }
    alignas(64) float col[kSums][kPairColumns] = {};
    float* const cols_k[kSums] = {col[0], col[1], col[2], col[3], col[4], col[5], col[6], col[7]};
    const int64_t j0 = row0 + c0;
    for (int64_t a = 0; a < rows; ++a) {
      const int64_t i = row0 + a;
      const float* q = q_trans ? tile.data() + a * w : Q + a * ldq + c0;
      sums<true>(P + a * ldp + c0, q, w, -1, g.at_r[i] - j0, g.at_c[i] - j0, g.inv_tau, g.eps, g.unb, g.m_r[i],
                 g.logl_r[i], g.m_c[i], g.logl_c[i], g.m_r + j0, g.logl_r + j0, g.m_c + j0, g.logl_c + j0,
                 &part[((1 + k) * rows + a) * kSums], static_cast<int32_t>(i), g.at_r + j0, g.at_c + j0, cols_k);
    }
    // the column samples' L_cbcl terms sums<true> leaves out: their maximal elements in these rows
    for (int64_t b = 0; b < w; ++b) {
      const int64_t j = j0 + b, ar = g.at_r[j] - row0, ac = g.at_c[j] - row0;
      if (ar >= 0 && ar < rows) {  // Pr_ji, at S_ji = Q[ar, c0 + b]; bias 1 - Pc_ji under column i's softmax
        const float zq = (q_trans ? tile[ar * w + b] : Q[ar * ldq + c0 + b]) * g.inv_tau;
        col[3][b] += cbcl_at(zq, g.m_r[j], g.logl_r[j], g.m_c[row0 + ar], g.logl_c[row0 + ar], g.eps, g.unb);
      }
      if (ac >= 0 && ac < rows) {  // Pc_ij, at S_ij = P[ac, c0 + b]; bias 1 - Pr_ij under row i's softmax
        const float z = P[ac * ldp + c0 + b] * g.inv_tau;
        col[3][b] += cbcl_at(z, g.m_c[j], g.logl_c[j], g.m_r[row0 + ac], g.logl_r[row0 + ac], g.eps, g.unb);
      }
    }
    for (int64_t b = 0; b < w; ++b)
      for (int s = 0; s < kSums; ++s) cols[(c0 - rows + b) * kSums + s] += col[s][b];
  }

  // sample row0 + a's sums from this panel, added to v in task order
  void add_row(int64_t a, float* v) const {
    for (int64_t slot = 0; slot <= npair; ++slot)
      for (int s = 0; s < kSums; ++s) v[s] += part[(slot * rows + a) * kSums + s];
  }
};

Pass2Args args(float inv_tau, float eps, int bias, const float* m_r, const float* logl_r, const float* m_c,
               const float* logl_c, const int32_t* at_r, const int32_t* at_c) {
  return {inv_tau, eps, bias ? 0.0f : 1.0f, m_r, logl_r, m_c, logl_c, at_r, at_c};
}

}  // namespace
}  // namespace srem

using namespace srem;

extern "C" {

void srem_cpu_forward_panel(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t rows, int64_t B,
                            int64_t row0, float inv_tau, float eps, int bias, const float* m_r, const float* logl_r,
                            const float* m_c, const float* logl_c, const int64_t* at_r, const int64_t* at_c,
                            float* ce_i2t, float* ce_t2i, float* ent_i2t, float* ent_t2i, float* sce, float* cbcl,
                            float* A_r, float* A_c, float* A_r_rest, float* A_c_rest, int threads) {
  const float unb = bias ? 0.0f : 1.0f;
  parallel_for(rows, threads, [=](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
      const float* p = P + a * ldp;
      const int64_t i = row0 + a;
      float v[kSums];
      sums<false>(p, Q + a * ldq, B, i, at_r[i], at_c[i], inv_tau, eps, unb, m_r[i], logl_r[i], m_c[i], logl_c[i], m_r,
                  logl_r, m_c, logl_c, v);
      write_stats(i, v, p[i], inv_tau, m_r[i], logl_r[i], m_c[i], logl_c[i], ce_i2t, ce_t2i, ent_i2t, ent_t2i, sce,
                  cbcl, A_r, A_c, A_r_rest, A_c_rest);
    }
  });
}

void srem_cpu_pass2_panel(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t rows, int64_t B,
                          int64_t row0, float inv_tau, float eps, int bias, const float* m_r, const float* logl_r,
                          const float* m_c, const float* logl_c, const int64_t* at_r, const int64_t* at_c, float* acc,
                          int threads) {
  const std::vector<int32_t> atr = as_int32(at_r, B), atc = as_int32(at_c, B);
  const Pass2Args g = args(inv_tau, eps, bias, m_r, logl_r, m_c, logl_c, atr.data(), atc.data());
  Panel panel(P, ldp, Q, ldq, false, rows, row0, B);
  std::vector<float> part(panel.part_size());
  panel.part = part.data();
  panel.cols = acc + (row0 + rows) * kSums;  // the later samples' sums, panel after panel
  parallel_tasks(panel.tasks(), threads, [&](int64_t t) { panel.run(t, g); });
  for (int64_t a = 0; a < rows; ++a) panel.add_row(a, acc + (row0 + a) * kSums);
}

void srem_cpu_pass2_finish(const float* acc, int64_t B, float inv_tau, const float* m_r, const float* logl_r,
                           const float* m_c, const float* logl_c, const float* pos, float* ce_i2t, float* ce_t2i,
                           float* ent_i2t, float* ent_t2i, float* sce, float* cbcl, float* A_r, float* A_c,
                           float* A_r_rest, float* A_c_rest) {
  for (int64_t i = 0; i < B; ++i)
    write_stats(i, acc + i * kSums, pos[i], inv_tau, m_r[i], logl_r[i], m_c[i], logl_c[i], ce_i2t, ce_t2i, ent_i2t,
                ent_t2i, sce, cbcl, A_r, A_c, A_r_rest, A_c_rest);
}

void srem_cpu_pass2_full(const float* S, int64_t ld, int64_t B, float inv_tau, float eps, int bias,
                         const float* m_r, const float* logl_r, const float* m_c, const float* logl_c,
                         const int64_t* at_r, const int64_t* at_c, const float* pos, float* ce_i2t, float* ce_t2i,
                         float* ent_i2t, float* ent_t2i, float* sce, float* cbcl, float* A_r, float* A_c,
                         float* A_r_rest, float* A_c_rest, int threads) {
  const std::vector<int32_t> atr = as_int32(at_r, B), atc = as_int32(at_c, B);
  const Pass2Args g = args(inv_tau, eps, bias, m_r, logl_r, m_c, logl_c, atr.data(), atc.data());
  // Every panel's tasks in one parallel region, each panel with slots of its own (the column sums
  // of all panels: B²/(2R) × kSums floats, srem_cpu_pass2_workspace), then every sample's sums in
  // the order of the streaming panels: its columns' panels before it, then its own rows.
  const int64_t R = srem_cpu_pass2_rows(B);
  std::vector<Panel> panels;
  int64_t part_size = 0, cols_size = 0;
  for (int64_t row0 = 0; row0 < B; row0 += R) {
    const float* p = S + row0 * ld + row0;
    panels.emplace_back(p, ld, p, ld, true, std::min(R, B - row0), row0, B);
    part_size += panels.back().part_size();
    cols_size += panels.back().cols_size();
  }
  std::vector<float> part(part_size), cols(cols_size, 0.0f);
  std::vector<std::pair<int32_t, int32_t>> tasks;  // (panel, task)
  part_size = cols_size = 0;
  for (size_t k = 0; k < panels.size(); ++k) {
    Panel& p = panels[k];
    p.part = part.data() + part_size, p.cols = cols.data() + cols_size;
    part_size += p.part_size(), cols_size += p.cols_size();
    for (int64_t t = 0; t < p.tasks(); ++t) tasks.emplace_back(static_cast<int32_t>(k), static_cast<int32_t>(t));
  }
  parallel_tasks(static_cast<int64_t>(tasks.size()), threads, [&](int64_t t) {
    panels[tasks[t].first].run(tasks[t].second, g);
  });
  parallel_for(B, threads, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float v[kSums] = {};
      const int64_t own = i / R;
      for (int64_t k = 0; k < own; ++k) {
        const Panel& p = panels[k];
        for (int s = 0; s < kSums; ++s) v[s] += p.cols[(i - p.row0 - p.rows) * kSums + s];
      }
      panels[own].add_row(i - panels[own].row0, v);
      write_stats(i, v, pos[i], inv_tau, m_r[i], logl_r[i], m_c[i], logl_c[i], ce_i2t, ce_t2i, ent_i2t, ent_t2i, sce,
                  cbcl, A_r, A_c, A_r_rest, A_c_rest);
    }
  });
}

int64_t srem_cpu_pass2_rows(int64_t B) {
  // panel height: the pairs inside a panel are taken twice (once per sample), 2R/B of the work
  return std::max<int64_t>(32, std::min<int64_t>(256, B / 32 / 16 * 16));
}

int64_t srem_cpu_pass2_workspace(int64_t B) {
  const int64_t R = srem_cpu_pass2_rows(B);
  int64_t floats = 0;
  for (int64_t row0 = 0; row0 < B; row0 += R) {
    const Panel p(nullptr, 0, nullptr, 0, true, std::min(R, B - row0), row0, B);  // pass2_full's panels, sizes only
    floats += p.part_size() + p.cols_size();
  }
  return floats * static_cast<int64_t>(sizeof(float));
}

}  // extern "C"
