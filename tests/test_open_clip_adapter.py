"""srem_kernels.integrations.open_clip.SREMClipLoss without open_clip (tests/test_open_clip_train.py
runs open_clip's own training loop where open_clip is installed): ClipLoss's call contract, the
exact SREM loss with tau = 1 / logit_scale, the dict's terms, logit_bias, the warm-up clock,
mixed precision (autocast, GradScaler), open_clip's accum_freq call, two gloo ranks, and that
importing it does not import open_clip."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
import torch

import srem_kernels
from srem_kernels.integrations.open_clip import KEYS, SREMClipLoss
from tests.distributed_worker import run_ranks, values
from tests.helpers import TOLERANCES, assert_rel_close, embeddings


def _features(B=24, D=12, seed=0, dtype=torch.float32):
    img, txt = embeddings(B, D, seed=seed, noise=0.7, dtype=dtype)
    return img.requires_grad_(), txt.requires_grad_()


def _scale(value=1 / 0.07):
    """open_clip's model_out["logit_scale"]: exp() of an fp32 parameter."""
    p = torch.nn.Parameter(torch.tensor(value).log())
    return p, p.exp()


def test_defaults_are_the_srem_loss_with_tau_one_over_logit_scale():
    img, txt = _features()
    p, scale = _scale()
    loss = SREMClipLoss()(img, txt, scale)
    loss.backward()
    a, b = img.detach().clone().requires_grad_(), txt.detach().clone().requires_grad_()
    q, scale2 = _scale()
    ref = srem_kernels.loss(a, b, tau=1 / scale2)
    ref.loss.backward()
    assert torch.equal(loss.detach(), ref.loss.detach())
    assert torch.equal(img.grad, a.grad) and torch.equal(txt.grad, b.grad)
    assert torch.equal(p.grad, q.grad) and p.grad.item() != 0


def test_output_dict_terms_sum_to_the_loss_and_its_gradient():
    img, txt = _features(seed=1)
    p, scale = _scale()
    crit = SREMClipLoss()
    losses = crit(img, txt, scale, output_dict=True)
    assert tuple(losses) == KEYS
    total = sum(losses.values())  # what open_clip trains on
    plain = SREMClipLoss()(img.detach(), txt.detach(), scale.detach())
    assert_rel_close(total.detach(), plain, 1e-6, "sum of the terms")
    assert losses["hinge_loss"].item() > 0 and losses["complementary_loss"].item() > 0
    total.backward()
    a, b = img.detach().clone().requires_grad_(), txt.detach().clone().requires_grad_()
    q, s2 = _scale()
    SREMClipLoss()(a, b, s2).backward()
    assert torch.equal(img.grad, a.grad) and torch.equal(p.grad, q.grad)
    st = crit.last_stats.as_dict()
    assert set(st) >= {"clean_share", "mean_weight", "gmm_mean_low", "gmm_mean_high", "tau", *KEYS}
    assert 0 < st["clean_share"] <= 1 and st["gmm_mean_low"] <= st["gmm_mean_high"]
    assert_rel_close(st["tau"], 1 / scale.detach(), 1e-7, "tau")


def test_logit_bias_cancels_with_a_zero_gradient():
    img, txt = _features(seed=2)
    _, scale = _scale()
    bias = torch.nn.Parameter(torch.tensor(-10.0))
    with_bias = SREMClipLoss()(img, txt, scale, logit_bias=bias)
    without = SREMClipLoss()(img.detach(), txt.detach(), scale.detach())
    assert torch.equal(with_bias.detach(), without)
    with_bias.backward()
    assert bias.grad is not None and bias.grad.item() == 0.0
    d = SREMClipLoss()(img.detach(), txt.detach(), scale.detach(), logit_bias=bias, output_dict=True)
    assert tuple(d) == KEYS


def test_warmup_counts_optimizer_steps():
    """warmup_steps=2 with accum_freq=2: the first four training calls are the complementary
    term alone (lambda_hard=0, no selection); eval-mode and no-grad calls do not advance it."""
    img, txt = _features(seed=3)
    _, scale = _scale()
    crit = SREMClipLoss(warmup_steps=2, accum_freq=2)
    warm = srem_kernels.loss(img, txt, tau=1 / scale, lambda_hard=0.0, select="none").loss
    full = srem_kernels.loss(img, txt, tau=1 / scale).loss
    assert warm.item() != full.item()
    for call in range(6):
        with torch.no_grad():
            crit(img, txt, scale)  # does not count
        got = crit(img, txt, scale)
        assert torch.equal(got, warm if call < 4 else full), call
    assert crit.step == 3
    crit.eval()
    crit(img, txt, scale)
    assert crit.step == 3
    crit.train()
    crit.set_step(1)
    assert crit.warming_up() and torch.equal(crit(img, txt, scale), warm)


