// pybind11 binding of the C ABI in srem_cuda.h: device pointers, strides and the stream cross as
// Python ints; a returned CUDA error message becomes a RuntimeError. Built by the host compiler
// and linked with the nvcc-compiled objects and the CUDA runtime (setup.py).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "srem_cuda.h"

namespace py = pybind11;

namespace {

void check(const char* err, const char* what) {
  if (err != nullptr) throw std::runtime_error(std::string("srem_kernels CUDA backend: ") + what + ": " + err);
}

template <class T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }
void* stream_of(uintptr_t s) { return reinterpret_cast<void*>(s); }

}  // namespace

PYBIND11_MODULE(_srem_cuda, m) {
  m.doc() = "CUDA kernels of the SREM loss over row panels of S (raw device pointers; see srem_kernels/backends/cuda.py)";
  m.attr("F32") = static_cast<int>(SREM_F32);
  m.attr("F16") = static_cast<int>(SREM_F16);
  m.attr("BF16") = static_cast<int>(SREM_BF16);
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("similarity", [](uintptr_t X, int64_t sx0, int64_t sx1, uintptr_t Y, int64_t sy0, int64_t sy1, int dtype,
                         int64_t rows, int64_t n, int64_t D, uintptr_t P, int64_t ldp, int device, uintptr_t stream) {
    check(srem_cuda_similarity(ptr<const void>(X), sx0, sx1, ptr<const void>(Y), sy0, sy1, dtype, rows, n, D,
                               ptr<float>(P), ldp, device, stream_of(stream)), "similarity");
  }, nogil);
  m.def("stats_panel", [](uintptr_t P, int64_t ld, int64_t rows, int64_t B, int64_t row0, float inv_tau,
                          uintptr_t tau_dev, uintptr_t m_r, uintptr_t logl_r, uintptr_t at_r, uintptr_t pos,
                          uintptr_t hard_r, uintptr_t hard_r_idx, uintptr_t m_c, uintptr_t rest_c, uintptr_t at_c,
                          uintptr_t hard_c, uintptr_t hard_c_idx, bool first, int device, uintptr_t stream) {
    check(srem_cuda_stats_panel(ptr<const float>(P), ld, rows, B, row0, inv_tau, ptr<const double>(tau_dev),
                                ptr<float>(m_r), ptr<float>(logl_r),
                                ptr<int64_t>(at_r), ptr<float>(pos), ptr<float>(hard_r), ptr<int64_t>(hard_r_idx),
                                ptr<float>(m_c), ptr<float>(rest_c), ptr<int64_t>(at_c), ptr<float>(hard_c),
                                ptr<int64_t>(hard_c_idx), first, device, stream_of(stream)), "stats_panel");
  }, nogil);
  m.def("forward_panel", [](uintptr_t P, int64_t ldp, uintptr_t Q, int64_t ldq, int64_t rows, int64_t B, int64_t row0,
                            float inv_tau, uintptr_t tau_dev, float eps, bool bias, uintptr_t m_r, uintptr_t logl_r,
                            uintptr_t m_c, uintptr_t logl_c, uintptr_t at_r, uintptr_t at_c, uintptr_t ce_i2t,
                            uintptr_t ce_t2i, uintptr_t ent_i2t, uintptr_t ent_t2i, uintptr_t sce, uintptr_t cbcl,
                            uintptr_t A_r, uintptr_t A_c, uintptr_t A_r_rest, uintptr_t A_c_rest, int device,
                            uintptr_t stream) {
    check(srem_cuda_forward_panel(ptr<const float>(P), ldp, ptr<const float>(Q), ldq, rows, B, row0, inv_tau,
                                  ptr<const double>(tau_dev), eps, bias,
                                  ptr<const float>(m_r), ptr<const float>(logl_r), ptr<const float>(m_c),
                                  ptr<const float>(logl_c), ptr<const int64_t>(at_r), ptr<const int64_t>(at_c),
                                  ptr<float>(ce_i2t), ptr<float>(ce_t2i), ptr<float>(ent_i2t), ptr<float>(ent_t2i),
                                  ptr<float>(sce), ptr<float>(cbcl), ptr<float>(A_r), ptr<float>(A_c),
                                  ptr<float>(A_r_rest), ptr<float>(A_c_rest), device, stream_of(stream)),
          "forward_panel");
  }, nogil);
  m.def("backward_panel", [](uintptr_t P, int64_t ldp, uintptr_t D, int64_t ldd, int64_t rows, int64_t B, int64_t row0,
                             float inv_tau, uintptr_t tau_dev, float eps, bool bias, uintptr_t m_r, uintptr_t logl_r,
                             uintptr_t m_c, uintptr_t logl_c, uintptr_t at_r, uintptr_t at_c, uintptr_t A_r,
                             uintptr_t A_c, uintptr_t A_r_rest, uintptr_t A_c_rest, uintptr_t g, uintptr_t k_r,
                             uintptr_t k_c, uintptr_t hard_r_idx, uintptr_t hard_c_idx, int device, uintptr_t stream,
                             uintptr_t tau_part) {
    check(srem_cuda_backward_panel(ptr<const float>(P), ldp, ptr<float>(D), ldd, rows, B, row0, inv_tau,
                                   ptr<const double>(tau_dev), eps, bias,
                                   ptr<const float>(m_r), ptr<const float>(logl_r), ptr<const float>(m_c),
                                   ptr<const float>(logl_c), ptr<const int64_t>(at_r), ptr<const int64_t>(at_c),
                                   ptr<const float>(A_r), ptr<const float>(A_c), ptr<const float>(A_r_rest),
                                   ptr<const float>(A_c_rest), ptr<const float>(g), ptr<const float>(k_r),
                                   ptr<const float>(k_c), ptr<const int64_t>(hard_r_idx),
                                   ptr<const int64_t>(hard_c_idx), device, stream_of(stream), ptr<float>(tau_part)),
          "backward_panel");
  }, nogil);
  m.def("gemm", [](uintptr_t A, int64_t sa0, int64_t sa1, uintptr_t Bm, int64_t sb0, int64_t sb1, int dtype,
                   uintptr_t C, int64_t ldc, int64_t M, int64_t N, int64_t K, bool accumulate, int device,
                   uintptr_t stream) {
    check(srem_cuda_gemm(ptr<const float>(A), sa0, sa1, ptr<const void>(Bm), sb0, sb1, dtype, ptr<float>(C), ldc, M, N,
                         K, accumulate, device, stream_of(stream)), "gemm");
  }, nogil);
  m.def("sync", [](int device, uintptr_t stream) { check(srem_cuda_sync(device, stream_of(stream)), "sync"); }, nogil);
}
