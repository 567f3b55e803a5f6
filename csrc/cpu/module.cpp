// srem_kernels.backends._srem_cpu: the pybind11 bindings of the CPU kernels (kernels.h). Arguments are
// tensor.data_ptr() integers, sizes and leading dimensions; the GIL is released around each call.

#include <pybind11/pybind11.h>

#include <stdexcept>

#include "kernels.h"
#include "terms.h"

namespace py = pybind11;

namespace {

template <class T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

using u = uintptr_t;
const float* cf(u p) { return ptr<const float>(p); }
float* f(u p) { return ptr<float>(p); }
const int64_t* ci(u p) { return ptr<const int64_t>(p); }
int64_t* i64(u p) { return ptr<int64_t>(p); }

}  // namespace

void register_glue(py::module_& m);  // glue.cpp: value checks, GMM, the glue's B-vector work

PYBIND11_MODULE(_srem_cpu, m) {
  m.doc() = "Fused CPU kernels of the SREM loss over panels of S (raw pointers; see srem_kernels/backends/cpu.py)";
  register_glue(m);
  m.attr("PASS2_SUMS") = srem::kSums;  // pass 2's running sums per sample (the streaming accumulator's width)
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("finish_pass1", [](int64_t B, u m_r, u logl_r, u m_c, u rest_c, u logl_c, u lse_r, u lse_c) {
    srem_cpu_finish_pass1(B, cf(m_r), cf(logl_r), cf(m_c), cf(rest_c), f(logl_c), f(lse_r), f(lse_c));
  }, nogil);
  m.def("stats_panel", [](u P, int64_t ld, int64_t rows, int64_t B, int64_t row0, float inv_tau, u m_r, u logl_r,
                          u at_r, u pos, u hard_r, u hard_r_idx, u m_c, u rest_c, u at_c, u hard_c, u hard_c_idx,
                          bool first, int threads) {
    srem_cpu_stats_panel(cf(P), ld, rows, B, row0, inv_tau, f(m_r), f(logl_r), i64(at_r), f(pos), f(hard_r),
                         i64(hard_r_idx), f(m_c), f(rest_c), i64(at_c), f(hard_c), i64(hard_c_idx), first, threads);
  }, nogil);
  m.def("forward_panel", [](u P, int64_t ldp, u Q, int64_t ldq, int64_t rows, int64_t B, int64_t row0, float inv_tau,
                            float eps, bool bias, u m_r, u logl_r, u m_c, u logl_c, u at_r, u at_c, u ce_i2t,
                            u ce_t2i, u ent_i2t, u ent_t2i, u sce, u cbcl, u A_r, u A_c, u A_r_rest, u A_c_rest,
                            int threads) {
    srem_cpu_forward_panel(cf(P), ldp, cf(Q), ldq, rows, B, row0, inv_tau, eps, bias, cf(m_r), cf(logl_r), cf(m_c),
                           cf(logl_c), ci(at_r), ci(at_c), f(ce_i2t), f(ce_t2i), f(ent_i2t), f(ent_t2i), f(sce),
                           f(cbcl), f(A_r), f(A_c), f(A_r_rest), f(A_c_rest), threads);
  }, nogil);
  m.def("pass2_panel", [](u P, int64_t ldp, u Q, int64_t ldq, int64_t rows, int64_t B, int64_t row0, float inv_tau,
                          float eps, bool bias, u m_r, u logl_r, u m_c, u logl_c, u at_r, u at_c, u acc, int threads) {
    srem_cpu_pass2_panel(cf(P), ldp, cf(Q), ldq, rows, B, row0, inv_tau, eps, bias, cf(m_r), cf(logl_r), cf(m_c),
                         cf(logl_c), ci(at_r), ci(at_c), f(acc), threads);
  }, nogil);
  m.def("pass2_finish", [](u acc, int64_t B, float inv_tau, u m_r, u logl_r, u m_c, u logl_c, u pos, u ce_i2t,
                           u ce_t2i, u ent_i2t, u ent_t2i, u sce, u cbcl, u A_r, u A_c, u A_r_rest, u A_c_rest) {
    srem_cpu_pass2_finish(cf(acc), B, inv_tau, cf(m_r), cf(logl_r), cf(m_c), cf(logl_c), cf(pos), f(ce_i2t),
                          f(ce_t2i), f(ent_i2t), f(ent_t2i), f(sce), f(cbcl), f(A_r), f(A_c), f(A_r_rest),
                          f(A_c_rest));
  }, nogil);
  m.def("pass2_full", [](u S, int64_t ld, int64_t B, float inv_tau, float eps, bool bias, u m_r, u logl_r, u m_c,
                         u logl_c, u at_r, u at_c, u pos, u ce_i2t, u ce_t2i, u ent_i2t, u ent_t2i, u sce, u cbcl,
                         u A_r, u A_c, u A_r_rest, u A_c_rest, int threads) {
    srem_cpu_pass2_full(cf(S), ld, B, inv_tau, eps, bias, cf(m_r), cf(logl_r), cf(m_c), cf(logl_c), ci(at_r),
                        ci(at_c), cf(pos), f(ce_i2t), f(ce_t2i), f(ent_i2t), f(ent_t2i), f(sce), f(cbcl), f(A_r),
                        f(A_c), f(A_r_rest), f(A_c_rest), threads);
  }, nogil);
  m.def("pass2_workspace", &srem_cpu_pass2_workspace, "bytes pass2_full allocates for its sums at this B");
  m.def("backward_panel", [](u P, int64_t ldp, u D, int64_t ldd, int64_t rows, int64_t B, int64_t row0,
                             float inv_tau, float eps, bool bias, u m_r, u logl_r, u m_c, u logl_c, u at_r, u at_c,
                             u A_r, u A_c, u A_r_rest, u A_c_rest, u g, u k_r, u k_c, u hard_r_idx, u hard_c_idx,
                             int threads, u tau_acc) {
    srem_cpu_backward_panel(cf(P), ldp, f(D), ldd, rows, B, row0, inv_tau, eps, bias, cf(m_r), cf(logl_r), cf(m_c),
                            cf(logl_c), ci(at_r), ci(at_c), cf(A_r), cf(A_c), cf(A_r_rest), cf(A_c_rest), cf(g),
                            cf(k_r), cf(k_c), ci(hard_r_idx), ci(hard_c_idx), threads, ptr<double>(tau_acc));
  }, nogil);
  m.def("vecmath", [](int fn, u x, u out, int64_t n) {
    if (srem_cpu_vecmath(fn, cf(x), f(out), n) != 0) throw std::invalid_argument("vecmath: unknown function code");
  });
  m.def("vecmath_d", [](int fn, u x, u out, int64_t n) {
    if (srem_cpu_vecmath_d(fn, ptr<const double>(x), ptr<double>(out), n) != 0)
      throw std::invalid_argument("vecmath_d: unknown function code");
  });
}
