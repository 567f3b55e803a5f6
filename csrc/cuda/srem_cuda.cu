// CUDA kernels of the SREM loss (SPEC.md), the `cuda` backend's B×B work.
//
// The numerics of the CPU backend (csrc/cpu/terms.h and backward.cpp give the math) in its
// streaming design with a per-sample pass 2 (forward_panel: rows and columns of each panel; the CPU
// backend has since added a materialised strategy and a paired pass 2): the host (srem_kernels/backends/cuda.py) walks S in row panels; `similarity` forms a
// panel from img/txt with shared-memory tiles (tensor cores through WMMA for fp16/bf16, IEEE fp32
// FMAs for fp32), the panel kernels reduce it per row (one block per row) and per column (one
// thread per column, folded into running column statistics panel after panel: an online
// logsumexp), and `gemm` forms dS·T and dSᵀ·I. No atomics; every sum has a fixed order, so the
// results are bitwise reproducible. Only S panels of R×B are held, never B×B.
//
// Z = S / tau is always rounded before it meets m (z = __fmul_rn(s, 1/tau)): a contracted
// fma(-s, 1/tau, m) would skip the rounding m was taken from (csrc/cpu/terms.h).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cfloat>
#include <cstdint>

#include "srem_cuda.h"

namespace {

using namespace nvcuda;

#define SREM_TRY(call)                                  \
  do {                                                  \
    const cudaError_t err_ = (call);                    \
    if (err_ != cudaSuccess) return cudaGetErrorString(err_); \
  } while (0)
#define SREM_LAUNCHED() SREM_TRY(cudaGetLastError())

constexpr int kThreads = 256;  // block size of the row kernels (a fixed reduction tree)
constexpr float kInf = __builtin_huge_valf();

template <class T>
__device__ __forceinline__ float to_f(T x);
template <>
__device__ __forceinline__ float to_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T zero();
template <>
__device__ __forceinline__ __half zero<__half>() { return __float2half(0.0f); }
template <>
__device__ __forceinline__ __nv_bfloat16 zero<__nv_bfloat16>() { return __float2bfloat16(0.0f); }

__device__ __forceinline__ float clamp0(float x) { return x < 0.0f ? 0.0f : x; }  // keeps NaN
__device__ __forceinline__ float lift(float x, float lo) { return x < lo ? lo : x; }

// 1 - p for p = exp(-nl), exact also as p -> 1; log(1 - p + eps) in the form that keeps either end.
__device__ __forceinline__ float one_minus(float nl) { return -expm1f(-nl); }
__device__ __forceinline__ float log_q_eps(float p, float q, float eps) {
  return p < 0.5f ? log1pf(eps - p) : logf(q + eps);
}

// ---------------------------------------------------------------- block reductions (fixed order)

// 1/tau: the host's float, or — a tensor tau, a learnable temperature — formed from its fp64 value in
// device memory (no host read): 1.0 / tau in double (IEEE division), rounded once to float, the
// bits Python's 1.0 / tau passed as a float has.
__device__ __forceinline__ float inv_tau_of(float host, const double* __restrict__ dev) {
  return dev != nullptr ? static_cast<float>(1.0 / *dev) : host;
}

__device__ __forceinline__ float block_sum(float v, float* smem) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // smem may still be read by a previous reduction
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float s = 0.0f;
  if (warp == 0) {
    s = lane < (blockDim.x >> 5) ? smem[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
  }
  return s;  // valid in thread 0
}

// (value, index) pairs: `better` decides; ties on value go to the lower index.
struct MaxFirst {  // NaN ignored (a row's max for the softmax)
  __device__ static bool better(float v, int64_t j, float bv, int64_t bj) { return v > bv || (v == bv && j < bj); }
};
struct MaxFirstNaN {  // NaN wins, the first NaN (the hardest negative: SPEC / python_ref)
  __device__ static bool better(float v, int64_t j, float bv, int64_t bj) {
    const bool vn = v != v, bn = bv != bv;
    if (vn || bn) return vn && (!bn || j < bj);
    return v > bv || (v == bv && j < bj);
  }
};

template <class Op>
__device__ void block_argmax(float& v, int64_t& j, float* sv, int64_t* sj) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_down_sync(0xffffffffu, v, o);
    const int64_t oj = __shfl_down_sync(0xffffffffu, j, o);
    if (Op::better(ov, oj, v, j)) v = ov, j = oj;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sv[warp] = v, sj[warp] = j;
  __syncthreads();
  if (warp == 0) {
    v = lane < (blockDim.x >> 5) ? sv[lane] : -kInf;
    j = lane < (blockDim.x >> 5) ? sj[lane] : INT64_MAX;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_down_sync(0xffffffffu, v, o);
      const int64_t oj = __shfl_down_sync(0xffffffffu, j, o);
      if (Op::better(ov, oj, v, j)) v = ov, j = oj;
    }
  }
}

