"""A short demo: the SREM loss on random paired embeddings, some pairs mismatched, with every
available backend. Run: python -m srem_kernels.demo [--batch B] [--dim D] [--noise F] [--seed S]"""

from __future__ import annotations

import argparse

import torch

import srem_kernels


def noisy_pairs(B: int, D: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L2-normalised image/text embeddings of B pairs; a `noise` fraction of the texts shuffled
    among themselves (NCR's protocol). Returns (img, txt, is_noisy)."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(B, D, generator=g)
    img = latent + 0.8 * torch.randn(B, D, generator=g)
    txt = latent + 0.8 * torch.randn(B, D, generator=g)
    noisy = torch.randperm(B, generator=g)[: int(round(noise * B))]
    txt[noisy] = txt[noisy[torch.randperm(len(noisy), generator=g)]]
    is_noisy = torch.zeros(B, dtype=torch.bool)
    is_noisy[noisy] = True
    return (torch.nn.functional.normalize(img, dim=1), torch.nn.functional.normalize(txt, dim=1), is_noisy)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--noise", type=float, default=0.4, help="fraction of mismatched pairs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    print(f"srem-kernels {srem_kernels.__version__}, torch {torch.__version__}\n\nbackends:")
    status = srem_kernels.backends()
    for s in status.values():
        print(f"  {s}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    img, txt, is_noisy = noisy_pairs(args.batch, args.dim, args.noise, args.seed)
    print(f"\nB={args.batch} D={args.dim} on {device}: {int(is_noisy.sum())} of the pairs mismatched (seed {args.seed})")
    for name, s in status.items():
        if not s.available or device.type not in s.devices:
            continue
        x, y = img.to(device).requires_grad_(), txt.to(device).requires_grad_()
        out = srem_kernels.loss(x, y, backend=name)
        out.loss.backward()
        st = {k: v.cpu() for k, v in out.stats.as_dict().items()}
        clean = st["clean"].bool()
        picked_clean = int((clean & ~is_noisy).sum())
        print(f"\n[{out.backend}] loss = {out.loss.item():.6f}, |grad img| = {x.grad.norm():.4e}, |grad txt| = {y.grad.norm():.4e}")
        print(f"  {'statistic':<15}{'mean':>11}{'clean pairs':>13}{'noisy pairs':>13}")
        for stat, v in st.items():
            if stat.endswith("_index"):
                continue
            v = v.double()
            print(f"  {stat:<15}{v.mean():>11.4f}{v[~is_noisy].mean():>13.4f}{v[is_noisy].mean():>13.4f}")
        print(
            f"  GMM filtration kept {int(clean.sum())} pairs as clean: precision "
            f"{picked_clean / max(int(clean.sum()), 1):.3f}, recall {picked_clean / int((~is_noisy).sum()):.3f}"
        )


if __name__ == "__main__":
    main()
