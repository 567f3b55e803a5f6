// Fused CPU kernels of the SREM loss (SPEC.md): the `cpu` backend's B×B work, over fp32 panels of
// S that the caller (srem_kernels/backends/cpu.py) forms with torch's GEMM or takes from a whole S.
// C ABI: raw pointers, sizes and leading dimensions (unit column stride); module.cpp binds them.
// Vectors are indexed by sample (0..B-1). Every function splits its work over `threads` OpenMP
// threads so that each output is written by one of them and every sum runs in a fixed order:
// results are bitwise the same for any thread count.
//
//   stats.cpp     pass 1: srem_cpu_stats_panel
//   coupled.cpp   pass 2: srem_cpu_forward_panel (rows and their columns, for row ranges),
//                 srem_cpu_pass2_panel / srem_cpu_pass2_full (each element pair formed once)
//   backward.cpp  dS: srem_cpu_backward_panel
//   glue.cpp      the B-vector work after the kernels (its fp32 forward and upstream here for node.cpp)
#pragma once

#include <cstdint>

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
                          int threads);

// After the last panel of pass 1: logl_c = log1p(rest_c), lse_r = m_r + logl_r, lse_c = m_c + logl_c
// (what three vector operators did, in one call).
void srem_cpu_finish_pass1(int64_t B, const float* m_r, const float* logl_r, const float* m_c, const float* rest_c,
                           float* logl_c, float* lse_r, float* lse_c);

// Pass 2 over P = S[I, :] and Q = S[:, I]ᵀ (Q[a, j] = S[j, row0 + a]): every statistic of sample
// i = row0 + a that needs the probabilities — row i of P for its i2t problem, row a of Q (column
// i of S) for its t2i problem, and both for sce, which couples (i, j) with (j, i).
// A_r_rest / A_c_rest: A_r / A_c without the term of the row's (column's) maximal element at_r
// (at_c), which the backward needs apart.
void srem_cpu_forward_panel(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t rows, int64_t B,
                            int64_t row0, float inv_tau, float eps, int bias, const float* m_r, const float* logl_r,
                            const float* m_c, const float* logl_c, const int64_t* at_r, const int64_t* at_c,
                            float* ce_i2t, float* ce_t2i, float* ent_i2t, float* ent_t2i, float* sce, float* cbcl,
                            float* A_r, float* A_c, float* A_r_rest, float* A_c_rest, int threads);

// Pass 2 of a whole batch, panel by panel (row0 = 0, R, 2R, ... in order), each element pair
// (i, j), (j, i) formed once: P = S[row0 : row0+rows, row0 :] and Q = S[row0 :, row0 : row0+rows]ᵀ,
// both rows × (B - row0), leading dimensions ldp, ldq (Q[a, b] = S[row0 + b, row0 + a]). The pairs
// whose both samples lie in the panel are taken row by row; the rest feed both samples at once.
// acc (B × 8, zero before the first panel) gathers every sample's sums; srem_cpu_pass2_finish
// turns it into the statistics.
void srem_cpu_pass2_panel(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t rows, int64_t B,
                          int64_t row0, float inv_tau, float eps, int bias, const float* m_r, const float* logl_r,
                          const float* m_c, const float* logl_c, const int64_t* at_r, const int64_t* at_c, float* acc,
                          int threads);

void srem_cpu_pass2_finish(const float* acc, int64_t B, float inv_tau, const float* m_r, const float* logl_r,
                           const float* m_c, const float* logl_c, const float* pos, float* ce_i2t, float* ce_t2i,
                           float* ent_i2t, float* ent_t2i, float* sce, float* cbcl, float* A_r, float* A_c,
                           float* A_r_rest, float* A_c_rest);

// Pass 2 of a whole batch over a materialised S (B × B, leading dimension ld): the panels of
// srem_cpu_pass2_panel, srem_cpu_pass2_rows(B) rows each, with Q read from S (transposed tile by
// tile), all in one parallel region; then the statistics. Its workspace: srem_cpu_pass2_workspace(B)
// bytes.
void srem_cpu_pass2_full(const float* S, int64_t ld, int64_t B, float inv_tau, float eps, int bias,
                         const float* m_r, const float* logl_r, const float* m_c, const float* logl_c,
                         const int64_t* at_r, const int64_t* at_c, const float* pos, float* ce_i2t, float* ce_t2i,
                         float* ent_i2t, float* ent_t2i, float* sce, float* cbcl, float* A_r, float* A_c,
                         float* A_r_rest, float* A_c_rest, int threads);

int64_t srem_cpu_pass2_rows(int64_t B);
int64_t srem_cpu_pass2_workspace(int64_t B);

// Backward over P = S[I, :]: dS[I, :] into D (may alias P), per fused.py's contract:
//   dS_ij = ( g_i (E_r_ij - Pr_ij A_r_i) + g_j (E_c_ij - Pc_ij A_c_j) ) / tau
//           - (k_r_i + k_c_i) [i = j] + k_r_i [j = hard_i2t_index_i] + k_c_j [i = hard_t2i_index_j]
// tau_acc (nullptr: not asked): adds the panel's share of d_tau (fused.py),
//   sum_ij ( g_i (E_r_ij - Pr_ij A_r_i) (-log Pr_ij) + g_j (E_c_ij - Pc_ij A_c_j) (-log Pc_ij) ) / tau,
// rows summed in order in double.
void srem_cpu_backward_panel(const float* P, int64_t ldp, float* D, int64_t ldd, int64_t rows, int64_t B, int64_t row0,
                             float inv_tau, float eps, int bias, const float* m_r, const float* logl_r,
                             const float* m_c, const float* logl_c, const int64_t* at_r, const int64_t* at_c,
                             const float* A_r, const float* A_c, const float* A_r_rest, const float* A_c_rest,
                             const float* g, const float* k_r, const float* k_c, const int64_t* hard_r_idx,
                             const int64_t* hard_c_idx, int threads, double* tau_acc);

// The glue's fp32 forward and upstream (glue.cpp, whose bindings take fp64 too), for node.cpp's
// C++ autograd node: what glue.forward / glue.upstream compute for cpu tensors, with no margin
// vector, no given clean weights and no sensitivity factor. ws: glue.ROWS rows of B.
void srem_cpu_glue_forward_f32(int64_t B, const float* lse_r, const float* lse_c, const float* pos,
                               const float* hard_r, const float* hard_c, const float* sce, const float* cbcl,
                               float margin, int select, int sce_weight, int reduction, float tau, float lambda_hard,
                               float lambda_cbcl, float* ws, float* loss);
void srem_cpu_glue_upstream_f32(int64_t B, const float* g, int64_t g_stride, float scale, float lambda_cbcl,
                                const float* ws, float* out);

// The vector functions of vecmath.h over n floats (for tests/test_cpu_vecmath.py): fn 0 exp_neg(x),
// 1 p of exp_pq(x), 2 q of exp_pq(x), 3 log_pos(x), 4 log1p_neg(x); 1 on an unknown fn.
int srem_cpu_vecmath(int fn, const float* x, float* out, int64_t n);
// The same for vecmath.h's double functions: fn 0 exp_neg_d(x).
int srem_cpu_vecmath_d(int fn, const double* x, double* out, int64_t n);

}  // extern "C"
