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

// Sample i over columns b in [lo, hi) (samples j = j0 + b) with none of them special (below): the
// plain terms, added to out[kSums]. p[b] = S_ij, q[b] = S_ji; the vectors are offset by j0. kPaired:
// each pair's terms also go to sample j, added to col[k][b]. No per-element index test: the
// 64-bit compares and blends those cost the loop a third of its instructions. The run's end: one
// masked 8-lane step (SREM_SIMD_RANGE).
template <bool kPaired>
__attribute__((noinline)) void plain(const float* __restrict p, const float* __restrict q, int64_t lo, int64_t hi,
                                     float inv_tau, float eps, float unb, float mr, float lr, float mc, float lc,
                                     const float* __restrict m_r, const float* __restrict logl_r,
                                     const float* __restrict m_c, const float* __restrict logl_c, float* out,
                                     float* const* col = nullptr) {
  float ent_r = 0, ent_c = 0, s = 0, cb = 0, ar = 0, ac = 0, ar_at = 0, ac_at = 0;
  float *__restrict c0 = nullptr, *__restrict c1 = nullptr, *__restrict c2 = nullptr, *__restrict c3 = nullptr;
  float *__restrict c4 = nullptr, *__restrict c5 = nullptr, *__restrict c6 = nullptr, *__restrict c7 = nullptr;
  if constexpr (kPaired) c0 = col[0], c1 = col[1], c2 = col[2], c3 = col[3], c4 = col[4], c5 = col[5], c6 = col[6], c7 = col[7];
  SREM_SIMD_RANGE(b, lo, hi, reduction(+ : ent_r, ent_c, s, cb, ar, ac, ar_at, ac_at),
    const float z = p[b] * inv_tau, zq = q[b] * inv_tau;
    const Prob r = prob_plain(mr, lr, z), c = prob_plain(mc, lc, zq);                  // Pr_ij, Pc_ji
    const Prob rj = prob_plain(m_r[b], logl_r[b], zq), cj = prob_plain(m_c[b], logl_c[b], z);  // Pr_ji, Pc_ij
    if (live) {
      SREM_ADD_TERMS(r, c, vmax(cj.q, unb), vmax(rj.q, unb), eps, true, false, false, ent_r, ent_c, s, cb, ar, ac,
                     ar_at, ac_at);
      if constexpr (kPaired)
        SREM_ADD_TERMS(rj, cj, vmax(c.q, unb), vmax(r.q, unb), eps, true, false, false, c0[b], c1[b], c2[b], c3[b],
                       c4[b], c5[b], c6[b], c7[b]);
    });
  out[0] += ent_r, out[1] += ent_c, out[2] += s, out[3] += cb, out[4] += ar, out[5] += ac, out[6] += ar_at,
      out[7] += ac_at;
}

// Where sample i's columns are special: b = diag (the diagonal; -1: none), b = atr, b = atc (its
// row's and column's maximal elements), and with kPaired the columns b whose sample j has its
// row's or column's maximal element in sample i's row or column (at_r[j] = i or at_c[j] = i).
// Such an element takes the flags SREM_ADD_TERMS has for it, and the L_cbcl term that the macro
// leaves out at a maximal element (cbcl_at), in scalar.
struct Sample {
  int64_t diag, atr, atc;
  int32_t i;
  float mr, lr, mc, lc;
};