// ---------------------------------------------------------------- similarity tiles

constexpr int TM = 64, TN = 64, TK = 16;

// The SIMT micro-tile shared by similarity_simt and gemm_simt: each of 256 threads owns a 4×4
// block of the 64×64 tile (rows ty + 16u, columns tx + 16v) and adds the TK-slice in shared
// memory to it, fp32 FMAs in k order (IEEE, deterministic).
__device__ __forceinline__ void simt_tile_fma(const float (&xs)[TK][TM + 4], const float (&ys)[TK][TN + 4], int ty,
                                              int tx, float (&acc)[4][4]) {
#pragma unroll
  for (int k = 0; k < TK; ++k) {
    float a[4], b[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) a[u] = xs[k][ty + 16 * u], b[u] = ys[k][tx + 16 * u];
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
      for (int v = 0; v < 4; ++v) acc[u][v] = fmaf(a[u], b[v], acc[u][v]);
  }
}

// P[a, j] = <X_a, Y_j>, fp32 FMAs in k order (IEEE, deterministic); any input type.
template <class T>
__global__ void __launch_bounds__(256) similarity_simt(const T* __restrict__ X, int64_t sx0, int64_t sx1,
                                                        const T* __restrict__ Y, int64_t sy0, int64_t sy1,
                                                        int64_t rows, int64_t n, int64_t D, float* __restrict__ P,
                                                        int64_t ldp) {
  __shared__ float xs[TK][TM + 4];
  __shared__ float ys[TK][TN + 4];
  const int64_t m0 = (int64_t)blockIdx.y * TM, n0 = (int64_t)blockIdx.x * TN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < D; k0 += TK) {
    for (int idx = threadIdx.x; idx < TM * TK; idx += blockDim.x) {
      const int r = idx / TK, k = idx % TK;
      const int64_t gk = k0 + k, gm = m0 + r, gn = n0 + r;
      xs[k][r] = (gm < rows && gk < D) ? to_f(X[gm * sx0 + gk * sx1]) : 0.0f;
      ys[k][r] = (gn < n && gk < D) ? to_f(Y[gn * sy0 + gk * sy1]) : 0.0f;
    }
    __syncthreads();
    simt_tile_fma(xs, ys, ty, tx, acc);
    __syncthreads();
  }
#pragma unroll
  for (int u = 0; u < 4; ++u)
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const int64_t gm = m0 + ty + 16 * u, gn = n0 + tx + 16 * v;
      if (gm < rows && gn < n) P[gm * ldp + gn] = acc[u][v];
    }
}

