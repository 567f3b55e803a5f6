// srem_kernels.backends._srem_cpu_node: the `cpu` backend's short eager call (cpu_eager.py) as one
// C++ autograd node, built against torch's C++ API (setup.py; optional: without it cpu_eager.py's
// Python Function runs the same steps). At B=128 on this project's 2-core CPU the Python Function's
// machinery and steps took a third of a call, more than the three kernels together: each tensor
// operator, view or saved tensor costs 5-40 µs inside a real call, where the kernels and MKL have
// just emptied the caches (bench/results/cpu-speed.section.md, change 16).
//
// The node does what cpu_eager._EagerCall does through CPUKernels.forward / backward for the
// materialised strategy at one panel (S and the backward's dS below the kept-matrix size), in the
// same order, on the same buffers, with the same casts: its results are bitwise those of the Python
// path (tests/test_cpu_eager.py). The caller allocates the forward's outputs (cpu._outputs: poisoned
// in tests, so an element the kernels leave unwritten reads as NaN) and passes each named vector's
// row in them.

#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/utils/pybind.h>

#include "kernels.h"

namespace {

// The forward's vectors the node reads or writes (cpu.py's _FLOAT_KEYS and _INDEX_KEYS; the caller
// passes each one's row of its fp32 or int64 buffer, in this order).
enum F { m_r, logl_r, m_c, logl_c, lse_r, lse_c, pos, hard_i2t, hard_t2i, ce_i2t, ce_t2i, ent_i2t, ent_t2i, sce,
         loss_cbcl, A_r, A_c, A_r_rest, A_c_rest, rest_c, kFloats };
enum I { hard_i2t_index, hard_t2i_index, at_r, at_c, kIndices };
const char* const kFloatKeys[kFloats] = {"m_r", "logl_r", "m_c", "logl_c", "lse_r", "lse_c", "pos", "hard_i2t",
                                         "hard_t2i", "ce_i2t", "ce_t2i", "entropy_i2t", "entropy_t2i", "sce",
                                         "loss_cbcl", "A_r", "A_c", "A_r_rest", "A_c_rest", "rest_c"};
const char* const kIndexKeys[kIndices] = {"hard_i2t_index", "hard_t2i_index", "at_r", "at_c"};

// The named rows of the fp32 buffer f and the int64 buffer i.
struct Vectors {
  float* f[kFloats];
  int64_t* i[kIndices];

  Vectors(const at::Tensor& fb, const at::Tensor& ib, const std::vector<int64_t>& rows) {
    constexpr size_t kRows = kFloats + int{kIndices};
    TORCH_CHECK(rows.size() == kRows, "_srem_cpu_node: expected ", kRows, " rows, got ", rows.size());
    const int64_t B = fb.size(1);
    for (int k = 0; k < kFloats; ++k) {
      TORCH_CHECK(rows[k] >= 0 && rows[k] < fb.size(0), "_srem_cpu_node: row of ", kFloatKeys[k], " out of range");
      f[k] = fb.data_ptr<float>() + rows[k] * B;
    }
    for (int k = 0; k < kIndices; ++k) {
      TORCH_CHECK(rows[kFloats + k] >= 0 && rows[kFloats + k] < ib.size(0), "_srem_cpu_node: row of ", kIndexKeys[k],
                  " out of range");
      i[k] = ib.data_ptr<int64_t>() + rows[kFloats + k] * B;
    }
  }
};

at::Tensor as_f32(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int kArgs = 18;  // EagerCall::forward's arguments after ctx: one gradient (or none) each

class EagerCall : public torch::autograd::Function<EagerCall> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& img, const at::Tensor& txt, at::Tensor S,
                               at::Tensor f, at::Tensor i, at::Tensor ws, std::vector<int64_t> rows, double tau,
                               double margin, double eps, bool bias, int64_t select, bool sce_weight, int64_t reduction,
                               double scale, double lambda_hard, double lambda_cbcl, int64_t threads) {
    ctx->set_materialize_grads(false);
    const int64_t B = img.size(0);
    TORCH_CHECK(S.scalar_type() == at::kFloat && S.size(0) == B && S.size(1) == B && S.stride(1) == 1,
                "_srem_cpu_node: S must be a B x B fp32 matrix with unit column stride");
    TORCH_CHECK(f.is_contiguous() && i.is_contiguous() && ws.is_contiguous() && f.size(1) == B && i.size(1) == B &&
                    ws.size(1) == B && f.scalar_type() == at::kFloat && i.scalar_type() == at::kLong &&
                    ws.scalar_type() == at::kFloat,
                "_srem_cpu_node: f, i, ws must be contiguous (rows, B) buffers of fp32, int64, fp32");
    TORCH_CHECK(reduction != 2, "_srem_cpu_node: reduction 'none' takes the Python path");
    const Vectors v(f, i, rows);
    // CPUKernels.forward, materialised (cpu.py): S = I·Tᵀ, pass 1, its finish, pass 2
    at::mm_out(S, as_f32(img), as_f32(txt).t());
    const float inv_tau = static_cast<float>(1.0 / tau), *s = S.data_ptr<float>();
    const int th = static_cast<int>(threads);
    srem_cpu_stats_panel(s, S.stride(0), B, B, 0, inv_tau, v.f[m_r], v.f[logl_r], v.i[at_r], v.f[pos], v.f[hard_i2t],
                         v.i[hard_i2t_index], v.f[m_c], v.f[rest_c], v.i[at_c], v.f[hard_t2i], v.i[hard_t2i_index], 1,
                         th);
    srem_cpu_finish_pass1(B, v.f[m_r], v.f[logl_r], v.f[m_c], v.f[rest_c], v.f[logl_c], v.f[lse_r], v.f[lse_c]);
    srem_cpu_pass2_full(s, S.stride(0), B, inv_tau, static_cast<float>(eps), bias, v.f[m_r], v.f[logl_r], v.f[m_c],
                        v.f[logl_c], v.i[at_r], v.i[at_c], v.f[pos], v.f[ce_i2t], v.f[ce_t2i], v.f[ent_i2t],
                        v.f[ent_t2i], v.f[sce], v.f[loss_cbcl], v.f[A_r], v.f[A_c], v.f[A_r_rest], v.f[A_c_rest], th);
    // cpu_eager's glue call
    at::Tensor loss = at::empty({}, S.options());
    srem_cpu_glue_forward_f32(B, v.f[lse_r], v.f[lse_c], v.f[pos], v.f[hard_i2t], v.f[hard_t2i], v.f[sce],
                              v.f[loss_cbcl], static_cast<float>(margin), static_cast<int>(select), sce_weight,
                              static_cast<int>(reduction), static_cast<float>(tau), static_cast<float>(lambda_hard),
                              static_cast<float>(lambda_cbcl), ws.data_ptr<float>(), loss.data_ptr<float>());
    // the buffers, not views: a statistic changed in place before backward bumps its buffer's version
    ctx->save_for_backward({img, txt, S, f, i, ws});
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["bias"] = bias;
    ctx->saved_data["scale"] = scale;  // the upstream's per-sample scale (glue.upstream_scale)
    ctx->saved_data["lambda_cbcl"] = lambda_cbcl;
    ctx->saved_data["threads"] = threads;
    return {loss};
  }

