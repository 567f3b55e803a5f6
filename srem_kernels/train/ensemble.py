"""SGRAF evaluation: the similarities of two finished runs averaged on their test split, beside each
run alone. The literature's "SGRAF" is an SGR and an SAF model trained apart and evaluated so.

    srem-train --eval-ensemble RUN_SGR RUN_SAF [--output DIR] [--device cuda]
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from srem_kernels.train import data as data_mod
from srem_kernels.train import dist as dist_mod
from srem_kernels.train import evaluation, trainer


def load_run(folder: str) -> tuple[trainer.TrainConfig, dict]:
    """A run's configuration and the weights its test recall is of (the best epoch on validation;
    the last one if no epoch finished validation), from its checkpoint.pt."""
    path = Path(folder) / trainer.CHECKPOINT
    if not path.is_file():
        raise ValueError(f"--eval-ensemble: {path} not found: the run folder's checkpoint holds the weights to evaluate")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        config, best, last = ck["config"], ck["best"], ck["model"]
    except Exception as err:  # noqa: BLE001 - unreadable, or not a srem-train checkpoint: the same answer
        raise ValueError(f"--eval-ensemble: {path} is not a readable srem-train checkpoint ({type(err).__name__})") from None
    fields = {f.name for f in dataclasses.fields(trainer.TrainConfig)}
    cfg = trainer.TrainConfig(**{k: v for k, v in config.items() if k in fields})
    return cfg, best["state"] if best.get("state") is not None else last


def _same_data(a: trainer.TrainConfig, b: trainer.TrainConfig, names: tuple[str, str]) -> None:
    """Both runs must be evaluated on one test split: the same dataset and files (and, for a
    generated dataset, the same seed: it generates the data)."""
    keys = ["dataset", "data_path", "synthetic_size"]
    if not data_mod.REGISTRY[a.dataset].files:
        keys.append("seed")
    differ = [k for k in keys if getattr(a, k) != getattr(b, k)]
    if differ:
        raise ValueError(f"--eval-ensemble: {names[0]} and {names[1]} are not on one test split: "
                         + ", ".join(f"{k}={getattr(a, k)!r} vs {getattr(b, k)!r}" for k in differ))


def evaluate_runs(run_a: str, run_b: str, *, output: str | None = None, overwrite: bool = False, device: str = "auto",
                  chunk: int = 4096, progress: bool = True, quiet: bool = False) -> dict:
    """Each run's test recall and that of the two similarities averaged (COCO: 5-fold 1K and 5K);
    printed, and written to OUTPUT/results.json if `output`."""
    if chunk < 1:
        raise ValueError(f"sim_chunk must be at least 1; got {chunk}")
    runs = [load_run(r) for r in (run_a, run_b)]
    (a, _), (b, _) = runs
    _same_data(a, b, (run_a, run_b))
    target = Path(output) / trainer.RESULTS if output else None
    if target is not None and target.exists() and not overwrite:
        raise ValueError(f"--output {output} already holds a results.json: --overwrite replaces it")
    dataset = data_mod.load(a.dataset, noise=0.0, seed=a.seed, data_path=a.data_path, size=a.synthetic_size)
    dev = dist_mod.device_for(device)
    sims = []
    for cfg, state in runs:
        model = trainer.build_model(dataset, cfg.resolved())
        model.load_state_dict(state)
        model.to(dev)
        if getattr(model, "pairwise", False):
            model.chunk = chunk
        sims.append(evaluation.similarity_matrix(model, dataset.test, progress=progress and not quiet))
    split, folds = dataset.test, dataset.eval_folds
    alone = [evaluation.evaluate_similarity(s, split, folds) for s in sims]
    test = evaluation.evaluate_similarity((sims[0] + sims[1]) / 2, split, folds)
    name = "SGRAF" if {a.model, b.model} == {"sgr", "saf"} else "ensemble"
    results = {"ensemble": name, "test": test, "protocol": trainer.protocol(dataset), "data": dataset.info,
               "runs": [{"folder": str(folder), "model": cfg.model, "method": cfg.method, "noise": cfg.noise,
                         "seed": cfg.seed, "test": m} for folder, (cfg, _), m in zip((run_a, run_b), runs, alone)]}
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, target)
    if not quiet:
        print(f"{name} of {run_a} ({a.model}, {a.method}) and {run_b} ({b.model}, {b.method}): similarities averaged")
        print(f"test: {results['protocol']['test']}")
        rows = [(a.model, alone[0]), (b.model, alone[1]), (name, test)]
        print("\n".join(trainer.recall_table(rows, len(split.images), folds)))
        print("test: " + evaluation.format_row(test))
    return results