// The same on tensor cores for fp16 / bf16 (fp32 accumulation): 4 warps, each a 32×32 quarter of
// the 64×64 tile as 2×2 WMMA 16×16×16 fragments; K in steps of 32 staged through shared memory.
template <class T>
__global__ void __launch_bounds__(128) similarity_wmma(const T* __restrict__ X, int64_t sx0, int64_t sx1,
                                                        const T* __restrict__ Y, int64_t sy0, int64_t sy1,
                                                        int64_t rows, int64_t n, int64_t D, float* __restrict__ P,
                                                        int64_t ldp) {
  constexpr int BK = 32, LD = BK + 8, LDC = TN + 4;  // ldm: multiples of 8 (16-bit) and 4 (fp32)
  __shared__ __align__(32) T xs[TM][LD];
  __shared__ __align__(32) T ys[TN][LD];
  __shared__ __align__(32) float cs[TM][LDC];
  const int64_t m0 = (int64_t)blockIdx.y * TM, n0 = (int64_t)blockIdx.x * TN;
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int u = 0; u < 2; ++u)
#pragma unroll
    for (int v = 0; v < 2; ++v) wmma::fill_fragment(acc[u][v], 0.0f);
  for (int64_t k0 = 0; k0 < D; k0 += BK) {
    for (int idx = threadIdx.x; idx < TM * BK; idx += blockDim.x) {
      const int r = idx / BK, k = idx % BK;
      const int64_t gk = k0 + k, gm = m0 + r, gn = n0 + r;
      xs[r][k] = (gm < rows && gk < D) ? X[gm * sx0 + gk * sx1] : zero<T>();
      ys[r][k] = (gn < n && gk < D) ? Y[gn * sy0 + gk * sy1] : zero<T>();
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];  // b(k, n) = ys[n][k]
#pragma unroll
      for (int u = 0; u < 2; ++u) wmma::load_matrix_sync(a[u], &xs[wm * 32 + u * 16][kk], LD);
#pragma unroll
      for (int v = 0; v < 2; ++v) wmma::load_matrix_sync(b[v], &ys[wn * 32 + v * 16][kk], LD);
#pragma unroll
      for (int u = 0; u < 2; ++u)
#pragma unroll
        for (int v = 0; v < 2; ++v) wmma::mma_sync(acc[u][v], a[u], b[v], acc[u][v]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int u = 0; u < 2; ++u)
#pragma unroll
    for (int v = 0; v < 2; ++v)
      wmma::store_matrix_sync(&cs[wm * 32 + u * 16][wn * 32 + v * 16], acc[u][v], LDC, wmma::mem_row_major);
  __syncthreads();
  for (int idx = threadIdx.x; idx < TM * TN; idx += blockDim.x) {
    const int r = idx / TN, c = idx % TN;
    const int64_t gm = m0 + r, gn = n0 + c;
    if (gm < rows && gn < n) P[gm * ldp + gn] = cs[r][c];
  }
}

// ---------------------------------------------------------------- pass 1

__global__ void __launch_bounds__(kThreads) stats_rows(const float* __restrict__ P, int64_t ldp, int64_t B,
                                                       int64_t row0, float inv_tau_h, const double* tau_dev,
                                                       float* m_r, float* logl_r, int64_t* at_r, float* pos,
                                                       float* hard_r, int64_t* hard_r_idx) {
  const float inv_tau = inv_tau_of(inv_tau_h, tau_dev);
  __shared__ float sv[32];
  __shared__ int64_t sj[32];
  const int64_t a = blockIdx.x, i = row0 + a;
  const float* p = P + a * ldp;
  float mx = -kInf;
  int64_t at = INT64_MAX;
  for (int64_t j = threadIdx.x; j < B; j += blockDim.x)
    if (MaxFirst::better(p[j], j, mx, at)) mx = p[j], at = j;
  block_argmax<MaxFirst>(mx, at, sv, sj);
  __shared__ float s_mx;
  __shared__ int64_t s_at;
  if (threadIdx.x == 0) s_mx = mx, s_at = at == INT64_MAX ? 0 : at;
  __syncthreads();
  mx = s_mx, at = s_at;
  const float m = __fmul_rn(mx, inv_tau);
  float rest = 0.0f;
  for (int64_t j = threadIdx.x; j < B; j += blockDim.x)
    if (j != at) rest += expf(__fmul_rn(p[j], inv_tau) - m);
  rest = block_sum(rest, sv);
  float hv = -kInf;
  int64_t hj = INT64_MAX;
  for (int64_t j = threadIdx.x; j < B; j += blockDim.x)
    if (j != i && MaxFirstNaN::better(p[j], j, hv, hj)) hv = p[j], hj = j;
  block_argmax<MaxFirstNaN>(hv, hj, sv, sj);
  if (threadIdx.x == 0) {
    m_r[i] = m;
    logl_r[i] = log1pf(rest);
    at_r[i] = at;
    pos[i] = p[i];
    hard_r[i] = hv;
    hard_r_idx[i] = hj == INT64_MAX ? -1 : hj;
  }
}

