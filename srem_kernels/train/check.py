"""srem-train --check-data: read a dataset as a run would (features memory-mapped), print what was
found, train nothing. A problem is the DataError the run would stop with."""

from __future__ import annotations

from pathlib import Path

from srem_kernels.train import data as data_mod
from srem_kernels.train.noise import save_index


def _split_line(role: str, split: data_mod.Split) -> str:
    n_img, n_cap = len(split.images), len(split.cap2img)
    per = f"{n_cap // n_img} per image" if n_cap % n_img == 0 else f"{n_cap / n_img:.2f} per image"
    text = "token captions" if split.tokenized else f"captions of {tuple(split.captions.shape[1:])} features"
    return (f"  {role + ':':<6} {n_img} images {tuple(split.images.shape[1:])} {str(split.images.dtype).removeprefix('torch.')}, "
            f"{n_cap} {text} ({per})")


def summary(dataset: data_mod.Dataset) -> list[str]:
    """What --check-data prints: the splits' sizes, then the loader's notes (noise, vocabulary, protocol)."""
    lines = [f"{dataset.name}: " + dataset.info["layout"]]  # every loader says what its data is
    lines += [_split_line(role, s) for role, s in (("train", dataset.train), ("val", dataset.val), ("test", dataset.test))]
    for key, label in (("noise", "noise"), ("vocabulary", "vocabulary"), ("val", "validation"), ("test", "test")):
        if key in dataset.info:
            lines.append(f"  {label}: {dataset.info[key]}")
    return lines


def check(cfg) -> None:
    """Load the dataset `cfg` (a TrainConfig) names and print its summary; --save-noise writes the index."""
    dataset = data_mod.load(cfg.dataset, noise=cfg.noise, seed=cfg.seed, data_path=cfg.data_path,
                            noise_file=cfg.noise_file, size=cfg.synthetic_size)
    for line in summary(dataset):
        print(line)
    if cfg.save_noise:
        print("  " + save_index(Path(cfg.save_noise), dataset.train.cap2img))
    print("data OK: nothing trained")
