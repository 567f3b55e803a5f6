"""NCR's noise protocol, and the noise-index files the literature publishes.

Two conventions, told apart by length:
- caption-level (NCR, DECL, BiCro, ...: `{data}/noise_index/{name}_precomp_{rate}.npy`): one image
  index per training caption, caption c is paired with image idx[c];
- image-level (RCL: `{data}/{name}_precomp/noise_inx_{rate}.npy`, beside the features): one image
  index per training image, the captions of image k are paired with image idx[k].
With one caption per image (CC152K) the two coincide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from srem_kernels.train.data import DataError, load_npy

RCL_FILE = "{name}_precomp/noise_inx_{rate:g}.npy"
NCR_FILE = "noise_index/{name}_precomp_{rate:g}.npy"
_RATE_IN_NAME = re.compile(r"^(?:noise_inx|\w+_precomp)_(0?\.\d+|0)\.npy$")  # RCL_FILE's and NCR_FILE's names only


def shuffle_captions(cap2img: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """The noisy caption → image assignment: round(noise * N) captions, drawn at random, have their
    images permuted among themselves (Huang et al., NCR, NeurIPS 2021). A drawn caption that lands
    on its own image again stays correct; the ground-truth flags count what actually changed."""
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    out = cap2img.clone()
    n = int(round(noise * len(cap2img)))
    if n < 2:
        return out
    chosen = torch.randperm(len(cap2img), generator=generator)[:n]
    out[chosen] = cap2img[chosen[torch.randperm(n, generator=generator)]]
    return out


@dataclass
class Noise:
    """The training split's caption → image assignment and where it came from."""

    cap2img: torch.Tensor
    source: str  # "RCL's image-level index PATH", "NCR's caption-level index PATH", "drawn ...", "none"
    path: Path | None = None

    def describe(self, truth: torch.Tensor) -> str:
        """One line: the source and how many training captions it mismatches."""
        wrong = int((self.cap2img != truth).sum())
        return f"{self.source}: {wrong} of {len(truth)} training captions mismatched ({wrong / len(truth):.2%})"


def candidates(root: Path, name: str, rate: float) -> list[Path]:
    """The noise files of `rate` where RCL and NCR keep them, those that exist."""
    paths = [root / f.format(name=name, rate=rate) for f in (RCL_FILE, NCR_FILE)]
    return [p for p in paths if p.is_file()]


def shapes(n_img: int, n_cap: int) -> str:
    return (f"expected an integer .npy of {n_img} image indices (RCL, one per training image) or {n_cap} "
            f"(NCR, one per training caption), each in [0, {n_img})")


def read_index(path: Path, n_img: int, per: int, rate: float) -> Noise:
    """The caption → image assignment a noise file holds, in either convention (module docstring)."""
    n_cap = n_img * per
    m = _RATE_IN_NAME.search(path.name)
    if m and abs(float(m.group(1)) - rate) > 1e-9:
        raise DataError(f"{path}: its name says noise {float(m.group(1)):g}, not --noise {rate:g}")
    idx = load_npy(path, expected="; " + shapes(n_img, n_cap))
    if idx.ndim != 1 or len(idx) not in (n_img, n_cap):
        raise DataError(f"{path}: {idx.dtype} of shape {idx.shape}; " + shapes(n_img, n_cap))
    if not np.issubdtype(idx.dtype, np.integer):
        raise DataError(f"{path}: {idx.dtype} values, not integer image indices; " + shapes(n_img, n_cap))
    if len(idx) and (idx.min() < 0 or idx.max() >= n_img):
        raise DataError(f"{path}: image index {idx.min() if idx.min() < 0 else idx.max()} out of range; "
                        + shapes(n_img, n_cap))
    idx = torch.from_numpy(idx.astype(np.int64))
    if per == 1:  # one caption per image: both conventions read the same
        return Noise(idx, f"noise index {path} (one image index per pair)", path)
    if len(idx) == n_cap:
        return Noise(idx, f"NCR's caption-level noise index {path}", path)
    return Noise(idx.repeat_interleave(per), f"RCL's image-level noise index {path} ({n_img} images, {per} captions each)", path)


def assignment(root: Path, name: str, rate: float, seed: int, noise_file: str | None, truth: torch.Tensor,
               n_img: int) -> Noise:
    """The training assignment at noise `rate`: the file given (--noise-file), else the one found
    where RCL or NCR keep it (two that disagree are an error), else drawn as NCR does from `seed`."""
    per = len(truth) // n_img
    if noise_file:
        path = Path(noise_file)
        if rate == 0:
            raise DataError(f"--noise-file {path} with --noise 0: give the noise rate the file was made for")
        if not path.is_file():
            raise DataError(f"missing noise file {path}: " + shapes(n_img, len(truth)))
        return read_index(path, n_img, per, rate)
    if rate == 0:
        return Noise(truth.clone(), "no noise (--noise 0)")
    found = [read_index(p, n_img, per, rate) for p in candidates(root, name, rate)]
    if len(found) == 2:
        if not torch.equal(found[0].cap2img, found[1].cap2img):
            raise DataError(f"{found[0].path} and {found[1].path}: two noise files for --noise {rate:g} that pair the "
                            "captions differently; choose one with --noise-file")
        found[0].source += f" (the same pairs as {found[1].path})"
    if found:
        return found[0]
    looked = " and ".join(str(root / f.format(name=name, rate=rate)) for f in (RCL_FILE, NCR_FILE))
    drawn = shuffle_captions(truth, rate, torch.Generator().manual_seed(seed))
    return Noise(drawn, f"no noise file ({looked} absent): drawn as NCR does from seed {seed}")


def save_index(path: Path, cap2img: torch.Tensor, write: bool = True) -> str:
    """Write the caption-level index (NCR's convention, int64) to `path` for other runs and codebases.
    A file already there is left alone if it holds the same index and refused otherwise (runs are
    never replaced silently); `write=False` checks without writing (ranks other than 0)."""
    idx = cap2img.numpy().astype(np.int64)
    if path.is_dir():
        raise DataError(f"--save-noise {path} is a folder; give the .npy file to write")
    if path.exists():
        try:
            same = np.array_equal(load_npy(path), idx)
        except DataError:
            same = False
        if not same:
            raise DataError(f"--save-noise {path}: the file exists and holds another index; remove it or choose another path")
        return f"noise index already saved in {path}"
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, idx)
        tmp.replace(path)
    return f"noise index saved to {path} ({len(idx)} image indices, one per training caption)"
