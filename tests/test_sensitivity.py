"""The `sensitivity` option (srem_kernels/sensitivity.py): each mode's B-vectors by hand, the same
from the reference's literal forms, rows of a distributed batch, and the whole loss of a 3-pair
batch computed by hand in plain Python on every backend that runs here. (Every mode against the
fp64 reference on random inputs: the OPTIONS of test_fused.py, test_cpu.py, test_triton.py and
test_distributed.py.)"""

from __future__ import annotations

import math

import pytest
import torch

import python_ref as R
import srem_kernels
from srem_kernels import sensitivity

SCE = torch.tensor([0.5, 2.0, 1.0, 1.0], dtype=torch.float64)  # a tie at 1.0
E = [math.exp(-0.5), math.exp(-2.0), math.exp(-1.0), math.exp(-1.0)]


def _both(sce, mode, margin):
    """(w, m, f) from the package's module and from the reference's literal forms."""
    w, m, f = sensitivity.terms(sce, mode, margin)
    ref = R.sensitivity_terms(sce, mode is not None, mode or "weight", margin)
    return (w, m, f), ref


def _close(x, values):
    torch.testing.assert_close(x, torch.tensor(values, dtype=torch.float64), rtol=1e-15, atol=0)


def test_weight_is_exp_minus_sce():
    (w, m, f), ref = _both(SCE, "weight", 0.2)
    _close(w, E)
    assert m is None and f is None
    _close(ref["weight"], E)


def test_margin_scales_the_margin_and_leaves_the_weight():
    (w, m, f), ref = _both(SCE, "margin", 0.2)
    _close(w, [1.0] * 4)
    _close(m, [0.2 * e for e in E])
    assert f is None
    _close(ref["margin"], [0.2 * e for e in E])
    vector = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)  # NCR's per-sample margin, scaled
    _close(sensitivity.terms(SCE, "margin", vector).margin, [0.1 * E[0], 0.2 * E[1], 0.3 * E[2], 0.4 * E[3]])


def test_rank_weight_by_hand():
    # ascending ranks 0, 3, and 1.5 for the tie; w = 2 (B - r) / (B + 1) with B = 4
    (w, m, f), ref = _both(SCE, "rank", 0.2)
    _close(w, [1.6, 0.4, 1.0, 1.0])
    assert m is None and f is None
    _close(ref["weight"], [1.6, 0.4, 1.0, 1.0])


def test_rank_weight_reverses_the_order_and_averages_one():
    sce = torch.rand(101, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = sensitivity.rank_weight(sce)
    assert abs(w.mean().item() - 1.0) < 1e-14
    assert torch.equal(torch.argsort(w), torch.argsort(-sce))
    _close(w, R.sensitivity_terms(sce, True, "rank", 0.2)["weight"].tolist())


def test_clean_drops_the_high_sce_cluster():
    sce = torch.tensor([0.1, 0.12, 3.0, 0.11, 3.1], dtype=torch.float64)
    (w, m, f), ref = _both(sce, "clean", 0.2)
    _close(w, [1.0] * 5)
    assert m is None
    _close(f, [1.0, 1.0, 0.0, 1.0, 0.0])
    _close(ref["clean_factor"], [1.0, 1.0, 0.0, 1.0, 0.0])


def test_off_is_ones():
    (w, m, f), ref = _both(SCE, None, 0.2)
    _close(w, [1.0] * 4)
    assert m is None and f is None
    _close(ref["weight"], [1.0] * 4)


@pytest.mark.parametrize("mode", sensitivity.BATCH_MODES)
def test_batch_modes_of_a_slice_see_the_whole_batch(mode):
    """A rank's rows lo..hi of a distributed batch get the entries of the whole batch's vectors."""
    sce = torch.cat([torch.rand(20, generator=torch.Generator().manual_seed(1)), 3 + torch.rand(10)]).double()
    whole = sensitivity.terms(sce, mode, 0.2)
    for lo, hi in ((0, 7), (7, 25), (25, 30)):
        part = sensitivity.terms(sce[lo:hi], mode, 0.2, batch_sce=sce, lo=lo)
        for a, b in zip(part, whole):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.equal(a, b[lo:hi])


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="sensitivity must be one of"):
        sensitivity.terms(SCE, "softmax", 0.2)


