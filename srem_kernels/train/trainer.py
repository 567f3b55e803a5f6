"""The training loop: SREM's schedule (warm-up on the complementary term, then dataset-level
energy filtration every epoch), the baselines, per-epoch evaluation, logging, atomic checkpoints
and exact resume; in one process or, under torchrun, over one global batch split across the ranks
(dist.py)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from srem_kernels.train import data as data_mod
from srem_kernels.train import dist as dist_mod
from srem_kernels.train import evaluation, model as model_mod, noise as noise_mod, selection, sgraf
from srem_kernels.train.methods import METHODS, batch_loss, loss_inputs

DATASET_DEFAULTS = {name: entry.defaults for name, entry in data_mod.REGISTRY.items()}  # data.REGISTRY's
CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
RESULTS = "results.json"
RUN_FILES = (CHECKPOINT, LOG, RESULTS)
CHECKPOINT_KEYS = ("epoch", "config", "model", "optimizer", "scheduler", "best", "clean", "rng")
# The flags a resumed run may change: none alters what it trains (epochs extends it; the noise
# file's pairs are checked by their digest, the batch as the global batch). All others must match.
RESUME_FREE = ("output", "resume", "overwrite", "progress", "quiet", "device", "loss_backend", "dist_timeout",
               "save_noise", "noise_file", "epochs", "batch_size", "sim_chunk")  # fmt: skip
MODELS = ("vse", *sgraf.REASONINGS)  # --model: the dual encoder, or SGRAF's SGR or SAF network
NETWORK_FLAGS = ("sim_dim", "word_dim", "sgr_steps")  # a similarity network's alone (sgr_steps: SGR's alone)
# What a checkpoint written before a flag existed trained with: the flag's value then.
LEGACY = {"model": "vse"}


@dataclass
class TrainConfig:
    dataset: str = "synthetic"
    noise: float = 0.0
    method: str = "srem"
    seed: int = 0
    output: str = "runs/srem"
    epochs: int | None = None
    warmup_epochs: int | None = None
    batch_size: int = 128  # per process: under torchrun the global batch is WORLD_SIZE x this
    lr: float | None = None
    lr_update: int | None = None  # epochs between 10x learning-rate decays
    grad_clip: float = 2.0
    margin: float = 0.2
    tau: float = 0.05
    embed_dim: int | None = None
    model: str = "vse"
    sim_dim: int | None = None  # SGRAF: the alignment vectors' dimension
    word_dim: int | None = None  # SGRAF: the word embeddings' dimension
    sgr_steps: int | None = None  # SGR's graph-reasoning steps
    sim_chunk: int = 4096  # SGRAF: image–caption pairs per block of the network's similarity
    loss_backend: str = "auto"
    data_path: str | None = None
    noise_file: str | None = None
    save_noise: str | None = None  # write the training noise index (NCR's caption-level .npy) here
    synthetic_size: str = "default"
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False  # replace a run already in OUTPUT
    progress: bool = True
    quiet: bool = False
    dist_timeout: float = 600.0  # seconds a collective waits for the other ranks (torchrun only)

    def resolved(self) -> "TrainConfig":
        """A copy with every None filled from DATASET_DEFAULTS, after checking the arguments."""
        check_config(self)
        out = TrainConfig(**asdict(self))
        unused = {"vse": NETWORK_FLAGS, "saf": ("sgr_steps",)}.get(self.model, ())
        for k, v in DATASET_DEFAULTS[self.dataset].items():
            if getattr(out, k) is None and k not in unused:
                setattr(out, k, v)
        if out.warmup_epochs > out.epochs:
            raise ValueError(f"warmup_epochs ({out.warmup_epochs}) must not exceed epochs ({out.epochs})")
        return out


def check_config(cfg: TrainConfig) -> None:
    """One clear ValueError naming the bad argument."""
    if cfg.dataset not in data_mod.DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(data_mod.DATASETS)}; got {cfg.dataset!r}")
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {cfg.method!r}")
    if cfg.model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {cfg.model!r}")
    for name in NETWORK_FLAGS:
        if getattr(cfg, name) is not None and (cfg.model == "vse" or (name == "sgr_steps" and cfg.model != "sgr")):
            raise ValueError(f"{name} applies to --model {'sgr' if name == 'sgr_steps' else 'sgr or saf'}, not {cfg.model}")
    if not 0.0 <= cfg.noise < 1.0:
        raise ValueError(f"noise must be in [0, 1); got {cfg.noise}")
    if cfg.batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (the loss needs B >= 2); got {cfg.batch_size}")
    for name in ("epochs", "lr_update", "embed_dim", *NETWORK_FLAGS, "sim_chunk"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise ValueError(f"{name} must be at least 1; got {v}")
    if cfg.warmup_epochs is not None and cfg.warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0; got {cfg.warmup_epochs}")
    for name in ("lr", "tau"):
        v = getattr(cfg, name)
        if v is not None and not v > 0:
            raise ValueError(f"{name} must be > 0; got {v}")
    if not cfg.dist_timeout > 0:
        raise ValueError(f"dist_timeout must be > 0; got {cfg.dist_timeout}")
    if cfg.resume and cfg.overwrite:
        raise ValueError("resume and --overwrite exclude each other: continue the run in OUTPUT or replace it")
    if cfg.grad_clip < 0 or cfg.margin < 0:
        raise ValueError(f"grad_clip and margin must be >= 0; got {cfg.grad_clip}, {cfg.margin}")


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(state: dict, output: Path) -> None:
    """The per-epoch checkpoint, written to a temporary file and renamed over the old one."""
    _atomic_save(state, output / CHECKPOINT)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _to(x, device):
    return tuple(t.to(device) for t in x) if isinstance(x, tuple) else x.to(device)


def epoch_seed(seed: int, epoch: int, salt: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + salt) % (2**63)


def epoch_batches(n: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """One epoch's batches of pair indices: a permutation drawn from `seed` alone (so a resumed run
    replays it without generator state), the last partial batch dropped as the NCR family does.
    A global batch of a future multi-process run is one of these, split across the ranks."""
    batches = list(torch.randperm(n, generator=torch.Generator().manual_seed(seed)).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


class Logger:
    """log.jsonl and the printed lines; a `silent` logger (ranks other than 0) does neither."""

    def __init__(self, output: Path, quiet: bool, silent: bool = False):
        self.path, self.quiet, self.silent = output / LOG, quiet or silent, silent

    def record(self, entry: dict) -> None:
        if self.silent:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def restart(self) -> None:
        """A fresh run starts a fresh log."""
        if not self.silent and self.path.exists():
            self.path.unlink()

    def keep_until(self, epoch: int) -> None:
        """Drop entries of epochs after `epoch` (logged, but interrupted before their checkpoint)."""
        if not self.silent and self.path.exists():
            lines = [ln for ln in self.path.read_text().splitlines() if json.loads(ln)["epoch"] <= epoch]
            self.path.write_text("".join(ln + "\n" for ln in lines))

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)


def train(cfg: TrainConfig) -> dict:
    """Train as `cfg` says; returns the final results (also written to OUTPUT/results.json).

    Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set, WORLD_SIZE > 1) every rank runs this: the
    process group is created here (gloo on CPU, NCCL on CUDA) and destroyed at the end, each
    optimizer step is one global batch of WORLD_SIZE x batch_size pairs, the same batches as one
    process with that batch size, and rank 0 alone prints and writes files."""
    cfg = cfg.resolved()
    device = dist_mod.device_for(cfg.device)
    d = dist_mod.setup(device, cfg.dist_timeout)
    try:
        return _train(cfg, device, d)
    finally:
        dist_mod.teardown(d)


def check_output(cfg: TrainConfig) -> str | None:
    """Refuse to start in a folder that holds a run unless --resume or --overwrite says what to do
    with it (a run is days of a GPU). Returns a line saying how this run starts, where it matters."""
    output = Path(cfg.output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {output} is a file, not a folder")
    held = [f for f in RUN_FILES if (output / f).exists()]
    if not held:
        return None
    if cfg.overwrite:
        return f"--overwrite: replacing the run in {output} ({', '.join(held)})"
    if not cfg.resume:
        raise ValueError(f"output {output} already holds a run ({', '.join(held)}): pass --resume to continue it "
                         "or --overwrite to replace it")
    if CHECKPOINT in held:
        return None
    if RESULTS in held:
        raise ValueError(f"--resume: {output} holds a finished run ({RESULTS}) without the {CHECKPOINT} to continue "
                         "from; --overwrite replaces it")
    return f"--resume: no {CHECKPOINT} in {output} (its first epoch was interrupted): starting the run afresh"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    first = lines[0].split(". ")[0][:200] if lines else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def read_checkpoint(path: Path, cfg: TrainConfig, world: int) -> dict:
    """The checkpoint --resume continues from, checked against the flags before any data is read:
    a file that is not one, or one of another run, is one ValueError naming the file and the mismatch."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - truncated, another program's pickle, not a zip: all unreadable
        raise ValueError(f"--resume: {path} is not a readable checkpoint ({_first_line(err)})") from None
    lacks = [k for k in CHECKPOINT_KEYS if k not in ck] if isinstance(ck, dict) else list(CHECKPOINT_KEYS)
    if lacks or not isinstance(ck["config"], dict):
        raise ValueError(f"--resume: {path} is not a srem-train checkpoint (a {type(ck).__name__} without "
                         f"{', '.join(lacks or ['config'])})")
    now = {k: v for k, v in asdict(cfg).items() if k not in RESUME_FREE}
    then = {k: ck["config"].get(k, LEGACY.get(k)) for k in now}
    differ = [k for k, v in now.items() if then[k] != v]
    if differ:
        was = ", ".join(f"{k}={then[k]!r}" for k in differ)
        raise ValueError(f"--resume: {path} was written with {was}, not " + ", ".join(f"{k}={now[k]!r}" for k in differ))
    ck_world = ck.get("world_size", 1)
    if ck["config"].get("batch_size", 0) * ck_world != cfg.batch_size * world:
        was = f"batch_size={ck['config'].get('batch_size')!r}" + (f" x {ck_world} processes" if ck_world > 1 else "")
        now = f"batch_size={cfg.batch_size!r}" + (f" x {world} processes" if world > 1 else "")
        raise ValueError(f"--resume: {path} was written with {was}, not {now}")
    return ck