  // cpu_eager._EagerCall.backward: the glue's upstream vectors, then CPUKernels.backward at one panel
  // (dS into a fresh B x B matrix, then dS·T and dSᵀ·I).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(kArgs);
    if (!grads[0].defined()) return out;
    // SPEC's precision in a backward run inside an autocast region (cpu_eager: _amp.off)
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &img = saved[0], &txt = saved[1], &S = saved[2], &ws = saved[5];
    const Vectors v(saved[3], saved[4], ctx->saved_data["rows"].toIntVector());
    const int64_t B = img.size(0);
    const double tau = ctx->saved_data["tau"].toDouble();
    const at::Tensor g = grads[0].to(at::kFloat);
    at::Tensor up = at::empty({3, B}, S.options());  // g_cbcl, k_r, k_c
    float* u = up.data_ptr<float>();
    srem_cpu_glue_upstream_f32(B, g.data_ptr<float>(), g.dim() ? g.stride(0) : 0,
                               static_cast<float>(ctx->saved_data["scale"].toDouble()),
                               static_cast<float>(ctx->saved_data["lambda_cbcl"].toDouble()), ws.data_ptr<float>(), u);
    at::Tensor dS = at::empty({B, B}, S.options());
    srem_cpu_backward_panel(S.data_ptr<float>(), S.stride(0), dS.data_ptr<float>(), B, B, B, 0,
                            static_cast<float>(1.0 / tau), static_cast<float>(ctx->saved_data["eps"].toDouble()),
                            ctx->saved_data["bias"].toBool(), v.f[m_r], v.f[logl_r], v.f[m_c], v.f[logl_c], v.i[at_r],
                            v.i[at_c], v.f[A_r], v.f[A_c], v.f[A_r_rest], v.f[A_c_rest], u, u + B, u + 2 * B,
                            v.i[hard_i2t_index], v.i[hard_t2i_index],
                            static_cast<int>(ctx->saved_data["threads"].toInt()), nullptr);
    out[0] = at::mm(dS, as_f32(txt)).to(img.scalar_type());  // CPUKernels.backward's casts
    out[1] = at::mm(dS.t(), as_f32(img)).to(txt.scalar_type());
    return out;
  }
};

at::Tensor eager_call(const at::Tensor& img, const at::Tensor& txt, const at::Tensor& S, const at::Tensor& f,
                      const at::Tensor& i, const at::Tensor& ws, std::vector<int64_t> rows, double tau, double margin,
                      double eps, bool bias, int64_t select, bool sce_weight, int64_t reduction, double scale,
                      double lambda_hard, double lambda_cbcl, int64_t threads) {
  return EagerCall::apply(img, txt, S, f, i, ws, std::move(rows), tau, margin, eps, bias, select, sce_weight,
                          reduction, scale, lambda_hard, lambda_cbcl, threads)[0];
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The cpu backend's short eager call as one C++ autograd node (srem_kernels/backends/cpu_eager.py)";
  m.attr("FLOAT_KEYS") = py::cast(std::vector<std::string>(kFloatKeys, kFloatKeys + kFloats));
  m.attr("INDEX_KEYS") = py::cast(std::vector<std::string>(kIndexKeys, kIndexKeys + kIndices));
  // the GIL released as the other modules' kernels release it (a data loader's threads run on)
  m.def("eager_call", &eager_call, py::call_guard<py::gil_scoped_release>(),
        "loss of one call (cpu_eager._node_run); img, txt, S, f, i, ws, rows, tau, margin, eps, bias, select, "
        "sce_weight, reduction, scale (glue.upstream_scale), lambda_hard, lambda_cbcl, threads");
}