def test_autocast_bf16_features_with_an_fp32_logit_scale():
    """open_clip's step: features from a model under CPU autocast (bf16), logit_scale fp32, the
    loss called inside the autocast block. The loss is finite, and its gradients for the features
    and the temperature are those of the fp32 math on the same (bf16-rounded) features within
    SPEC's 16-bit tolerance: autocast does not reach inside the loss (srem_kernels/_amp.py)."""
    torch.manual_seed(0)
    enc = torch.nn.Linear(10, 12)
    x, y = torch.randn(24, 10), torch.randn(24, 10)
    p = torch.nn.Parameter(torch.tensor(1 / 0.07).log())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = torch.nn.functional.normalize(enc(x), dim=1)
        txt = torch.nn.functional.normalize(enc(x + 0.5 * y), dim=1)
        assert img.dtype == txt.dtype == torch.bfloat16
        img.retain_grad()
        txt.retain_grad()
        total = sum(SREMClipLoss()(img, txt, p.exp(), output_dict=True).values())
    total.backward()
    assert torch.isfinite(total)
    a, b = img.detach().double().requires_grad_(), txt.detach().double().requires_grad_()
    q = torch.nn.Parameter(torch.tensor(1 / 0.07, dtype=torch.float64).log())
    ref = srem_kernels.loss(a, b, tau=1 / q.exp(), backend="reference").loss
    ref.backward()
    tol, gtol = TOLERANCES["bf16"]
    assert_rel_close(total.detach(), ref.detach(), tol, "loss")
    assert_rel_close(img.grad, a.grad, gtol, "d image_features")
    assert_rel_close(txt.grad, b.grad, gtol, "d text_features")
    assert_rel_close(p.grad, q.grad, gtol, "d logit_scale")