template <bool kPaired>
void special(const float* p, const float* q, int64_t b, const Sample& x, float inv_tau, float eps, float unb,
             const float* m_r, const float* logl_r, const float* m_c, const float* logl_c, const int32_t* at_r_j,
             const int32_t* at_c_j, float* out, float* const* col) {
  const float z = p[b] * inv_tau, zq = q[b] * inv_tau;
  const Prob r = prob(x.mr, x.lr, z), c = prob(x.mc, x.lc, zq);
  const Prob rj = prob(m_r[b], logl_r[b], zq), cj = prob(m_c[b], logl_c[b], z);
  const bool off = b != x.diag, is_at_r = b == x.atr, is_at_c = b == x.atc;
  float v[kSums] = {};
  SREM_ADD_TERMS(r, c, vmax(cj.q, unb), vmax(rj.q, unb), eps, off, is_at_r, is_at_c, v[0], v[1], v[2], v[3], v[4],
                 v[5], v[6], v[7]);
  if (off && is_at_r) v[3] += cbcl_at(z, x.mr, x.lr, m_c[b], logl_c[b], eps, unb);
  if (off && is_at_c) v[3] += cbcl_at(zq, x.mc, x.lc, m_r[b], logl_r[b], eps, unb);
  for (int k = 0; k < kSums; ++k) out[k] += v[k];
  if constexpr (kPaired) {
    const bool j_at_r = at_r_j[b] == x.i, j_at_c = at_c_j[b] == x.i;
    float w[kSums] = {};
    SREM_ADD_TERMS(rj, cj, vmax(c.q, unb), vmax(r.q, unb), eps, true, j_at_r, j_at_c, w[0], w[1], w[2], w[3], w[4],
                   w[5], w[6], w[7]);
    // sample j's maximal elements: Pr_ji at S_ji (bias 1 - Pc_ji under column i's softmax), Pc_ij at S_ij
    if (j_at_r) w[3] += cbcl_at(zq, m_r[b], logl_r[b], x.mc, x.lc, eps, unb);
    if (j_at_c) w[3] += cbcl_at(z, m_c[b], logl_c[b], x.mr, x.lr, eps, unb);
    for (int k = 0; k < kSums; ++k) col[k][b] += w[k];
  }
}

// Sample i over columns [0, n): the plain runs between its special columns (`specials`: sorted,
// distinct, in [0, n)), then the specials, in that order; out[kSums] zeroed here.
template <bool kPaired>
void sums(const float* p, const float* q, int64_t n, const Sample& x, const std::vector<int64_t>& specials,
          float inv_tau, float eps, float unb, const float* m_r, const float* logl_r, const float* m_c,
          const float* logl_c, float* out, const int32_t* at_r_j = nullptr, const int32_t* at_c_j = nullptr,
          float* const* col = nullptr) {
  std::fill(out, out + kSums, 0.0f);
  int64_t lo = 0;
  for (const int64_t b : specials) {
    plain<kPaired>(p, q, lo, b, inv_tau, eps, unb, x.mr, x.lr, x.mc, x.lc, m_r, logl_r, m_c, logl_c, out, col);
    lo = b + 1;
  }
  plain<kPaired>(p, q, lo, n, inv_tau, eps, unb, x.mr, x.lr, x.mc, x.lc, m_r, logl_r, m_c, logl_c, out, col);
  for (const int64_t b : specials)
    special<kPaired>(p, q, b, x, inv_tau, eps, unb, m_r, logl_r, m_c, logl_c, at_r_j, at_c_j, out, col);
}

