"""Clean-sample filtration of SPEC.md (D): a two-component 1-D GMM over the batch's energies."""

from __future__ import annotations

import math

import torch

__all__ = ["GMM_ROUNDS", "GMM_VAR_FLOOR", "gmm_posterior", "gmm_fit", "gmm_low_posterior", "gmm_filtration", "clean_weights"]

GMM_ROUNDS = 20
GMM_VAR_FLOOR = 1e-6


def gmm_posterior(
    x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor
) -> torch.Tensor:
    """E-step: responsibilities (B×2) from the Gaussian densities times the weights,
    normalised per sample. Computed in log space so far-away points do not give 0/0."""
    log_density = -0.5 * torch.log(2 * math.pi * variances) - (x[:, None] - means) ** 2 / (2 * variances)
    log_joint = torch.log(weights) + log_density
    return torch.softmax(log_joint, dim=1)


def gmm_fit(energy: torch.Tensor, rounds: int = GMM_ROUNDS):
    """(weights, means, variances) after `rounds` rounds of EM.

    Init: means at the batch's min and max, weights 1/2 each, both variances
    max(population variance, 1e-6); then `rounds` rounds of E-step and M-step.
    A component that ends up with no responsibility at all keeps its previous mean and
    variance (its weight becomes 0), since its M-step would divide 0 by 0.
    """
    x = energy.detach()
    B = x.shape[0]
    means = torch.stack([x.min(), x.max()])
    variances = x.var(unbiased=False).clamp_min(GMM_VAR_FLOOR).expand(2).clone()
    weights = torch.full((2,), 0.5, dtype=x.dtype, device=x.device)
    for _ in range(rounds):
        r = gmm_posterior(x, weights, means, variances)
        n = r.sum(dim=0)
        live = n > 0
        n_safe = torch.where(live, n, torch.ones_like(n))
        weights = n / B
        means = torch.where(live, (r * x[:, None]).sum(dim=0) / n_safe, means)
        spread = (r * (x[:, None] - means) ** 2).sum(dim=0) / n_safe
        variances = torch.where(live, spread.clamp_min(GMM_VAR_FLOOR), variances)
    return weights, means, variances


def gmm_low_posterior(energy: torch.Tensor, rounds: int = GMM_ROUNDS) -> torch.Tensor:
    """The posterior of the lower-mean component under the final parameters (one E-step after the
    last M-step): the number the filtration thresholds at 1/2. Equal means: 1/2 everywhere."""
    weights, means, variances = gmm_fit(energy, rounds)
    r = gmm_posterior(energy.detach(), weights, means, variances)
    low = torch.argmin(means)  # equal means: component 0, and both posteriors are then 1/2
    # gather, not r[:, low]: indexing by a tensor value is data-dependent, torch.compile(fullgraph) refuses it
    return r.gather(1, low.view(1, 1).expand(r.shape[0], 1)).squeeze(1)


def gmm_filtration(energy: torch.Tensor, rounds: int = GMM_ROUNDS) -> torch.Tensor:
    """c_i = 1 where the posterior of the lower-mean component exceeds 0.5, else 0; every c_i = 1
    when the two final means are equal (a batch without spread carries no evidence of noise)."""
    weights, means, variances = gmm_fit(energy, rounds)
    r = gmm_posterior(energy.detach(), weights, means, variances)
    low = torch.argmin(means)
    clean = r.gather(1, low.view(1, 1).expand(r.shape[0], 1)).squeeze(1) > 0.5
    return (clean | (means[0] == means[1])).to(energy.dtype)


def clean_weights(energy: torch.Tensor, clean: torch.Tensor | None, select: str) -> torch.Tensor:
    """The clean weight c actually used: the given `clean`, else by `select` ("gmm" or "none")."""
    if clean is not None:
        return clean.detach().to(energy.dtype)
    if select == "gmm":
        return gmm_filtration(energy)
    if select == "none":
        return torch.ones_like(energy)
    raise ValueError(f"select must be 'gmm' or 'none', got {select!r}")