// One thread per column: the panel's max (first row), sum without it, hardest off-diagonal row,
// folded into the running column statistics (panels come in row order: lowest index on ties).
__global__ void stats_cols(const float* __restrict__ P, int64_t ldp, int64_t rows, int64_t B, int64_t row0,
                           float inv_tau_h, const double* tau_dev, float* m_c, float* rest_c, int64_t* at_c,
                           float* hard_c, int64_t* hard_c_idx, int first) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= B) return;
  const float inv_tau = inv_tau_of(inv_tau_h, tau_dev);
  float pm = -kInf, ph = -kInf;
  int64_t pat = 0, phi = -1;
  for (int64_t a = 0; a < rows; ++a) {
    const float v = P[a * ldp + c];
    if (v > pm) pm = v, pat = a;
    if (c != row0 + a && ph == ph && (v > ph || v != v)) ph = v, phi = row0 + a;
  }
  const float pmz = __fmul_rn(pm, inv_tau);
  float prest = 0.0f;
  for (int64_t a = 0; a < rows; ++a)
    if (a != pat) prest += expf(__fmul_rn(P[a * ldp + c], inv_tau) - pmz);
  if (first) {
    m_c[c] = pmz, rest_c[c] = prest, at_c[c] = row0 + pat, hard_c[c] = ph, hard_c_idx[c] = phi;
    return;
  }
  if (pmz > m_c[c]) {
    rest_c[c] = prest + (rest_c[c] + 1.0f) * expf(m_c[c] - pmz);
    m_c[c] = pmz;
    at_c[c] = row0 + pat;
  } else {
    rest_c[c] = rest_c[c] + (prest + 1.0f) * expf(pmz - m_c[c]);
  }
  const float h = hard_c[c];
  if (h == h && phi >= 0 && (ph > h || ph != ph || hard_c_idx[c] < 0)) hard_c[c] = ph, hard_c_idx[c] = phi;
}

// ---------------------------------------------------------------- pass 2

__global__ void __launch_bounds__(kThreads) forward_rows(
    const float* __restrict__ P, int64_t ldp, const float* __restrict__ Q, int64_t ldq, int64_t B, int64_t row0,
    float inv_tau_h, const double* tau_dev, float eps, int bias, const float* __restrict__ m_r,
    const float* __restrict__ logl_r, const float* __restrict__ m_c, const float* __restrict__ logl_c,
    const int64_t* __restrict__ at_r, const int64_t* __restrict__ at_c, float* ce_i2t, float* ce_t2i, float* ent_i2t,
    float* ent_t2i, float* sce, float* cbcl, float* A_r, float* A_c, float* A_r_rest, float* A_c_rest) {
  const float inv_tau = inv_tau_of(inv_tau_h, tau_dev);
  __shared__ float red[32];
  const int64_t a = blockIdx.x, i = row0 + a;
  const float* p = P + a * ldp;
  const float* q = Q + a * ldq;
  const float mr = m_r[i], lr = logl_r[i], mc = m_c[i], lc = logl_c[i];
  const int64_t atr = at_r[i], atc = at_c[i];
  const float unbiased = bias ? 0.0f : 1.0f;
  float e_r = 0, e_c = 0, s = 0, cb = 0, ar = 0, ac = 0, ar_at = 0, ac_at = 0;
  for (int64_t j = threadIdx.x; j < B; j += blockDim.x) {
    const float z = __fmul_rn(p[j], inv_tau), zq = __fmul_rn(q[j], inv_tau);
    const float nlr = clamp0((mr - z) + lr);            // -log Pr_ij
    const float nlc = clamp0((m_c[j] - z) + logl_c[j]);  // -log Pc_ij
    const float nlr_q = clamp0((m_r[j] - zq) + logl_r[j]);  // -log Pr_ji
    const float nlc_q = clamp0((mc - zq) + lc);             // -log Pc_ji
    const float pr = expf(-nlr), pc = expf(-nlc), pr_q = expf(-nlr_q), pc_q = expf(-nlc_q);
    e_r += pr * nlr;
    e_c += pc_q * nlc_q;
    s += pr * nlc_q + pc_q * nlr;
    if (j != i) {
      const float qr = one_minus(nlr), qc_q = one_minus(nlc_q);
      const float b_r = lift(one_minus(nlc), unbiased), b_c = lift(one_minus(nlr_q), unbiased);
      cb += -(b_r * log_q_eps(pr, qr, eps)) - b_c * log_q_eps(pc_q, qc_q, eps);
      const float er = b_r * pr / (qr + eps), ec = b_c * pc_q / (qc_q + eps);
      if (j == atr) ar_at += er; else ar += er;
      if (j == atc) ac_at += ec; else ac += ec;
    }
  }
  e_r = block_sum(e_r, red);
  e_c = block_sum(e_c, red);
  s = block_sum(s, red);
  cb = block_sum(cb, red);
  ar = block_sum(ar, red);
  ac = block_sum(ac, red);
  ar_at = block_sum(ar_at, red);
  ac_at = block_sum(ac_at, red);
  if (threadIdx.x == 0) {
    ce_i2t[i] = (mr - __fmul_rn(p[i], inv_tau)) + lr;
    ce_t2i[i] = (mc - __fmul_rn(q[i], inv_tau)) + lc;
    ent_i2t[i] = e_r;
    ent_t2i[i] = e_c;
    sce[i] = 0.5f * s;
    cbcl[i] = cb;
    A_r[i] = ar + ar_at;
    A_c[i] = ac + ac_at;
    A_r_rest[i] = ar;
    A_c_rest[i] = ac;
  }
}

