"""SREMClipLoss beside open_clip's ClipLoss: the loss alone (forward+backward from features and
logit_scale, as open_clip calls it) at several batch sizes, and one whole training step of a small
open_clip CLIP model (forward, loss, backward, AdamW step). Interleaved in one run, medians.

    python -m bench.open_clip_step [--batch 256 1024 4096] [--dim 512] [--repeats 20] [--step-batch 256]

Needs open_clip (a venv of its own on this project's machines: docs/open_clip.md); without it the
loss-alone rows race ClipLoss's math written plainly (bench/contenders.clip_loss) and the step rows
are skipped. Appends to bench/results/<device>.open-clip.csv; `python -m bench.report` renders the
latest run ("open_clip").
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from bench.contenders import clip_loss
from bench.measure import interleaved
from bench.run import RESULTS, command, csv_log, environment, inputs
from srem_kernels.integrations.open_clip import SREMClipLoss

COLUMNS = ["run", "date", "commit", "device", "threads", "torch", "triton", "command", "what", "B", "D", "loss",
           "median_ms", "p20_ms", "p80_ms", "ratio_to_clip", "load_before", "load_after"]  # fmt: skip


def _clip_loss():
    """open_clip's ClipLoss, or its math written plainly where open_clip is not installed."""
    try:
        from open_clip.loss import ClipLoss

        return "ClipLoss", ClipLoss()
    except ImportError:
        return "ClipLoss math (plain)", lambda image_features, text_features, logit_scale: clip_loss(
            image_features, text_features, tau=1 / logit_scale)  # fmt: skip


def loss_alone(B: int, D: int, device, repeats: int) -> list[dict]:
    img, txt = inputs(B, D, torch.float32, device)
    scale = torch.nn.Parameter(torch.tensor(1 / 0.07, device=device).log())
    name, clip = _clip_loss()
    fns = {name: lambda: clip(img, txt, scale.exp()).backward(),
           "SREMClipLoss": lambda: SREMClipLoss()(img, txt, scale.exp()).backward()}  # fmt: skip
    return _rows("loss fwd+bwd", B, D, *interleaved(fns, device, repeats), name)


def training_step(B: int, device, repeats: int) -> list[dict]:
    try:
        import open_clip
        from open_clip.loss import ClipLoss
    except ImportError:
        return []
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=256, vision_cfg=dict(image_size=64, patch_size=16, width=256, layers=4,
                                                          head_width=64), text_cfg=dict(context_length=32,
                                                          vocab_size=1000, width=256, heads=4, layers=4),
                          output_dict=True).to(device)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(B, 3, 64, 64, device=device)
    texts = torch.randint(1, 1000, (B, 32), device=device)

    def step(loss):
        def run():
            opt.zero_grad()
            sum(loss(**model(images, texts), output_dict=True).values()).backward()
            opt.step()

        return run

    fns = {"ClipLoss": step(ClipLoss()), "SREMClipLoss": step(SREMClipLoss())}
    return _rows("CLIP step (ViT 4×256, 64 px, text 4×256)", B, 256, *interleaved(fns, device, repeats), "ClipLoss")


def _rows(what, B, D, t: dict, load: dict, base: str) -> list[dict]:
    return [dict(what=what, B=B, D=D, loss=k, median_ms=f"{v.median_ms:.4g}", p20_ms=f"{v.p20_ms:.4g}",
                 p80_ms=f"{v.p80_ms:.4g}", ratio_to_clip=f"{v.median_ms / t[base].median_ms:.3f}", **load)
            for k, v in t.items()]  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.open_clip_step", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--step-batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    env = environment(device)
    env["command"] = command("python -m bench.open_clip_step", argv)
    rows = [r for B in args.batch for r in loss_alone(B, args.dim, device, args.repeats)]
    rows += training_step(args.step_batch, device, max(5, args.repeats // 4))
    with csv_log(args.out, env, ".open-clip.csv", COLUMNS) as (log, w):
        for row in rows:
            w.writerow(dict(env, **row))
            print(f"{row['what']:<42} B={row['B']:<5} {row['loss']:<22} {row['median_ms']:>9} ms "
                  f"(×{row['ratio_to_clip']} ClipLoss; load {row['load_before']} -> {row['load_after']})")  # fmt: skip
    print(f"log: {os.path.relpath(log)}")
    return log


if __name__ == "__main__":
    main()
