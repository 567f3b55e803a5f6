"""The `cpu` backend's common eager call in few Python steps: the same C++ kernels and glue as
fused.run drives, called in one autograd Function with the buffers' addresses.

At B=128 a call took 1.4-1.7 ms on this project's 2-core CPU, of which the same kernels and C++
glue called from one bare autograd Function took 0.9-1.0 ms (one process, interleaved): the layers
around them cost more than the three GEMMs. This path leaves out fused.run's general ones (the
glue's handling of every option, named vectors per step, autograd outputs per statistic): ~8 %
of the call at B=128 (bench/results/cpu-speed.section.md, change 13). A call it takes runs the
kernels in the same order on the same buffers, so its results are bitwise those of fused.run
(tests/test_cpu_eager.py holds the two equal).

It takes a call that is eager (not traced by torch.compile), needs the gradient machinery (not
stats_only) and has (img, txt) held whole (the materialised strategy), a float tau and margin, no
given `clean` weights, and SPEC's sensitivity term (or none); every other call goes to fused.run.

Its mean and sum calls at small B (CPUKernels.node_call) run the same steps as one C++ autograd
node (NODE: csrc/cpu/node.cpp, built by setup.py against torch's C++ API, optional): inside a real
call each Python step, tensor view and saved tensor cost 5-40 µs at B=128, where the kernels
have just emptied the caches, and the Function's machinery ~0.1 ms; the node's call took 0.81×
the Function's (B=128, one process, interleaved; bench/results/cpu-speed.section.md, change 16).
"""

from __future__ import annotations

import torch

from srem_kernels import _alloc, _amp
from srem_kernels.backends import glue
from srem_kernels.backends.fused import Statistics, pack_saved, unpack_saved

try:  # the same call as one C++ autograd node (csrc/cpu/node.cpp; optional, built by setup.py)
    from srem_kernels.backends import _srem_cpu_node as NODE
except ImportError:
    NODE = None

# the glue's workspace rows (glue.ROWS), named for the statistics and the backward
_GLUE_WHERE = {k: (0, r) for r, k in enumerate(glue.ROWS)}
_F32 = torch.float32


def takes(kernels, img, sim, params) -> bool:
    """Whether this path runs the call (else fused.run does)."""
    return (
        sim is None and not isinstance(params.tau, torch.Tensor) and not isinstance(params.margin, torch.Tensor)
        and params.clean is None and params.sce_mode in (None, "weight") and not torch.compiler.is_compiling()
        and kernels.strategy_for(img.shape[0], img.shape[1], img.dtype, img.device) == "materialised"
    )  # fmt: skip


def run(kernels, img, txt, params):
    """(loss, per_sample, statistics) as fused.run returns them, for a call that `takes` says:
    through the C++ node where the kernels allow it (their node_call), else _EagerCall."""
    node = None if params.reduction == "none" else kernels.node_call(img.shape[0])
    if node is not None:
        return _node_run(img, txt, params, *node)
    sink: list = []
    loss = _EagerCall.apply(img, txt, kernels, params, sink)
    per_sample, vectors, glued = sink[0]
    return loss, loss.detach() if per_sample is None else per_sample, Statistics(vectors, glued)


def _node_run(img, txt, params, vectors, rows, threads):
    """run() as one C++ autograd node: _EagerCall's steps on the buffers given (vectors: the
    kernels' outputs with S, `rows` each of NODE's vectors' row in them) and the glue's."""
    B = img.shape[0]
    ws = _alloc.empty((len(glue.ROWS), B), dtype=_F32, device="cpu")
    f, i, S = vectors.buffers
    loss = NODE.eager_call(img, txt, S, f, i, ws, rows, float(params.tau), float(params.margin), params.eps, params.bias,
                           glue.SELECT.index(params.select), params.sce_mode == "weight",
                           glue.REDUCTION.index(params.reduction), glue.upstream_scale(params.reduction, B),
                           float(params.lambda_hard), float(params.lambda_cbcl), threads)  # fmt: skip
    glued = _alloc.Rows(_GLUE_WHERE, (ws,))
    return loss, glued["per_sample"], Statistics(vectors, glued)


class _EagerCall(torch.autograd.Function):
    """fused._FusedSREM's work for the calls `takes` accepts: forward the GEMM, pass 1, pass 2
    and the glue; backward the glue's upstream vectors, dS and two GEMMs. (per_sample, the
    kernels' vectors, the glue's rows) go to `sink`: autograd wraps no output but the loss."""

    @staticmethod
    def forward(ctx, img, txt, kernels, params, sink):
        ctx.set_materialize_grads(False)
        tau = float(params.tau)
        # _alloc.Rows with S in it (Rows.of: a forward that returns a dict, as a wrapped one may)
        vectors = _alloc.Rows.of(kernels.forward(img, txt, None, tau=tau, eps=params.eps, bias=params.bias))
        B = img.shape[0]
        ws = _alloc.empty((len(glue.ROWS), B), dtype=_F32, device="cpu")
        loss = _alloc.empty((), dtype=_F32, device="cpu")
        select = glue.SELECT.index(params.select)
        kernels._C.glue_forward(
            B, *vectors.ptrs(glue.INPUTS), 0, 0, float(params.margin), 0, 0, 0, 0, select,
            params.sce_mode == "weight", glue.REDUCTION.index(params.reduction), tau, float(params.lambda_hard),
            float(params.lambda_cbcl), ws.data_ptr(), loss.data_ptr(), False,
        )  # fmt: skip
        glued = _alloc.Rows(_GLUE_WHERE, (ws,))
        ctx.kernels, ctx.params = kernels, params
        ctx.save_for_backward(img, txt, ws, *pack_saved(ctx, vectors))
        if params.reduction == "none":
            sink.append((None, vectors, glued))
            return glued["per_sample"]
        sink.append((glued["per_sample"], vectors, glued))
        return loss

    @staticmethod
    def backward(ctx, g):
        if g is None:
            return None, None, None, None, None
        img, txt, ws, *packed = ctx.saved_tensors
        p = ctx.params
        with _amp.off(g.device):  # a backward inside an autocast region: SPEC's precision still
            # glue.upstream's C routine called directly: through its Python wrapper the B=128 call
            # was ~3 % slower (one process, interleaved against the direct call)
            B, g = img.shape[0], g.to(_F32)
            up = _alloc.empty((3, B), dtype=_F32, device="cpu")  # g_cbcl, k_r, k_c
            hinge_r, hinge_c = _alloc.Rows(_GLUE_WHERE, (ws,)).ptrs(("hinge_r", "hinge_c"))
            ctx.kernels._C.glue_upstream(B, g.data_ptr(), g.stride(0) if g.dim() else 0,
                                         glue.upstream_scale(p.reduction, B), float(p.lambda_cbcl), hinge_r, hinge_c,
                                         up.data_ptr(), False)  # fmt: skip
            d_img, d_txt = ctx.kernels.backward(img, txt, None, unpack_saved(ctx, packed), tau=float(p.tau), eps=p.eps,
                                                bias=p.bias, g_cbcl=up[0], k_r=up[1], k_c=up[2])  # fmt: skip
        return d_img, d_txt, None, None, None
