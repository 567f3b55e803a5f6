"""How the self-check judges one run: the fp64 reference on the backend's own (rounded) inputs,
and SPEC.md's "Exactness" applied to every output — loss, per-sample losses, every statistic,
the gradients (and dL/dtau for a tensor tau)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

import python_ref as R

# SPEC.md "Exactness": (loss and statistics, gradients), relative ‖out − ref‖/‖ref‖.
# tests/helpers.py holds the same table for the test suite (tests/test_selfcheck.py compares them).
TOLERANCES = {"fp32": (1e-5, 1e-4), "tf32": (1e-2, 1e-2), "fp16": (1e-2, 1e-2), "bf16": (1e-2, 1e-2)}
# SPEC.md: a gradient of the embeddings also passes where ‖out − ref‖ ≤ 1e-7·‖dS_ref‖·‖T‖
# (‖I‖ for d txt)
GRAD_FLOOR = 1e-7


@dataclass(frozen=True)
class Quantity:
    """One output against the reference: a relative error and its tolerance, or (exact outputs:
    clean flags, fp32 hardest-negative indices) the count of entries that differ, tolerance 0."""

    name: str
    err: float
    tol: float
    exact: bool = False
    note: str = ""  # what is wrong when it is not a number (a missing output, a wrong dtype)

    @property
    def ok(self) -> bool:
        return self.err <= self.tol  # NaN fails

    @property
    def ratio(self) -> float:
        """err / tol: how close to failing (≥ 1 fails)."""
        if self.tol > 0:
            return self.err / self.tol if math.isfinite(self.err) else math.inf
        return 0.0 if self.ok else math.inf

    def __str__(self) -> str:
        if self.note:
            return f"{self.name}: {self.note}"
        if self.exact:
            return f"{self.name}: {int(self.err)} entries differ (must be equal)"
        return f"{self.name}: relative error {self.err:.2e} {'≤' if self.ok else '>'} tolerance {self.tol:.0e}"


@dataclass
class Outputs:
    """What a run returned: the loss (reduced as asked), L_i, SPEC's statistics, the gradients by
    name ("d img", "d txt", "d sim", "d tau")."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    stats: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor | None] = field(default_factory=dict)


def _host(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().cpu()


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖/‖ref‖ in fp64 (‖out − ref‖ where ref is 0); inf for another shape or any
    non-finite value (the problems' references are finite)."""
    o, r = _host(out), _host(ref)
    if o.shape != r.shape or not bool(torch.isfinite(o).all()) or not bool(torch.isfinite(r).all()):
        return math.inf
    diff, norm = (o - r).norm().item(), r.norm().item()
    return diff / norm if norm > 0 else diff


def _differ(out: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = out.detach().cpu(), ref.detach().cpu()
    if o.shape != r.shape:
        return math.inf
    return float((o.to(r.dtype) != r).sum())


def hardest_index(name: str, idx: torch.Tensor, ref: dict, S: torch.Tensor, tol_key: str) -> Quantity:
    """A hardest-negative index ("hard_i2t_index" or "hard_t2i_index") against the reference's
    (in `ref`, beside its value): equal in fp32; else rounding may pick another near-maximal
    entry, whose value in the reference's S must then be the maximum's."""
    if tol_key == "fp32":
        return Quantity(name, _differ(idx, ref[name]), 0.0, exact=True)
    tol = TOLERANCES[tol_key][0]
    M = S if name == "hard_i2t_index" else S.T
    i = idx.detach().cpu().long()
    if i.shape != ref[name].shape or bool(((i < 0) | (i >= M.shape[1])).any()):
        return Quantity(name, math.inf, tol, note=f"indices outside [0, {M.shape[1]}) or of shape {tuple(i.shape)}")
    return Quantity(name, rel_error(M.gather(1, i[:, None]).squeeze(1), ref[name.removesuffix("_index")]), tol)


def reference(img64, txt64, sim64, params: dict, g: torch.Tensor, *, tensor_tau: bool = False):
    """(Outputs, S, dS): python_ref in fp64 on the CPU from S = sim64 or img64·txt64ᵀ as a leaf,
    with `params` (SPEC's, tensors as fp64 CPU tensors) and upstream gradient g of the loss; the
    gradients of the embeddings are dS·T and dSᵀ·I (the dot's own backward)."""
    S = (sim64 if sim64 is not None else img64 @ txt64.T).detach().clone().requires_grad_()
    kw = dict(params)
    if tensor_tau:
        kw["tau"] = torch.tensor(float(kw["tau"]), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        loss, per_sample, stats = R.srem(sim=S, **kw)
        (loss * g).sum().backward()
    dS = S.grad
    grads = {"d sim": dS} if sim64 is not None else {"d img": dS @ txt64, "d txt": dS.T @ img64}
    if tensor_tau:
        grads["d tau"] = kw["tau"].grad
    return Outputs(loss.detach(), per_sample.detach(), stats, grads), S.detach(), dS


def judge(out: Outputs, ref: Outputs, *, tol_key: str, S: torch.Tensor, dS: torch.Tensor, inputs: dict,
          dtype: torch.dtype) -> list[Quantity]:  # fmt: skip
    """Every output of `out` against `ref` with SPEC's tolerances for `tol_key`. S: the
    reference's similarity (the hardest-negative indices of 16-bit and TF32 runs must attain its
    maximum); dS and `inputs` (fp64 "img", "txt"): the gradient floor; dtype: the inputs' dtype,
    which the embeddings' (or sim's) gradients must have."""
    tol, gtol = TOLERANCES[tol_key]
    q = [Quantity("loss", rel_error(out.loss, ref.loss), tol),
         Quantity("per_sample", rel_error(out.per_sample, ref.per_sample), tol)]  # fmt: skip
    missing = [k for k in R.STATISTICS if k not in out.stats]
    if missing:
        q.append(Quantity("statistics", math.inf, 0.0, note=f"missing {', '.join(missing)}"))
    for k in R.STATISTICS:
        if k not in out.stats:
            continue
        if k == "clean":
            q.append(Quantity(k, _differ(out.stats[k], ref.stats[k]), 0.0, exact=True))
        elif k.endswith("_index"):
            q.append(hardest_index(k, out.stats[k], ref.stats, S, tol_key))
        else:
            q.append(Quantity(k, rel_error(out.stats[k], ref.stats[k]), tol))
    floors = {"d img": "txt", "d txt": "img"}  # the factor of the product each gradient comes from
    for name, r in ref.grads.items():
        o = out.grads.get(name)
        if o is None:
            q.append(Quantity(name, math.inf, gtol, note="no gradient"))
            continue
        if name != "d tau" and o.dtype != dtype:
            q.append(Quantity(name, math.inf, gtol, note=f"dtype {o.dtype}, the inputs' is {dtype}"))
            continue
        eff = gtol
        if name in floors:  # SPEC's floor, as a relative tolerance on this gradient
            norm = r.norm().item()
            floor = GRAD_FLOOR * dS.norm().item() * inputs[floors[name]].norm().item()
            eff = max(gtol, floor / norm) if norm > 0 else max(gtol, floor)
        q.append(Quantity(name, rel_error(o, r), eff))
    return q