// ---------------------------------------------------------------- backward

// One thread per element of the panel; E - P A at a row's (column's) maximal element as
// E (1 - P) - P A_rest (csrc/cpu/backward.cpp). tau_part (nullptr: not asked): the block's share
// of d_tau (fused.py) at tau_part[blockIdx.y * gridDim.x + blockIdx.x], summed by the caller in
// a fixed order (no atomics).
__global__ void __launch_bounds__(256) backward_elems(const float* P, int64_t ldp, float* Dm, int64_t ldd, int64_t B,
                               int64_t row0, float inv_tau_h, const double* tau_dev, float eps, int bias,
                               const float* __restrict__ m_r,
                               const float* __restrict__ logl_r, const float* __restrict__ m_c,
                               const float* __restrict__ logl_c, const int64_t* __restrict__ at_r,
                               const int64_t* __restrict__ at_c, const float* __restrict__ A_r,
                               const float* __restrict__ A_c, const float* __restrict__ A_r_rest,
                               const float* __restrict__ A_c_rest, const float* __restrict__ g,
                               const float* __restrict__ k_r, const float* __restrict__ k_c,
                               const int64_t* __restrict__ hard_r_idx, const int64_t* __restrict__ hard_c_idx,
                               float* tau_part) {
  __shared__ float red[32];
  const int64_t j0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t a = blockIdx.y, i = row0 + a;
  const bool in = j0 < B;
  const int64_t j = in ? j0 : B - 1;  // past the end: computes column B - 1 again, stores nothing
  const float inv_tau = inv_tau_of(inv_tau_h, tau_dev);
  const float unbiased = bias ? 0.0f : 1.0f;
  const float z = __fmul_rn(P[a * ldp + j], inv_tau);
  const float nlr = clamp0((m_r[i] - z) + logl_r[i]), nlc = clamp0((m_c[j] - z) + logl_c[j]);
  const float pr = expf(-nlr), pc = expf(-nlc);
  const float qr = one_minus(nlr), qc = one_minus(nlc);
  const bool off = j != i;
  const float e_r = off ? lift(qc, unbiased) * pr / (qr + eps) : 0.0f;
  const float e_c = off ? lift(qr, unbiased) * pc / (qc + eps) : 0.0f;
  const float row = j == at_r[i] ? e_r * qr - pr * A_r_rest[i] : e_r - pr * A_r[i];
  const float col = at_c[j] == i ? e_c * qc - pc * A_c_rest[j] : e_c - pc * A_c[j];
  const float gr = g[i] * row, gc = g[j] * col;
  float d = (gr + gc) * inv_tau;
  if (j == i) d -= k_r[i] + k_c[i];
  if (j == hard_r_idx[i]) d += k_r[i];
  if (hard_c_idx[j] == i) d += k_c[j];
  if (in) Dm[a * ldd + j] = d;
  if (tau_part != nullptr) {  // -log P per row and column: what -sum dS·Z reduces to, without cancellation
    const float t = block_sum(in ? gr * nlr + gc * nlc : 0.0f, red);
    if (threadIdx.x == 0) tau_part[(int64_t)blockIdx.y * gridDim.x + blockIdx.x] = t * inv_tau;
  }
}

