"""How far fp32 arithmetic can be from the fp64 reference, statistic by statistic.

    python -m python_ref.numerics [--batch B] [--dim D] [--tau T]

Two fp32 computations on the same fp32 inputs, each against the fp64 reference:
- "literal fp32": python_ref itself in fp32, the SPEC formulas as written;
- "fp32 dots only": S = img·txtᵀ rounded to fp32, everything after it in fp64 — what a kernel
  with IEEE fp32 dot products and cancellation-free arithmetic after them can reach.
"""

from __future__ import annotations

import argparse

import torch

from python_ref.srem import STATISTICS, srem


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def compare(img: torch.Tensor, txt: torch.Tensor, tau: float) -> dict[str, tuple[float, float]]:
    """{quantity: (literal fp32 error, fp32-dots-only error)} for fp32 img, txt."""
    ref = srem(img.double(), txt.double(), tau=tau)
    literal = srem(img, txt, tau=tau)
    dots = srem(sim=(img @ txt.T).double(), tau=tau)
    out = {"loss": (rel_err(literal[0], ref[0]), rel_err(dots[0], ref[0]))}
    for k in STATISTICS:
        if not k.endswith("_index"):
            out[k] = (rel_err(literal[2][k], ref[2][k]), rel_err(dots[2][k], ref[2][k]))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(args.seed)
    latent = torch.randn(args.batch, args.dim, generator=g)
    img = torch.nn.functional.normalize(latent + 0.5 * torch.randn(latent.shape, generator=g), dim=1)
    txt = torch.nn.functional.normalize(latent + 0.5 * torch.randn(latent.shape, generator=g), dim=1)
    print(f"B={args.batch} D={args.dim} tau={args.tau}: relative error against the fp64 reference")
    print(f"{'quantity':<14}{'literal fp32':>14}{'fp32 dots only':>16}")
    for k, (a, b) in compare(img, txt, args.tau).items():
        print(f"{k:<14}{a:>14.1e}{b:>16.1e}")


if __name__ == "__main__":
    main()