def noise_digest(cap2img: torch.Tensor) -> str:
    """A fingerprint of the training pairs (which image each caption is paired with)."""
    return hashlib.sha256(cap2img.numpy().astype(np.int64).tobytes()).hexdigest()[:16]


def _train(cfg: TrainConfig, device: torch.device, d: dist_mod.Dist) -> dict:
    method = METHODS[cfg.method]
    if cfg.model != "vse" and d.group is not None:  # raised on every rank alike
        raise ValueError(f"model {cfg.model} trains in one process: its B×B similarity needs every image and caption "
                         "of the batch in one place (multi-process training is the dual encoder's)")
    output = Path(cfg.output)
    how = check_output(cfg)  # on every rank alike, before rank 0 writes anything
    ckpt_path = output / CHECKPOINT
    ck = read_checkpoint(ckpt_path, cfg, d.world) if cfg.resume and ckpt_path.exists() else None  # every rank
    if d.main:
        output.mkdir(parents=True, exist_ok=True)
    log = Logger(output, cfg.quiet, silent=not d.main)
    if how:
        log.say(how)
    global_batch = cfg.batch_size * d.world

    dataset = data_mod.load(cfg.dataset, noise=cfg.noise, seed=cfg.seed, data_path=cfg.data_path,
                            noise_file=cfg.noise_file, size=cfg.synthetic_size)
    train_split = dataset.train
    if "noise" in dataset.info:
        log.say(f"noise: {dataset.info['noise']}")
    if cfg.save_noise:
        log.say(noise_mod.save_index(Path(cfg.save_noise), train_split.cap2img, write=d.main))
    digest = noise_digest(train_split.cap2img)
    if d.group is not None:
        _check_split(len(train_split), cfg.batch_size, d)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    model = build_model(dataset, cfg).to(device)  # the same weights on every rank (seeded)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_update, gamma=0.1)
    start, best, clean = 0, {"rsum": -1.0, "epoch": -1, "state": None}, None

    if ck is not None:
        if ck.get("noise_digest", digest) != digest:
            raise ValueError(f"--resume: {ckpt_path} was trained on other training pairs than this run's noise "
                             f"({dataset.info.get('noise', 'drawn from the seed')}): another noise file?")
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"--resume: {ckpt_path} holds another model than these flags build ({_first_line(err)})") from None
        start, best, clean = ck["epoch"] + 1, ck["best"], ck["clean"]
        _set_rng_state(ck["rng"])
        log.keep_until(ck["epoch"])
        log.say(f"resumed from {ckpt_path} after epoch {ck['epoch']}")
    elif d.main:  # a new run: nothing of an old one stays beside it
        for name in (CHECKPOINT, RESULTS):
            (output / name).unlink(missing_ok=True)
        log.restart()
    if not dist_mod.agree(start, d):
        raise ValueError(f"--resume: the ranks found different checkpoints in {output} (this rank starts at epoch "
                           f"{start}); every rank must see rank 0's output folder")
    net = model
    if d.group is not None:  # gradients averaged over the ranks; the loss is scaled by the world size
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    n_clean = None if train_split.noisy is None else int((~train_split.noisy).sum())
    log.say(f"{cfg.dataset}: {len(train_split)} training pairs ({cfg.noise:.0%} noise"
            + ("" if n_clean is None else f", {len(train_split) - n_clean} mismatched") + f"), method {cfg.method}: "
            f"{method.describe()}, model {cfg.model} ({sum(p.numel() for p in model.parameters()):,} parameters), device {device}"
            + ("" if d.group is None else f", {d.world} processes x batch {cfg.batch_size} = global batch {global_batch}"))

    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        warming_up = method.warmup and epoch < cfg.warmup_epochs
        entry = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "warmup": warming_up}
        if method.selection == "dataset" and not warming_up:
            energy = selection.pair_energies(model, train_split, batch_size=global_batch, tau=cfg.tau,
                                             backend=cfg.loss_backend, seed=epoch_seed(cfg.seed, epoch, 1), dist=d)
            clean = selection.select_clean(energy).float()
            entry.update({f"sel_{k}": v for k, v in selection.selection_metrics(clean, train_split.noisy).items()})
            if train_split.noisy is not None:
                entry["energy_auc"] = selection.separation_auc(energy, train_split.noisy)

        model.train()
        batches = epoch_batches(len(train_split), global_batch, epoch_seed(cfg.seed, epoch, 0))
        # per pair, what the hinge used: the clean weight c (stats.clean) and c·w, w the sensitivity weight.
        # It and the loss's sum stay on the device, read once an epoch: no device sync per step for them
        used = torch.zeros(len(train_split), 2, device=device) if method.selection != "none" and not warming_up else None
        total, bar = torch.zeros((), dtype=torch.float64, device=device), _progress(batches, cfg, epoch, d)
        live = not getattr(bar, "disable", True)  # a bar shown on a terminal: its running loss is read each step
        for step, idx in enumerate(bar):
            local = d.local(idx)  # this rank's contiguous slice of the global batch
            images, captions = train_split.batch(local)
            pairs = loss_inputs(net(images.to(device), _to(captions, device)))
            c = None if clean is None else clean[local].to(device)
            loss, out = batch_loss(method, **pairs, tau=cfg.tau, margin=cfg.margin, clean=c, warming_up=warming_up,
                                   backend=cfg.loss_backend, dist=d, sizes=d.sizes(len(idx)))
            opt.zero_grad(set_to_none=True)
            if d.group is None:
                loss.backward()
            else:  # d(global loss)/d(local rows) on each rank; DDP averages, so x world: the global gradient
                (loss * d.world).backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.detach()  # the global batch's loss, the same on every rank; summed in float64
            if used is not None:
                used[local] = torch.stack([out.stats.clean, out.stats.clean * out.stats.weight], dim=1).float()
            if live:
                bar.set_postfix(loss=f"{total.item() / (step + 1):.4f}")
        sched.step()
        entry["loss"] = total.item() / len(batches)
        if used is not None:
            used = dist_mod.merge_rows(used, d).cpu()
            seen = torch.zeros(len(train_split), dtype=torch.bool)
            seen[torch.cat(batches)] = True
            noisy = None if train_split.noisy is None else train_split.noisy[seen]
            if method.selection == "inbatch":
                entry.update({f"sel_{k}": v for k, v in selection.selection_metrics(used[seen, 0], noisy).items()})
            entry.update({f"hinge_{k}": v for k, v in selection.hinge_metrics(used[seen, 0], used[seen, 1], noisy).items()})

        val = evaluation.evaluate(model, dataset.val, progress=_shows_bars(cfg, d))  # every rank (same result): no rank waits
        entry.update({"val_rsum": val["rsum"], "val_r1": (val["i2t_r1"] + val["t2i_r1"]) / 2, "seconds": time.time() - t0})
        if val["rsum"] > best["rsum"]:
            best = {"rsum": val["rsum"], "epoch": epoch, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        log.record(entry)
        log.say(_epoch_line(entry))
        if d.main:
            state = {"epoch": epoch, "config": asdict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "best": best, "clean": clean, "rng": _rng_state(),
                     "noise_digest": digest}
            if d.group is not None:
                state["world_size"] = d.world
            save_checkpoint(state, output)

    return finish(cfg, model, dataset, best, log, output, d)


def _check_split(n: int, batch_size: int, d: dist_mod.Dist) -> None:
    """Every rank needs a row of every global batch (srem_kernels.loss(group=) takes B_r >= 1):
    only a training split smaller than the global batch can break that. Raised on every rank alike."""
    if min(d.sizes(min(n, batch_size * d.world))) < 1:
        raise ValueError(f"batch_size x {d.world} processes: the training split has {n} pairs, fewer than the processes")


def _shows_bars(cfg: TrainConfig, d: dist_mod.Dist) -> bool:
    return cfg.progress and not cfg.quiet and d.main


def _progress(batches, cfg: TrainConfig, epoch: int, d: dist_mod.Dist):
    if not _shows_bars(cfg, d):
        return batches
    try:
        from tqdm import tqdm
    except ImportError:
        return batches
    # disable=None: bars only on a terminal; a log or CI gets the one line per epoch alone
    return tqdm(batches, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True, disable=None)


def _epoch_line(e: dict) -> str:
    line = f"epoch {e['epoch']:>3}  loss {e['loss']:.4f}  val rSum {e['val_rsum']:.1f}"
    if "sel_selected" in e:
        line += f"  selected {e['sel_selected']:.1%}"
    if "sel_precision" in e:
        line += f"  selection precision {e['sel_precision']:.3f} recall {e['sel_recall']:.3f}"
    if "energy_auc" in e:
        line += f"  energy AUC {e['energy_auc']:.3f}"
    return line + ("  (warm-up)" if e["warmup"] else "") + f"  [{e['seconds']:.1f}s]"


def finish(cfg: TrainConfig, model, dataset, best: dict, log: Logger, output: Path, d: dist_mod.Dist = dist_mod.Dist()) -> dict:
    """Evaluate the best-on-validation weights on the test split; print the table and write results.json
    (rank 0; the other ranks return the same results without the selection history of the log)."""
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    test = evaluation.evaluate(model, dataset.test, folds=dataset.eval_folds, progress=_shows_bars(cfg, d))
    results = {"config": asdict(cfg), "model": describe_model(model, cfg), "best_epoch": best["epoch"],
               "val_rsum": best["rsum"], "test": test, "protocol": protocol(dataset), "data": dataset.info}
    if d.group is not None:
        results["world_size"] = d.world
    if not d.main:
        return results
    entries = [json.loads(line) for line in open(output / LOG)] if (output / LOG).exists() else []
    sel = [e for e in entries if "sel_precision" in e]
    if sel:
        results["selection"] = [{k: e[k] for k in ("epoch", "sel_selected", "sel_precision", "sel_recall") if k in e} for e in sel]
    _atomic_save_json(results, output / RESULTS)
    if sel:
        log.say("selection precision by epoch: " + " ".join(f"{e['epoch']}:{e['sel_precision']:.3f}" for e in sel))
    n, folds = len(dataset.test.images), dataset.eval_folds
    log.say(f"\nbest validation rSum {best['rsum']:.1f} at epoch {best['epoch']}; test split ({cfg.method}, model "
            f"{cfg.model}, noise {cfg.noise:.0%}, seed {cfg.seed}):")
    log.say(f"validation: {results['protocol']['val']}; test: {results['protocol']['test']}")
    for line in recall_table([("test", test)], n, folds):
        log.say(line)
    log.say("test: " + evaluation.format_row(test))
    return results


def protocol(dataset) -> dict:
    """Which validation and test sets the recall is on (results.json's `protocol`)."""
    return {"val": dataset.info.get("val", f"the val split ({len(dataset.val.images)} images)"),
            "test": dataset.info.get("test", f"the test split ({len(dataset.test.images)} images)")}


def recall_table(named: list[tuple[str, dict]], n_images: int, folds: int) -> list[str]:
    """The printed test table: per (name, recall) a row for the whole test set and, with folds
    (COCO), one for the mean over the folds first."""
    lines = [f"{'split':<24}{'i2t R@1':>9}{'R@5':>7}{'R@10':>7}{'t2i R@1':>9}{'R@5':>7}{'R@10':>7}{'rSum':>8}"]
    for name, test in named:
        rows = []
        if folds > 1:
            rows.append((f"{name} {folds}-fold {evaluation.size_label(n_images // folds)}",
                         {k[5:]: v for k, v in test.items() if k.startswith("fold_")}))
        rows.append((f"{name} {evaluation.size_label(n_images)}", test))
        for label, m in rows:
            lines.append(f"{label:<24}{m['i2t_r1']:>9.1f}{m['i2t_r5']:>7.1f}{m['i2t_r10']:>7.1f}{m['t2i_r1']:>9.1f}"
                         f"{m['t2i_r5']:>7.1f}{m['t2i_r10']:>7.1f}{m['rsum']:>8.1f}")
    return lines


def build_model(dataset, cfg: TrainConfig):
    """The --model for `dataset`'s shapes (cfg resolved): the dual encoder, or SGRAF's SGR or SAF."""
    if cfg.model == "vse":
        return model_mod.build(dataset, cfg.embed_dim)
    return sgraf.build(dataset, reasoning=cfg.model, embed_dim=cfg.embed_dim, sim_dim=cfg.sim_dim,
                       word_dim=cfg.word_dim, sgr_steps=cfg.sgr_steps or 0, chunk=cfg.sim_chunk)


def describe_model(model, cfg: TrainConfig) -> dict:
    """results.json's `model`: its name and parameters (by part, for SGRAF)."""
    out = {"name": cfg.model, "parameters": sum(p.numel() for p in model.parameters())}
    if hasattr(model, "parameter_counts"):
        out["parts"] = model.parameter_counts()
    return out


def _atomic_save_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
