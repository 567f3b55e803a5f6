// C ABI of the CUDA kernels of the SREM loss (srem_cuda.cu), bound by bind.cpp with pybind11.
//
// Everything crosses as raw device pointers, element strides, sizes, a dtype code, the device
// index and the CUDA stream (a cudaStream_t passed as void*), so the module links against the
// CUDA runtime only — no torch CUDA libraries — and builds with a CPU-only torch.
// Every function returns nullptr on success, or the CUDA error message of the failing call or
// launch (a static string owned by the runtime, or by this library).
#pragma once
#include <cstdint>

extern "C" {

enum SremDtype { SREM_F32 = 0, SREM_F16 = 1, SREM_BF16 = 2 };

// P[a, j] = sum_k X[a, k] Y[j, k] for a < rows, j < n: a panel of S (or of Sᵀ with X, Y swapped).
// X, Y: element strides (sx0, sx1), (sy0, sy1) of `dtype`; P: fp32, leading dimension ldp.
const char* srem_cuda_similarity(const void* X, int64_t sx0, int64_t sx1, const void* Y, int64_t sy0, int64_t sy1,
                                 int dtype, int64_t rows, int64_t n, int64_t D, float* P, int64_t ldp, int device,
                                 void* stream);

// tau: every kernel takes 1/tau as a float (inv_tau) and tau_dev, a pointer to a tensor tau's fp64
// value in device memory; when tau_dev is not null, 1/tau is formed from it on the device (a
// learnable temperature: no host read) and inv_tau is not read.

// Pass 1 over P = S[row0 : row0+rows, :] (the CPU kernel's contract, csrc/cpu/kernels.h);
// m_c == nullptr: the rows' statistics only.
const char* srem_cuda_stats_panel(const float* P, int64_t ldp, int64_t rows, int64_t B, int64_t row0, float inv_tau,
                                  const double* tau_dev, float* m_r, float* logl_r, int64_t* at_r, float* pos,
                                  float* hard_r, int64_t* hard_r_idx, float* m_c, float* rest_c, int64_t* at_c,
                                  float* hard_c, int64_t* hard_c_idx, int first, int device, void* stream);

// Pass 2 over P = S[I, :] and Q = S[:, I]ᵀ.
const char* srem_cuda_forward_panel(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t rows, int64_t B,
                                    int64_t row0, float inv_tau, const double* tau_dev, float eps, int bias,
                                    const float* m_r, const float* logl_r, const float* m_c, const float* logl_c,
                                    const int64_t* at_r, const int64_t* at_c, float* ce_i2t, float* ce_t2i,
                                    float* ent_i2t, float* ent_t2i, float* sce, float* cbcl, float* A_r, float* A_c,
                                    float* A_r_rest, float* A_c_rest, int device, void* stream);

// dS[I, :] into Dm (may alias P). tau_part (nullptr: not asked): each block's share of d_tau
// (fused.py), ((B + 255) / 256) · rows floats, block (x, y) at y · ((B + 255) / 256) + x.
const char* srem_cuda_backward_panel(const float* P, int64_t ldp, float* Dm, int64_t ldd, int64_t rows, int64_t B,
                                     int64_t row0, float inv_tau, const double* tau_dev, float eps, int bias,
                                     const float* m_r, const float* logl_r, const float* m_c, const float* logl_c,
                                     const int64_t* at_r, const int64_t* at_c, const float* A_r, const float* A_c,
                                     const float* A_r_rest, const float* A_c_rest, const float* g, const float* k_r,
                                     const float* k_c, const int64_t* hard_r_idx, const int64_t* hard_c_idx,
                                     int device, void* stream, float* tau_part);

// C[m, n] = (accumulate ? C[m, n] : 0) + sum_k A[m, k] Bm[k, n]; A fp32, Bm of `dtype`, both by
// element strides; C fp32 with leading dimension ldc. Each element summed by one thread in a fixed
// order: deterministic.
const char* srem_cuda_gemm(const float* A, int64_t sa0, int64_t sa1, const void* Bm, int64_t sb0, int64_t sb1,
                           int dtype, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K, int accumulate,
                           int device, void* stream);

// Waits for the stream and reports any error of the work queued on it.
const char* srem_cuda_sync(int device, void* stream);

}  // extern "C"