// Sample i's own special columns in [0, n) into out, sorted and distinct, after `extra` (sorted).
void own_specials(const Sample& x, int64_t n, const int64_t* extra, int64_t n_extra, std::vector<int64_t>& out) {
  out.assign(extra, extra + n_extra);
  for (const int64_t s : {x.diag, x.atr, x.atc})
    if (s >= 0 && s < n) add_special(out, s);
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

// An 8 × 8 block: dst[a * ldd + b] = src[b * lds + a]. GCC's vector extension (lowered to whatever
// the target has: unpack/shuffle/permute on AVX2, 3 shuffles per 8 floats) where its loop of scalar
// copies, which it does not vectorise, cost pass 2 a sixth of its instructions.
using v8f = float __attribute__((vector_size(32)));

SREM_INLINE v8f load8(const float* p) {
  v8f v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

SREM_INLINE void store8(float* p, v8f v) { __builtin_memcpy(p, &v, sizeof v); }

SREM_INLINE void transpose8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  v8f r[8], t[8], u[8];
  for (int k = 0; k < 8; ++k) r[k] = load8(src + k * lds);
  for (int k = 0; k < 8; k += 2) {  // pairs of rows interleaved within each 128-bit half
    t[k] = __builtin_shufflevector(r[k], r[k + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[k + 1] = __builtin_shufflevector(r[k], r[k + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int k = 0; k < 8; k += 4)  // then pairs of pairs
    for (int h = 0; h < 2; ++h) {
      u[k + 2 * h] = __builtin_shufflevector(t[k + h], t[k + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[k + 2 * h + 1] = __builtin_shufflevector(t[k + h], t[k + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int k = 0; k < 4; ++k) {  // then the 128-bit halves of rows k and k + 4
    store8(dst + k * ldd, __builtin_shufflevector(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11));
    store8(dst + (k + 4) * ldd, __builtin_shufflevector(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15));
  }
}

// dst[a * ldd + b] = src[b * lds + a] for a in [0, na), b in [0, nb): 8 × 8 blocks, the edges in scalar.
void transpose(const float* src, int64_t lds, int64_t na, int64_t nb, float* dst, int64_t ldd) {
  const int64_t na8 = na / 8 * 8, nb8 = nb / 8 * 8;
  for (int64_t b0 = 0; b0 < nb8; b0 += 8)
    for (int64_t a0 = 0; a0 < na8; a0 += 8) transpose8(src + b0 * lds + a0, lds, dst + a0 * ldd + b0, ldd);
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t a = b < nb8 ? na8 : 0; a < na; ++a) dst[a * ldd + b] = src[b * lds + a];
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
    thread_local std::vector<int64_t> spec, start, cols_of;
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
        const Sample x{a, g.at_r[i] - row0, g.at_c[i] - row0, static_cast<int32_t>(i), g.m_r[i], g.logl_r[i], g.m_c[i],
                       g.logl_c[i]};  // fmt: skip
        own_specials(x, rows, nullptr, 0, spec);
        sums<false>(P + a * ldp, q, rows, x, spec, g.inv_tau, g.eps, g.unb, m_r, logl_r, m_c, logl_c, &part[a * kSums]);
      }
      return;
    }
    const int64_t k = t - ndiag, c0 = rows + k * kPairColumns;
    const int64_t w = std::min(n, c0 + kPairColumns) - c0;
    if (q_trans) {
      tile.resize(rows * w);
      transpose(Q + c0 * ldq, ldq, rows, w, tile.data(), w);
    }
    alignas(64) float col[kSums][kPairColumns + 16] = {};  // padded: rows 1 KiB apart alias every 4 KiB
    float* const cols_k[kSums] = {col[0], col[1], col[2], col[3], col[4], col[5], col[6], col[7]};
    const int64_t j0 = row0 + c0;
    // the columns b whose sample has its row's or column's maximal element in row a: cols_of[start[a] ..)
    start.assign(rows + 1, 0);
    auto in_rows = [&](int64_t at) { return at - row0 >= 0 && at - row0 < rows; };
    for (int64_t b = 0; b < w; ++b) {
      const int64_t ar = g.at_r[j0 + b], ac = g.at_c[j0 + b];
      if (in_rows(ar)) ++start[ar - row0 + 1];
      if (in_rows(ac) && ac != ar) ++start[ac - row0 + 1];
    }
    for (int64_t a = 0; a < rows; ++a) start[a + 1] += start[a];
    cols_of.resize(start[rows]);
    for (int64_t b = 0, *fill = start.data(); b < w; ++b) {  // filling moves start[a] to row a's end: shifted back below
      const int64_t ar = g.at_r[j0 + b], ac = g.at_c[j0 + b];
      if (in_rows(ar)) cols_of[fill[ar - row0]++] = b;
      if (in_rows(ac) && ac != ar) cols_of[fill[ac - row0]++] = b;
    }
    for (int64_t a = rows; a > 0; --a) start[a] = start[a - 1];
    start[0] = 0;
    for (int64_t a = 0; a < rows; ++a) {
      const int64_t i = row0 + a;
      const float* q = q_trans ? tile.data() + a * w : Q + a * ldq + c0;
      const Sample x{-1, g.at_r[i] - j0, g.at_c[i] - j0, static_cast<int32_t>(i), g.m_r[i], g.logl_r[i], g.m_c[i],
                     g.logl_c[i]};  // fmt: skip
      own_specials(x, w, cols_of.data() + start[a], start[a + 1] - start[a], spec);
      sums<true>(P + a * ldp + c0, q, w, x, spec, g.inv_tau, g.eps, g.unb, g.m_r + j0, g.logl_r + j0, g.m_c + j0,
                 g.logl_c + j0, &part[((1 + k) * rows + a) * kSums], g.at_r + j0, g.at_c + j0, cols_k);
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
    std::vector<int64_t> spec;
    for (int64_t a = a0; a < a1; ++a) {
      const float* p = P + a * ldp;
      const int64_t i = row0 + a;
      float v[kSums];
      const Sample x{i, at_r[i], at_c[i], static_cast<int32_t>(i), m_r[i], logl_r[i], m_c[i], logl_c[i]};
      own_specials(x, B, nullptr, 0, spec);
      sums<false>(p, Q + a * ldq, B, x, spec, inv_tau, eps, unb, m_r, logl_r, m_c, logl_c, v);
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
