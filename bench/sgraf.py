"""SGRAF's cost on this machine, with srem-train's own models (srem_kernels/train/sgraf.py):

- `step`: one training step (forward, SREM's loss after warm-up, backward, clipping, Adam) at
  B=128 of `vse` (the dual encoder) and `sgr`/`saf`, at the synthetic SGR grid's dimensions
  (`--dims grid`) or the literature's (`--dims paper`: 36 regions of 2048, a vocabulary of 8,481,
  embed 1024, word 300, sim_dim 256, 3 steps; captions of --words tokens);
- `eval`: the network's similarity at the literature's dimensions on a slice of the 1K test's
  pairs (--images × --captions), timed and extrapolated to 1000 × 5000, with the matmul FLOPs per
  pair counted (torch.utils.flop_counter) for an estimate on other hardware.

    python -m bench.sgraf step [--dims grid|paper] [--models vse,sgr,saf] [--batch 128] [--steps 3]
    python -m bench.sgraf eval [--images 10] [--captions 1000] [--words 15]

Appends to bench/results/<device>.sgraf.csv.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.measure import peak_memory_mb, summarise, time_once
from bench.run import RESULTS, command, csv_log, environment
from srem_kernels.train import trainer
from srem_kernels.train.experiment import SGR_SETTINGS
from srem_kernels.train.methods import METHODS, batch_loss, loss_inputs

COLUMNS = ("run", "date", "commit", "command", "device", "threads", "torch", "triton", "what", "model", "dims",
           "shape", "median_ms", "p20_ms", "p80_ms", "peak_mb", "gflop", "status")  # fmt: skip
PAPER = dict(embed_dim=1024, word_dim=300, sim_dim=256, sgr_steps=3, regions=36, img_dim=2048, vocab=8481)
GRID = dict(SGR_SETTINGS, regions=4, img_dim=64, vocab=0, txt_dim=48)  # the synthetic benchmark's shapes
VSE_EMBED = {"grid": 256, "paper": 1024}  # the dual encoder as the synthetic table and the literature train it


def _dataset(dims: dict):
    """The shapes sgraf.build / model.build read: region features; tokens or feature captions."""
    captions = torch.empty(1, dims["txt_dim"]) if not dims["vocab"] else None
    train = SimpleNamespace(images=torch.empty(1, dims["regions"], dims["img_dim"]), captions=captions)
    return SimpleNamespace(name="bench", vocab_size=dims["vocab"], train=train)


def build(model: str, dims_name: str, chunk: int = 4096):
    dims = PAPER if dims_name == "paper" else GRID
    cfg = trainer.TrainConfig(dataset="f30k" if dims_name == "paper" else "synthetic", model=model, sim_chunk=chunk,
                              embed_dim=VSE_EMBED[dims_name] if model == "vse" else dims["embed_dim"],
                              **({} if model == "vse" else {k: dims[k] for k in ("sim_dim", "word_dim")}),
                              **({"sgr_steps": dims["sgr_steps"]} if model == "sgr" else {}))
    return trainer.build_model(_dataset(dims), cfg.resolved()), dims


def batch(dims: dict, B: int, words: int, g: torch.Generator):
    images = torch.randn(B, dims["regions"], dims["img_dim"], generator=g)
    if dims["vocab"]:
        return images, (torch.randint(4, dims["vocab"], (B, words), generator=g), torch.full((B,), words))
    return images, torch.randn(B, dims["txt_dim"], generator=g)


def bench_step(args, env, writer) -> None:
    g = torch.Generator().manual_seed(0)
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, dims = build(name, args.dims)
        opt = torch.optim.Adam(model.parameters(), lr=2e-4)
        images, captions = batch(dims, args.batch, args.words, g)
        clean = torch.ones(args.batch)

        def step():
            loss, _ = batch_loss(METHODS["srem"], **loss_inputs(model(images, captions)), tau=0.05, margin=0.2, clean=clean,
                                 warming_up=False, backend="auto")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            opt.step()

        step()  # warm-up
        t = summarise([time_once(step, torch.device("cpu")) for _ in range(args.steps)])
        peak = peak_memory_mb(step, torch.device("cpu"))
        shape = f"B={args.batch}" + (f", {args.words} tokens" if dims["vocab"] else "")
        writer.writerow(dict(env, what="train step", model=name, dims=args.dims, shape=shape, median_ms=f"{t.median_ms:.4g}",
                             p20_ms=f"{t.p20_ms:.4g}", p80_ms=f"{t.p80_ms:.4g}", peak_mb=f"{peak:.0f}", gflop="", status="ok"))
        print(f"  train step {name:<4} ({args.dims} dims, {shape}): {t.median_ms:.4g} ms (p20 {t.p20_ms:.4g}, p80 "
              f"{t.p80_ms:.4g}), peak {peak:.0f} MB above the inputs", flush=True)


def _flops(model, regions, words, lengths) -> float:
    with FlopCounterMode(display=False) as counter:
        model.similarity(regions, words, lengths)
    return counter.get_total_flops()


@torch.no_grad()
def bench_eval(args, env, writer) -> None:
    """The similarity of --images × --captions pairs, timed; its matmul FLOPs F(n_img, n_cap) =
    a·n_img·n_cap + b·n_img + c·n_cap + d (pairs, then the images' and the captions' own
    self-attention), solved from four counted slices, give the 1K test's FLOPs; its time is the
    slice's scaled by the FLOP ratio."""
    g = torch.Generator().manual_seed(0)
    model, dims = build(args.model, "paper", args.chunk)
    model.eval()
    images, _ = batch(dims, args.images, args.words, g)
    _, captions = batch(dims, args.captions, args.words, g)
    regions, (words, lengths) = model.encode_images(images), model.encode_captions(captions)
    f = {(i, c): _flops(model, regions[:i], words[:c], lengths[:c]) for i in (2, 4) for c in (50, 100)}
    a = ((f[4, 100] - f[2, 100]) - (f[4, 50] - f[2, 50])) / (2 * 50)
    b, c = (f[4, 50] - f[2, 50]) / 2 - 50 * a, (f[2, 100] - f[2, 50]) / 50 - 2 * a
    d = f[2, 50] - 100 * a - 2 * b - 50 * c

    def flops(n_img, n_cap):
        return a * n_img * n_cap + b * n_img + c * n_cap + d

    def similarity():
        return model.similarity(regions, words, lengths)

    similarity()  # warm-up
    t = summarise([time_once(similarity, torch.device("cpu")) for _ in range(args.repeats)])
    total = flops(1000, 5000)
    shape = f"{args.images}x{args.captions} pairs, {args.words} tokens"
    writer.writerow(dict(env, what="similarity (eval)", model=args.model, dims="paper", shape=shape,
                         median_ms=f"{t.median_ms:.4g}", p20_ms=f"{t.p20_ms:.4g}", p80_ms=f"{t.p80_ms:.4g}", peak_mb="",
                         gflop=f"{flops(args.images, args.captions) / 1e9:.4g}", status="ok"))
    secs = t.median_ms / 1e3 * total / flops(args.images, args.captions)
    print(f"  {args.model} similarity, {shape}: {t.median_ms:.4g} ms (p20 {t.p20_ms:.4g}, p80 {t.p80_ms:.4g}); matmul "
          f"FLOPs {a / 1e6:.2f} M a pair, {b / 1e6:.2f} M an image, {c / 1e6:.2f} M a caption (counted)")
    print(f"  1K test (1000 x 5000 pairs): {total / 1e12:.0f} TFLOP; {secs:.0f} s = {secs / 3600:.2f} h on this CPU "
          f"({torch.get_num_threads()} thread(s)), the slice's time scaled by the FLOPs")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    step = sub.add_parser("step", help="one training step at B=128")
    step.add_argument("--dims", choices=("grid", "paper"), default="grid")
    step.add_argument("--models", default="vse,sgr,saf")
    step.add_argument("--batch", type=int, default=128)
    step.add_argument("--words", type=int, default=15, help="tokens per caption (paper dims)")
    step.add_argument("--steps", type=int, default=3)
    ev = sub.add_parser("eval", help="the network's similarity at the literature's dimensions, extrapolated to 1K")
    ev.add_argument("--model", default="sgr", choices=("sgr", "saf"))
    ev.add_argument("--images", type=int, default=10)
    ev.add_argument("--captions", type=int, default=1000)
    ev.add_argument("--words", type=int, default=15)
    ev.add_argument("--chunk", type=int, default=4096)
    ev.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    env = environment(torch.device("cpu"))
    env["command"] = command("python -m bench.sgraf", argv)
    with csv_log(RESULTS, env, ".sgraf.csv", COLUMNS) as (log, writer):
        (bench_step if args.what == "step" else bench_eval)(args, env, writer)
    print(f"appended to {log}")


if __name__ == "__main__":
    main()