// C (+)= A·Bm, fp32 FMAs in k order.
template <class T>
__global__ void __launch_bounds__(256) gemm_simt(const float* __restrict__ A, int64_t sa0, int64_t sa1,
                                                  const T* __restrict__ Bm, int64_t sb0, int64_t sb1,
                                                  float* __restrict__ C, int64_t ldc, int64_t M, int64_t N, int64_t K,
                                                  int accumulate) {
  __shared__ float as[TK][TM + 4];
  __shared__ float bs[TK][TN + 4];
  const int64_t m0 = (int64_t)blockIdx.y * TM, n0 = (int64_t)blockIdx.x * TN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const bool a_k_fast = sa1 == 1;  // coalesced loads: walk the unit-stride dimension fastest
  const bool b_n_fast = sb1 == 1 || sb0 != 1;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += TK) {
    for (int idx = threadIdx.x; idx < TM * TK; idx += blockDim.x) {
      const int r = a_k_fast ? idx / TK : idx % TM, k = a_k_fast ? idx % TK : idx / TM;
      const int64_t gm = m0 + r, gk = k0 + k;
      as[k][r] = (gm < M && gk < K) ? A[gm * sa0 + gk * sa1] : 0.0f;
      const int c = b_n_fast ? idx % TN : idx / TK, kb = b_n_fast ? idx / TN : idx % TK;
      const int64_t gn = n0 + c, gkb = k0 + kb;
      bs[kb][c] = (gn < N && gkb < K) ? to_f(Bm[gkb * sb0 + gn * sb1]) : 0.0f;
    }
    __syncthreads();
    simt_tile_fma(as, bs, ty, tx, acc);
    __syncthreads();
  }
#pragma unroll
  for (int u = 0; u < 4; ++u)
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const int64_t gm = m0 + ty + 16 * u, gn = n0 + tx + 16 * v;
      if (gm < M && gn < N) C[gm * ldc + gn] = (accumulate ? C[gm * ldc + gn] : 0.0f) + acc[u][v];
    }
}

dim3 tiles(int64_t rows, int64_t cols) { return dim3((unsigned)((cols + TN - 1) / TN), (unsigned)((rows + TM - 1) / TM)); }

const char* bad_dtype() { return "srem_cuda: unknown dtype code"; }

}  // namespace

extern "C" {

const char* srem_cuda_similarity(const void* X, int64_t sx0, int64_t sx1, const void* Y, int64_t sy0, int64_t sy1,
                                 int dtype, int64_t rows, int64_t n, int64_t D, float* P, int64_t ldp, int device,
                                 void* stream) {
  SREM_TRY(cudaSetDevice(device));
  if (rows <= 0 || n <= 0) return nullptr;
  if ((rows + TM - 1) / TM > 65535) return "srem_cuda_similarity: too many rows in one panel";
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case SREM_F32:
      similarity_simt<float><<<tiles(rows, n), 256, 0, st>>>(static_cast<const float*>(X), sx0, sx1,
                                                              static_cast<const float*>(Y), sy0, sy1, rows, n, D, P, ldp);
      break;
    case SREM_F16:
      similarity_wmma<__half><<<tiles(rows, n), 128, 0, st>>>(static_cast<const __half*>(X), sx0, sx1,
                                                               static_cast<const __half*>(Y), sy0, sy1, rows, n, D, P,
                                                               ldp);
      break;
    case SREM_BF16:
      similarity_wmma<__nv_bfloat16><<<tiles(rows, n), 128, 0, st>>>(
          static_cast<const __nv_bfloat16*>(X), sx0, sx1, static_cast<const __nv_bfloat16*>(Y), sy0, sy1, rows, n, D,
          P, ldp);
      break;
    default:
      return bad_dtype();
  }
  SREM_LAUNCHED();
  return nullptr;
}

const char* srem_cuda_stats_panel(const float* P, int64_t ldp, int64_t rows, int64_t B, int64_t row0, float inv_tau,
                                  const double* tau_dev, float* m_r, float* logl_r, int64_t* at_r, float* pos,
                                  float* hard_r, int64_t* hard_r_idx, float* m_c, float* rest_c, int64_t* at_c,
                                  float* hard_c, int64_t* hard_c_idx, int first, int device, void* stream) {
  SREM_TRY(cudaSetDevice(device));
  if (rows <= 0) return nullptr;
  auto st = static_cast<cudaStream_t>(stream);
  stats_rows<<<(unsigned)rows, kThreads, 0, st>>>(P, ldp, B, row0, inv_tau, tau_dev, m_r, logl_r, at_r, pos, hard_r,
                                                  hard_r_idx);
  SREM_LAUNCHED();
  if (m_c == nullptr) return nullptr;  // rows only (a row range of the distributed loss)
  stats_cols<<<(unsigned)((B + 255) / 256), 256, 0, st>>>(P, ldp, rows, B, row0, inv_tau, tau_dev, m_c, rest_c, at_c,
                                                         hard_c, hard_c_idx, first);
  SREM_LAUNCHED();
  return nullptr;
}

