"""open_clip's own training loop (`open_clip_train.train.train_one_epoch`) trains its own CLIP model
with SREMClipLoss: fp32 and bf16 autocast, accum_freq 1 and 2. Every loss open_clip sums is
finite, logit_scale moves, and its gradient after the last step is the exact one: the fp64
reference's d(loss)/d(logit_scale parameter) on the features open_clip handed over (summed over
the accum_freq calls of the step), within SPEC's tolerance for the features' dtype.

Optional: skipped where open_clip is not importable. open_clip imports torchvision, whose only
wheel on this project's machines needs torch's CUDA build; CI and `make test` never install it
(docs/open_clip.md says how to run this test).
"""

from __future__ import annotations

import types

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
train = pytest.importorskip("open_clip_train.train")
data_mod = pytest.importorskip("open_clip_train.data")

import srem_kernels  # noqa: E402
from srem_kernels.integrations.open_clip import KEYS, SREMClipLoss  # noqa: E402
from tests.helpers import TOLERANCES, assert_rel_close  # noqa: E402

B, STEPS = 16, 3


class _Recording(SREMClipLoss):
    """SREMClipLoss that keeps, per call, its terms and the fp64 reference's gradient of the
    loss with respect to the logit_scale parameter p (scale = exp(p): dL/dp = scale · dL/dscale)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.log = []

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        out = super().forward(image_features, text_features, logit_scale, logit_bias, output_dict)
        s = logit_scale.detach().double().requires_grad_()
        i, t = image_features.detach().double(), text_features.detach().double()
        srem_kernels.loss(i, t, tau=1 / s, backend="reference").loss.backward()
        self.log.append(({k: v.detach().clone() for k, v in out.items()}, (s.grad * s.detach()).item(),
                         image_features.dtype))  # fmt: skip
        return out


def _model():
    torch.manual_seed(0)
    return open_clip.CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32, mlp_ratio=2.0),
        text_cfg=dict(context_length=12, vocab_size=100, width=64, heads=2, layers=2),
        output_dict=True,  # as open_clip's factory builds models for training
    )


def _data(accum_freq):
    g = torch.Generator().manual_seed(1)
    n = B * accum_freq * STEPS
    images = torch.randn(n, 3, 32, 32, generator=g)
    texts = torch.randint(1, 100, (n, 12), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, texts), batch_size=B)
    loader.num_batches, loader.num_samples = len(loader), n
    return {"train": data_mod.DataInfo(loader)}


def _args(precision, accum_freq):
    return types.SimpleNamespace(
        device="cpu", precision=precision, accum_freq=accum_freq, distill=False, skip_scheduler=True,
        grad_clip_norm=None, horovod=False, log_every_n_steps=1, batch_size=B, world_size=1, rank=0, local_rank=0,
        wandb=False,
    )  # fmt: skip


@pytest.mark.parametrize("accum_freq", [1, 2])
@pytest.mark.parametrize("precision", ["fp32", "amp_bf16"])
def test_open_clip_train_one_epoch_with_srem(precision, accum_freq):
    model = _model()
    loss = _Recording(accum_freq=accum_freq)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.logit_scale.detach().clone()
    train.train_one_epoch(model, _data(accum_freq), loss, 0, optimizer, None, None, None, _args(precision, accum_freq))
    assert len(loss.log) == STEPS * accum_freq and loss.step == STEPS
    for terms, _, _ in loss.log:
        assert tuple(terms) == KEYS  # open_clip adds its "loss" to the dict it got, not to ours
        assert all(torch.isfinite(v) for v in terms.values())
    dtype = loss.log[-1][2]
    assert dtype == (torch.bfloat16 if precision == "amp_bf16" else torch.float32)
    assert not torch.equal(model.logit_scale.detach(), before)  # the temperature moved
    expected = sum(g for _, g, _ in loss.log[-accum_freq:])  # the last step's accum_freq calls
    tol = TOLERANCES["fp32" if dtype == torch.float32 else "bf16"][1]
    assert_rel_close(model.logit_scale.grad, torch.tensor(expected), tol, "d logit_scale")
