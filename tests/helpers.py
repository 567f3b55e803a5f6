"""Shared test helpers: inputs, SPEC.md's tolerances, and a verbose closeness check."""

from __future__ import annotations

import torch

# SPEC.md "Exactness": relative error ‖out − ref‖/‖ref‖ against the fp64 reference.
# (dtype, tolerance on loss and statistics, tolerance on gradients)
TOLERANCES = {
    "fp32": (1e-5, 1e-4),  # IEEE fp32 dot products
    "tf32": (1e-2, 1e-2),
    "fp16": (1e-2, 1e-2),
    "bf16": (1e-2, 1e-2),
}


def embeddings(B: int, D: int, *, seed: int, dtype=torch.float64, noise: float = 0.5, normalize=True, device="cpu"):
    """Correlated image/text embeddings, L2-normalised unless asked not to: row i of both shares
    a latent, so the diagonal is a real match and the statistics are away from trivial values."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(B, D, generator=g, dtype=torch.float64)
    img = latent + noise * torch.randn(B, D, generator=g, dtype=torch.float64)
    txt = latent + noise * torch.randn(B, D, generator=g, dtype=torch.float64)
    if normalize:
        img, txt = torch.nn.functional.normalize(img, dim=1), torch.nn.functional.normalize(txt, dim=1)
    return img.to(device=device, dtype=dtype), txt.to(device=device, dtype=dtype)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_rel_close(out: torch.Tensor, ref: torch.Tensor, tol: float, name: str) -> None:
    """‖out − ref‖/‖ref‖ ≤ tol, with a report of where they differ most when not."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    o, r = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(o).all() == torch.isfinite(r).all(), f"{name}: non-finite values differ\n{o}\n{r}"
    err = rel_err(o, r)
    if not err <= tol:
        diff = (o - r).abs().flatten()
        worst = diff.argsort(descending=True)[:5].tolist()
        lines = [f"  [{i}] out={o.flatten()[i].item():.10g} ref={r.flatten()[i].item():.10g}" for i in worst]
        raise AssertionError(f"{name}: relative error {err:.3e} > {tol:.1e}; largest differences:\n" + "\n".join(lines))