def test_autocast_does_not_lower_the_loss_precision():
    """fp32 features inside an autocast region: the loss computes in fp32 (SPEC's), bit for bit
    as outside it, instead of running its GEMMs in bf16."""
    img, txt = _features(seed=7)
    _, scale = _scale()
    outside = SREMClipLoss()(img.detach(), txt.detach(), scale.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = SREMClipLoss()(img.detach(), txt.detach(), scale.detach())
        ref = srem_kernels.loss(img.detach(), txt.detach(), tau=1 / scale.detach(), backend="reference").loss
    assert torch.equal(inside, outside)
    plain = srem_kernels.loss(img.detach(), txt.detach(), tau=1 / scale.detach(), backend="reference").loss
    assert torch.equal(ref, plain)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_grad_scaler_gives_the_unscaled_gradients(dtype):
    img32, txt32 = _features(seed=4)
    p = torch.nn.Parameter(torch.tensor(1 / 0.07).log())
    opt = torch.optim.SGD([p], lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    img, txt = img32.detach().to(dtype).requires_grad_(), txt32.detach().to(dtype).requires_grad_()
    scaler.scale(SREMClipLoss()(img, txt, p.exp())).backward()
    scaler.unscale_(opt)
    got = (p.grad.clone(), img.grad.float() / 2.0**12)
    q = torch.nn.Parameter(torch.tensor(1 / 0.07).log())
    a, b = img32.detach().requires_grad_(), txt32.detach().requires_grad_()
    SREMClipLoss()(a, b, q.exp()).backward()
    assert torch.isfinite(got[0]) and torch.isfinite(got[1]).all()
    assert_rel_close(got[0], q.grad, TOLERANCES["bf16"][1], "d logit_scale")
    assert_rel_close(got[1], a.grad, TOLERANCES["bf16"][1], "d image_features")


def test_accum_freq_call_a_live_chunk_among_cached_ones():
    """open_clip's accum_freq > 1: the loss of the concatenation of cached (no-grad) features and
    one live chunk. The live chunk gets the global batch's gradient for its rows."""
    img, txt = _features(B=30, seed=5)
    p, scale = _scale()
    full = SREMClipLoss()(img, txt, scale)
    full.backward()
    chunks = [(0, 10), (10, 20), (20, 30)]
    for live in range(3):
        parts_i, parts_t, leaves = [], [], None
        for k, (lo, hi) in enumerate(chunks):
            i, t = img.detach()[lo:hi], txt.detach()[lo:hi]
            if k == live:
                i, t = i.clone().requires_grad_(), t.clone().requires_grad_()
                leaves = (i, t)
            parts_i.append(i)
            parts_t.append(t)
        q, s2 = _scale()
        loss = SREMClipLoss(accum_freq=3)(torch.cat(parts_i), torch.cat(parts_t), s2)
        assert torch.isfinite(loss)
        loss.backward()
        lo, hi = chunks[live]
        assert_rel_close(leaves[0].grad, img.grad[lo:hi], TOLERANCES["fp32"][1], f"chunk {live}: d img")
        assert_rel_close(leaves[1].grad, txt.grad[lo:hi], TOLERANCES["fp32"][1], f"chunk {live}: d txt")
        assert_rel_close(q.grad, p.grad, TOLERANCES["fp32"][1], f"chunk {live}: d logit_scale")


def test_mixed_feature_dtypes_take_the_wider():
    img, txt = _features(seed=6)
    _, scale = _scale()
    mixed = SREMClipLoss()(img.detach().bfloat16(), txt.detach(), scale.detach())
    both = SREMClipLoss()(img.detach().bfloat16().float(), txt.detach(), scale.detach())
    assert torch.equal(mixed, both)


@pytest.mark.parametrize("kwargs,call,err,phrase", [
    ({"world_size": 2, "rank": 0}, None, RuntimeError, "needs an initialised torch.distributed"),
    ({"warmup_steps": -1}, None, ValueError, "warmup_steps must be an integer"),
    ({"accum_freq": 0}, None, ValueError, "accum_freq must be an integer ≥ 1"),
    ({"rank": 2, "world_size": 2}, None, ValueError, "rank must be < world_size"),
    ({"lambda_hard": -1.0}, None, ValueError, "lambda_hard must be ≥ 0"),
    ({}, {"image_features": torch.ones(4)}, ValueError, "image_features must be a B×D tensor"),
    ({}, {"logit_scale": torch.ones(2)}, ValueError, "logit_scale must hold one value"),
    ({}, {"logit_scale": -1.0}, ValueError, "logit_scale must be a finite number > 0"),
    ({}, {"logit_scale": torch.tensor(0.0)}, ValueError, "tau must be finite and > 0"),
])  # fmt: skip
def test_bad_arguments_are_named(kwargs, call, err, phrase):
    img, txt = _features()
    args = {"image_features": img, "text_features": txt, "logit_scale": torch.tensor(14.0)} | (call or {})
    with pytest.raises(err, match=phrase):
        SREMClipLoss(**kwargs)(**args)


def test_use_horovod_and_cache_labels_are_accepted():
    img, txt = _features()
    a = SREMClipLoss(cache_labels=True, use_horovod=True, local_loss=True)(img, txt, torch.tensor(14.0))
    b = SREMClipLoss()(img, txt, torch.tensor(14.0))
    assert torch.equal(a, b)


def test_importing_the_adapter_does_not_import_open_clip():
    code = ("import sys, srem_kernels, srem_kernels.integrations.open_clip; "
            "print(any(m.split('.')[0] in ('open_clip', 'open_clip_train') for m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- world_size > 1: two gloo ranks


def _ddp_batch():
    g = torch.Generator().manual_seed(11)
    return torch.randn(20, 6, generator=g), torch.randn(20, 5, generator=g), (12, 8)


class _Clip(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.img, self.txt = torch.nn.Linear(6, 8), torch.nn.Linear(5, 8)
        self.logit_scale = torch.nn.Parameter(torch.tensor(1 / 0.07).log())

    def forward(self, a, b):
        n = torch.nn.functional.normalize
        return {"image_features": n(self.img(a), dim=1), "text_features": n(self.txt(b), dim=1),
                "logit_scale": self.logit_scale.exp()}  # fmt: skip


def _rank_clip(rank, world):
    from torch.nn.parallel import DistributedDataParallel as DDP

    x, y, sizes = _ddp_batch()
    lo = sum(sizes[:rank])
    hi = lo + sizes[rank]
    out = {}
    for gwg in (True, False):
        model = DDP(_Clip())
        loss = SREMClipLoss(gather_with_grad=gwg, rank=rank, world_size=world)
        losses = loss(**model(x[lo:hi], y[lo:hi]), output_dict=True)
        sum(losses.values()).backward()
        out[gwg] = ({k: v.detach() for k, v in losses.items()},
                    {k: p.grad for k, p in model.module.named_parameters()})  # fmt: skip
    return out


@functools.cache
def _clip_results():
    return values(run_ranks(_rank_clip, 2, timeout=180))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
@pytest.mark.parametrize("gather_with_grad", [True, False])
def test_two_ranks_under_ddp_as_clip_loss_scales_them(gather_with_grad):
    """The terms are the global batch's on every rank. gather_with_grad=True: DDP's averaged
    gradients are one process's on the whole batch; False: the features' are half of it, the
    temperature's whole (as ClipLoss's)."""
    x, y, _ = _ddp_batch()
    model = _Clip()
    one = SREMClipLoss()(**model(x, y), output_dict=True)
    sum(one.values()).backward()
    for rank, (terms, grads) in enumerate(r[gather_with_grad] for r in _clip_results()):
        for k in KEYS:
            assert_rel_close(terms[k], one[k].detach(), 1e-5, f"rank {rank}: {k}")
        for k, p in model.named_parameters():
            expected = p.grad if gather_with_grad or k == "logit_scale" else p.grad / 2
            assert_rel_close(grads[k], expected, 1e-5, f"rank {rank}: grad of {k}")
