"""Checks shared by the fused-backend tests (test_cpu.py, test_gpu_cuda.py): a backend's `run`
against the fp64 reference on the same rounded inputs, every statistic, the loss and both
gradients (or d sim), with SPEC.md's tolerances."""

from __future__ import annotations

import torch

import python_ref as R
from srem_kernels._validate import check_params
from tests.helpers import TOLERANCES, assert_rel_close

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sim_input(img, txt):
    return (img.float() @ txt.float().T).to(img.dtype)  # the backend's input, rounded


def reference_run(img, txt, kw, from_sim):
    """(params, reference result, reference grads, upstream gradient g): the fp64 reference on
    the CPU from the same rounded values as the backend's inputs (img, txt, or their sim)."""
    B = img.shape[0]
    kw = {k: (v.to(img.device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    params = check_params(B, img.device, **kw)
    ref_kw = {k: (v.double().cpu() if isinstance(v, torch.Tensor) else v) for k, v in params.as_kwargs().items()}
    if from_sim:
        leaves = (_sim_input(img, txt).detach().double().cpu().requires_grad_(),)
        ref = R.srem(sim=leaves[0], **ref_kw)
    else:
        leaves = (img.detach().double().cpu().requires_grad_(), txt.detach().double().cpu().requires_grad_())
        ref = R.srem(*leaves, **ref_kw)
    g = torch.randn(ref[0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (ref[0] * g).sum().backward()
    return params, ref, [t.grad for t in leaves], g


def backend_run(run, img, txt, params, g, from_sim, sim_layout=None):
    """(backend result, grads) of `run` on fresh leaves, backward with the upstream gradient g;
    `sim_layout` re-lays the sim input out (same values, other strides)."""
    if from_sim:
        sim = _sim_input(img, txt)
        leaves = ((sim_layout(sim) if sim_layout else sim).requires_grad_(),)
        out = run(None, None, leaves[0], params)
    else:
        leaves = (img.clone().requires_grad_(), txt.clone().requires_grad_())
        out = run(*leaves, None, params)
    (out[0] * g.to(device=out[0].device, dtype=out[0].dtype)).sum().backward()
    return out, [t.grad for t in leaves]


def run_both(run, img, txt, kw, from_sim, sim_layout=None):
    """(backend result, reference result, backend grads, reference grads); img, txt in the
    backend's dtype and device, the reference in fp64 on the CPU from the same rounded values."""
    params, ref, ref_grads, g = reference_run(img, txt, kw, from_sim)
    out, grads = backend_run(run, img, txt, params, g, from_sim, sim_layout)
    return out, ref, grads, ref_grads


def compare(out, ref, grads, ref_grads, img, txt, from_sim, tol_key):
    """Every statistic, the loss and the gradients of a backend run against the reference's."""
    tol, gtol = TOLERANCES[tol_key]
    assert_rel_close(out[0], ref[0], tol, "loss")
    assert_rel_close(out[1], ref[1], tol, "per_sample")
    assert set(out[2]) == set(R.STATISTICS)
    S = img.double().cpu() @ txt.double().cpu().T  # for sim inputs the values differ by the rounding of sim only
    for k in R.STATISTICS:
        o, r = out[2][k].cpu(), ref[2][k]
        if k == "clean":
            assert torch.equal(o, r.to(o.dtype)), k
        elif k.endswith("_index"):
            if tol_key == "fp32":
                assert torch.equal(o, r.to(o.dtype)), k
            else:  # 16-bit: near-ties may round either way; the index must attain the maximum
                value = ref[2][k.removesuffix("_index")]
                M = S if k == "hard_i2t_index" else S.T
                assert_rel_close(M.gather(1, o[:, None].long()).squeeze(1), value, tol, k)
        else:
            assert_rel_close(o, r, tol, k)
    for name, gr, rg in zip(("d img", "d txt") if not from_sim else ("d sim",), grads, ref_grads):
        assert gr.dtype == (img.dtype), name
        assert_rel_close(gr, rg, gtol, name)


def check_against_reference(run, img, txt, kw, from_sim, tol_key, sim_layout=None):
    out, ref, grads, ref_grads = run_both(run, img, txt, kw, from_sim, sim_layout)
    compare(out, ref, grads, ref_grads, img, txt, from_sim, tol_key)
    return out


def split(B: int, parts: int) -> list[tuple[int, int]]:
    """Uneven row ranges covering 0..B-1 (as ranks with different local batches hold them)."""
    cuts = sorted({0, B, *(max(1, min(B - 1, (B * k * k) // (parts * parts))) for k in range(1, parts))})
    return list(zip(cuts[:-1], cuts[1:]))


def check_rows_against_dense(kernels, img, txt, bounds, *, bias: bool, tol_key: str, tau=0.05, eps=1e-10):
    """fused.py's row-range methods, called per range as ranks would (each range's pass 1, then
    pass 2 from every range's pass 1 concatenated, then the backward from everything), against the
    fp64 dense contract on the whole batch: every contract vector and both gradients, taken over
    the concatenated ranges (SPEC's relative error over the global vectors)."""
    from srem_kernels.backends.dense import DenseKernels
    from srem_kernels.backends.fused import CONTRACT_KEYS

    tol, gtol = TOLERANCES[tol_key]
    B = img.shape[0]
    dense = DenseKernels()
    x, y = img.double().cpu(), txt.double().cpu()
    ref = dense.forward(x, y, None, tau=tau, eps=eps, bias=bias)

    def cat(parts):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    first = cat([kernels.pass1_rows(img, txt, lo, hi, tau=tau) for lo, hi in bounds])
    got = first | cat([kernels.pass2_rows(img, txt, lo, hi, first, tau=tau, eps=eps, bias=bias) for lo, hi in bounds])
    S = x @ y.T
    for k in CONTRACT_KEYS:
        o, r = got[k].cpu(), ref[k]
        if k.endswith("_index"):
            if tol_key == "fp32":
                assert torch.equal(o, r), k
            else:
                M = S if k == "hard_i2t_index" else S.T
                assert_rel_close(M.gather(1, o[:, None]).squeeze(1), ref[k.removesuffix("_index")], tol, k)
        else:
            assert_rel_close(o, r, tol, k)
    g = torch.Generator().manual_seed(B)
    up = torch.randn(B, generator=g, dtype=torch.float64)
    k_r = torch.rand(B, generator=g, dtype=torch.float64) * (torch.rand(B, generator=g) > 0.4)
    k_c = torch.rand(B, generator=g, dtype=torch.float64) * (torch.rand(B, generator=g) > 0.4)
    d_img, d_txt = dense.backward(x, y, None, ref, tau=tau, eps=eps, bias=bias, g_cbcl=up, k_r=k_r, k_c=k_c)
    dev = img.device
    acc = got["lse_r"].dtype
    grads = [kernels.backward_rows(img, txt, lo, hi, got, tau=tau, eps=eps, bias=bias, g_cbcl=up.to(dev, acc),
                                   k_r=k_r.to(dev, acc), k_c=k_c.to(dev, acc)) for lo, hi in bounds]  # fmt: skip
    for name, i, r in (("d img", 0, d_img), ("d txt", 1, d_txt)):
        o = torch.cat([gr[i] for gr in grads])
        assert o.dtype == img.dtype, name
        assert_rel_close(o, r, gtol, name)