const char* srem_cuda_forward_panel(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t rows, int64_t B,
                                    int64_t row0, float inv_tau, const double* tau_dev, float eps, int bias,
                                    const float* m_r, const float* logl_r, const float* m_c, const float* logl_c,
                                    const int64_t* at_r, const int64_t* at_c, float* ce_i2t, float* ce_t2i,
                                    float* ent_i2t, float* ent_t2i, float* sce, float* cbcl, float* A_r, float* A_c,
                                    float* A_r_rest, float* A_c_rest, int device, void* stream) {
  SREM_TRY(cudaSetDevice(device));
  if (rows <= 0) return nullptr;
  forward_rows<<<(unsigned)rows, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      P, ldp, Q, ldq, B, row0, inv_tau, tau_dev, eps, bias, m_r, logl_r, m_c, logl_c, at_r, at_c, ce_i2t, ce_t2i, ent_i2t,
      ent_t2i, sce, cbcl, A_r, A_c, A_r_rest, A_c_rest);
  SREM_LAUNCHED();
  return nullptr;
}

const char* srem_cuda_backward_panel(const float* P, int64_t ldp, float* Dm, int64_t ldd, int64_t rows, int64_t B,
                                     int64_t row0, float inv_tau, const double* tau_dev, float eps, int bias,
                                     const float* m_r, const float* logl_r, const float* m_c, const float* logl_c,
                                     const int64_t* at_r, const int64_t* at_c, const float* A_r, const float* A_c,
                                     const float* A_r_rest, const float* A_c_rest, const float* g, const float* k_r,
                                     const float* k_c, const int64_t* hard_r_idx, const int64_t* hard_c_idx,
                                     int device, void* stream, float* tau_part) {
  SREM_TRY(cudaSetDevice(device));
  if (rows <= 0) return nullptr;
  if (rows > 65535) return "srem_cuda_backward_panel: too many rows in one panel";
  const dim3 grid((unsigned)((B + 255) / 256), (unsigned)rows);
  backward_elems<<<grid, 256, 0, static_cast<cudaStream_t>(stream)>>>(
      P, ldp, Dm, ldd, B, row0, inv_tau, tau_dev, eps, bias, m_r, logl_r, m_c, logl_c, at_r, at_c, A_r, A_c, A_r_rest,
      A_c_rest, g, k_r, k_c, hard_r_idx, hard_c_idx, tau_part);
  SREM_LAUNCHED();
  return nullptr;
}

const char* srem_cuda_gemm(const float* A, int64_t sa0, int64_t sa1, const void* Bm, int64_t sb0, int64_t sb1,
                           int dtype, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K, int accumulate,
                           int device, void* stream) {
  SREM_TRY(cudaSetDevice(device));
  if (M <= 0 || N <= 0) return nullptr;
  if ((M + TM - 1) / TM > 65535) return "srem_cuda_gemm: M too large";
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case SREM_F32:
      gemm_simt<float><<<tiles(M, N), 256, 0, st>>>(A, sa0, sa1, static_cast<const float*>(Bm), sb0, sb1, C, ldc, M, N,
                                                     K, accumulate);
      break;
    case SREM_F16:
      gemm_simt<__half><<<tiles(M, N), 256, 0, st>>>(A, sa0, sa1, static_cast<const __half*>(Bm), sb0, sb1, C, ldc, M,
                                                      N, K, accumulate);
      break;
    case SREM_BF16:
      gemm_simt<__nv_bfloat16><<<tiles(M, N), 256, 0, st>>>(A, sa0, sa1, static_cast<const __nv_bfloat16*>(Bm), sb0,
                                                             sb1, C, ldc, M, N, K, accumulate);
      break;
    default:
      return bad_dtype();
  }
  SREM_LAUNCHED();
  return nullptr;
}

const char* srem_cuda_sync(int device, void* stream) {
  SREM_TRY(cudaSetDevice(device));
  SREM_TRY(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  SREM_TRY(cudaGetLastError());
  return nullptr;
}

}  // extern "C"