# ---------------------------------------------------------------- the whole loss, by hand

S3 = [[0.70, 0.55, 0.30], [0.50, 0.62, 0.40], [0.35, 0.45, 0.60]]
TAU, MARGIN = 0.1, 0.2


def _by_hand(mode):
    """Per-sample L_i = c_i w_i L_hard_i(m_i) of S3 (lambda_cbcl=0, select='none': c = 1), from
    SPEC.md's formulas in plain Python."""
    B = len(S3)
    Z = [[s / TAU for s in row] for row in S3]
    row_sum = [sum(math.exp(z) for z in Z[i]) for i in range(B)]
    col_sum = [sum(math.exp(Z[i][j]) for i in range(B)) for j in range(B)]
    Pr = [[math.exp(Z[i][j]) / row_sum[i] for j in range(B)] for i in range(B)]
    Pc = [[math.exp(Z[i][j]) / col_sum[j] for j in range(B)] for i in range(B)]
    # sce_i: image i's row Pr_i· and text i's column Pc_·i, each scored under the other
    sce = [-sum(Pr[i][j] * math.log(Pc[j][i]) + Pc[j][i] * math.log(Pr[i][j]) for j in range(B)) / 2 for i in range(B)]
    assert sce[0] < sce[2] < sce[1] and sce[1] - sce[2] > 2 * (sce[2] - sce[0])  # two clusters: {0, 2} and {1}

    def hinge(i, m):
        hard_r = max(S3[i][j] for j in range(B) if j != i)
        hard_c = max(S3[j][i] for j in range(B) if j != i)
        return max(0.0, m - S3[i][i] + hard_r) + max(0.0, m - S3[i][i] + hard_c)

    w, m, c = [1.0] * B, [MARGIN] * B, [1.0] * B
    if mode == "weight":
        w = [math.exp(-s) for s in sce]
    elif mode == "margin":
        m = [MARGIN * math.exp(-s) for s in sce]
    elif mode == "rank":  # ascending ranks 0 (sample 0), 2 (sample 1), 1 (sample 2)
        w = [2 * (B - r) / (B + 1) for r in (0, 2, 1)]
    elif mode == "clean":
        c = [1.0, 0.0, 1.0]  # the high-sce cluster is dropped
    return [c[i] * w[i] * hinge(i, m[i]) for i in range(B)], w, c


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton", "cuda"])  # triton: the interpreter without a GPU
@pytest.mark.parametrize("mode", [*sensitivity.MODES, None])
def test_loss_of_each_mode_by_hand(mode, backend):
    if not srem_kernels.backends()[backend].available:
        pytest.skip(f"{backend} does not run here")
    expected, w, c = _by_hand(mode)
    device = "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) else "cpu"
    sim = torch.tensor(S3, dtype=torch.float32, device=device)
    opts = {"sce_weight": False} if mode is None else {"sensitivity": mode}
    out = srem_kernels.loss_from_similarity(sim, tau=TAU, margin=MARGIN, lambda_cbcl=0.0, select="none",
                                            reduction="none", backend=backend, **opts)  # fmt: skip
    exp = torch.tensor(expected, dtype=torch.float64)
    assert exp.sum() > 0 and out.backend == backend
    torch.testing.assert_close(out.loss.double().cpu(), exp, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.stats.weight.double().cpu(), torch.tensor(w, dtype=torch.float64), rtol=1e-5, atol=0)
    assert torch.equal(out.stats.clean.double().cpu(), torch.tensor(c, dtype=torch.float64))


def test_module_takes_the_option():
    sim = torch.tensor(S3)
    crit = srem_kernels.SREMLoss(tau=TAU, margin=MARGIN, lambda_cbcl=0.0, select="none", sensitivity="rank",
                                 reduction="none")  # fmt: skip
    img = torch.linalg.cholesky(sim @ sim.T + torch.eye(3))  # any embeddings; compare with the functional call
    txt = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    want = srem_kernels.loss(img, txt, tau=TAU, margin=MARGIN, lambda_cbcl=0.0, select="none", sensitivity="rank",
                             reduction="none")  # fmt: skip
    assert torch.equal(crit(img, txt).loss, want.loss)
    assert "sensitivity='rank'" in repr(crit)
