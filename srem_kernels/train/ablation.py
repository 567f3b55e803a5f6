"""The ablation of docs/ablation_protocol.md: its grid, a resumable parallel runner, and the report.

    python -m srem_kernels.train.ablation list                 # the runs, and which are still to do
    python -m srem_kernels.train.ablation run --jobs 2         # run what is missing (one thread per run)
    python -m srem_kernels.train.ablation report               # docs/ablation.md and docs/ablation.png

Runs live in RUNS/REGIME/METHOD_noiseNN_seedS/ (the trainer's log.jsonl and results.json). A run
whose results.json exists is skipped, and a run of other settings (size, epochs) than the grid's
is refused; one interrupted mid-way resumes from its checkpoint. Each
run is one process with one thread, so its result does not depend on --jobs or on the order.
Flags narrow the grid (--regimes, --methods, --noises, --seeds, --size, --epochs) for a smoke
test; the report then judges what that narrower grid holds.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from srem_kernels.train.data import REGISTRY
from srem_kernels.train.experiment import _commit, _ms, _r1
from srem_kernels.train.trainer import CHECKPOINT, DATASET_DEFAULTS, LOG, RESULTS

BASELINE = "srem-nosce"
VARIANTS = ("srem", "srem-sce-margin", "srem-sce-clean", "srem-sce-rank", "srem-nosce-lh0.5", "srem-nosce-lh2",
            "srem-nohinge")  # fmt: skip
NO_HINGE = "srem-nohinge"  # judged the other way round: the hinge earns its place if removing it is worse
REGIMES = {"synthetic": (0, 1, 2, 3, 4), "synthetic-scenes": (0, 1, 2, 3, 4), "digits": (0, 1, 2)}
NOISES = (0.4, 0.6, 0.8)
TABLE_DATASET = "synthetic-scenes"
TABLE_METHODS = ("vsepp", "infonce", "rcl", "srem")
TABLE_NOISES = (0.0, 0.2, 0.4, 0.6, 0.8)
TABLE_SEEDS = (0, 1, 2)
WALL_LOG = "RUNNER_LOG.jsonl"  # one line per runner start, finished run and runner end


@dataclass(frozen=True)
class Job:
    dataset: str
    method: str
    noise: float
    seed: int

    def dir(self, runs: Path) -> Path:
        return runs / self.dataset / f"{self.method}_noise{int(round(self.noise * 100)):02d}_seed{self.seed}"


@dataclass(frozen=True)
class Spec:
    """The grid (and the scenes table) the runner runs and the report judges; default: the protocol's."""

    regimes: dict = field(default_factory=lambda: dict(REGIMES))  # dataset -> seeds
    noises: tuple = NOISES
    variants: tuple = VARIANTS
    baseline: str = BASELINE
    table: bool = True
    table_noises: tuple = TABLE_NOISES
    table_seeds: tuple = TABLE_SEEDS
    size: str = "default"  # synthetic-size of the two synthetic regimes
    epochs: int | None = None  # None: the trainer's default per dataset
    warmup_epochs: int | None = None

    def grid_jobs(self) -> list[Job]:
        return [Job(d, m, n, s) for d, seeds in self.regimes.items() for n in self.noises
                for m in (self.baseline, *self.variants) for s in seeds]  # fmt: skip

    def table_jobs(self) -> list[Job]:
        if not self.table:
            return []
        return [Job(TABLE_DATASET, m, n, s) for n in self.table_noises for m in TABLE_METHODS for s in self.table_seeds]

    def jobs(self) -> list[Job]:
        return list(dict.fromkeys(self.grid_jobs() + self.table_jobs()))  # the shared runs once

    def settings(self, dataset: str) -> dict:
        """What a run of `dataset` in this grid trained with, beyond what its folder's name says."""
        d = DATASET_DEFAULTS[dataset]
        out = {"epochs": d["epochs"] if self.epochs is None else self.epochs,
               "warmup_epochs": d["warmup_epochs"] if self.warmup_epochs is None else self.warmup_epochs}
        return out | ({"synthetic_size": self.size} if REGISTRY[dataset].sized else {})


class OtherGrid(ValueError):
    """A finished run under --runs trained with other settings than the grid's (size, epochs)."""


def finished(path: Path, spec: Spec) -> dict:
    """A run's results.json, checked against `spec`: a run folder's name does not say its size or
    epochs, so a smoke run (--size tiny --epochs 2) must not pass later for one of the full grid."""
    try:
        r = json.loads(path.read_text())
        c = r["config"]
        want = spec.settings(c["dataset"])
    except (ValueError, KeyError, TypeError) as err:
        raise OtherGrid(f"{path}: not a srem-train results.json ({type(err).__name__}: {err})") from None
    differ = [k for k in want if c.get(k) != want[k]]
    if differ:
        raise OtherGrid(f"{path.parent}: a run with {', '.join(f'{k}={c.get(k)!r}' for k in differ)}, not this grid's "
                        + ", ".join(f"{k}={want[k]!r}" for k in differ)
                        + " (another grid's run: move it away or give that grid its own --runs)")
    return r


def pending(spec: Spec, runs: Path) -> list[Job]:
    """The jobs of `spec` without a results.json: what is still to run (a finished run of other
    settings is an OtherGrid error)."""
    todo = []
    for j in spec.jobs():
        if (j.dir(runs) / RESULTS).exists():
            finished(j.dir(runs) / RESULTS, spec)
        else:
            todo.append(j)
    return todo


def execute(job: Job, runs: str, size: str, epochs: int | None, warmup_epochs: int | None) -> tuple[Job, float, float]:
    """Train one job (in a worker process, one thread): resumed from its checkpoint if it was
    interrupted (--resume also starts afresh where there is none: an empty folder, or a log whose
    first checkpoint was never written); the checkpoint is deleted once results.json is written.
    (job, seconds, test rSum)."""
    from srem_kernels.train import trainer

    out = job.dir(Path(runs))
    t0 = time.time()
    cfg = trainer.TrainConfig(dataset=job.dataset, noise=job.noise, method=job.method, seed=job.seed, output=str(out),
                              epochs=epochs, warmup_epochs=warmup_epochs, synthetic_size=size,
                              resume=True, progress=False, quiet=True)  # fmt: skip
    res = trainer.train(cfg)
    (out / CHECKPOINT).unlink(missing_ok=True)  # 5 MB a run; the log and results stay
    return job, time.time() - t0, res["test"]["rsum"]


def _single_thread_env() -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _record(runs: Path, entry: dict) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    with open(runs / WALL_LOG, "a") as f:
        f.write(json.dumps(entry | {"time": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")


def run(spec: Spec, runs: Path, n_jobs: int = 2, executor=None) -> list[tuple[Job, float, float]]:
    """Run every job of `spec` that has no results yet, in n_jobs processes (spawned, so no state of
    this process leaks into them); `executor` (tests) replaces the process pool. Returns the jobs
    done; a run that raises is logged (event "error") and the others go on."""
    if n_jobs < 1:
        raise ValueError(f"--jobs must be at least 1; got {n_jobs}")
    todo = pending(spec, runs)
    total = len(spec.jobs())
    print(f"{total} runs in the grid, {total - len(todo)} done, {len(todo)} to run in {n_jobs} process(es)", flush=True)
    if not todo:
        return []
    _record(runs, {"event": "start", "commit": _commit(), "jobs": n_jobs, "todo": len(todo)})
    args = (str(runs), spec.size, spec.epochs, spec.warmup_epochs)
    done, t0 = [], time.time()
    if executor is None:
        _single_thread_env()  # inherited by the spawned workers before they import torch
        executor = ProcessPoolExecutor(max_workers=n_jobs, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init)
    failed = []
    with executor as pool:
        futures = {pool.submit(execute, j, *args): j for j in todo}
        for fut in as_completed(futures):
            try:
                job, seconds, rsum = fut.result()
            except Exception as err:  # noqa: BLE001 - one broken run must not stop the grid
                job = futures[fut]
                failed.append(job)
                _record(runs, {"event": "error", "dataset": job.dataset, "method": job.method, "noise": job.noise,
                               "seed": job.seed, "error": f"{type(err).__name__}: {err}"})  # fmt: skip
                print(f"FAILED {job.dataset} {job.method} noise {job.noise:.0%} seed {job.seed}: {err}", flush=True)
                continue
            done.append((job, seconds, rsum))
            _record(runs, {"event": "run", "dataset": job.dataset, "method": job.method, "noise": job.noise,
                           "seed": job.seed, "seconds": round(seconds, 1), "rsum": rsum, "commit": _commit()})  # fmt: skip
            left = len(todo) - len(done) - len(failed)
            eta = (time.time() - t0) / len(done) * left
            print(f"[{len(done)}/{len(todo)}] {job.dataset} {job.method} noise {job.noise:.0%} seed {job.seed}: "
                  f"test rSum {rsum:.1f} ({seconds:.0f}s; ~{eta / 60:.0f} min left)", flush=True)
    _record(runs, {"event": "end", "done": len(done), "failed": len(failed), "wall_s": round(time.time() - t0, 1)})
    if failed:
        print(f"{len(failed)} run(s) failed (see {runs / WALL_LOG}); run again to retry them", flush=True)
    return done


# ---------------------------------------------------------------- the statistic and the decision


def paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """a[s] - b[s] over the seeds both have."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def mean_se(d: list[float]) -> tuple[float, float]:
    """Mean and standard error (sd with k - 1, over √k); SE is nan below two values."""
    if not d:
        return float("nan"), float("nan")
    if len(d) < 2:
        return d[0], float("nan")
    return statistics.mean(d), statistics.stdev(d) / len(d) ** 0.5


def level(d: list[float], k: int) -> str:
    """At one noise level: "better" (mean > 2 SE), "worse" (mean < -2 SE), "same", or
    "incomplete" when fewer than the regime's k seeds are paired."""
    if len(d) < k or k < 2:
        return "incomplete"
    m, se = mean_se(d)
    return "better" if m > 2 * se else "worse" if m < -2 * se else "same"


def decide(levels: list[str], reverse: bool = False) -> str:
    """The protocol's rule over one regime's noise levels: "passes" when better at two or more and
    worse at none; `reverse` (srem-nohinge) swaps better and worse. "incomplete" if any level is."""
    if "incomplete" in levels:
        return "incomplete"
    good, bad = ("worse", "better") if reverse else ("better", "worse")
    return "passes" if levels.count(good) >= 2 and bad not in levels else "fails"


# ---------------------------------------------------------------- the report


def load_runs(runs: Path, spec: Spec) -> dict[Job, dict]:
    """Every finished run under `runs` (each of `spec`'s settings, else OtherGrid): its
    results.json plus its last selection epoch's log entry."""
    out = {}
    for f in sorted(runs.glob(f"*/*/{RESULTS}")):
        r = finished(f, spec)
        c = r["config"]
        log = f.parent / LOG
        entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        sel = [e for e in entries if "hinge_selected" in e or "sel_selected" in e]
        r["last_selection"] = sel[-1] if sel else {}
        out[Job(c["dataset"], c["method"], round(c["noise"], 2), c["seed"])] = r
    return out


def _cell(runs: dict, dataset: str, method: str, noise: float) -> dict[int, dict]:
    """One (regime, method, noise) cell's finished runs, by seed."""
    return {j.seed: r for j, r in runs.items() if (j.dataset, j.method, j.noise) == (dataset, method, round(noise, 2))}


def _rsums(runs: dict, dataset: str, method: str, noise: float) -> dict[int, float]:
    return {s: r["test"]["rsum"] for s, r in _cell(runs, dataset, method, noise).items()}


def judge(spec: Spec, runs: dict) -> dict:
    """{dataset: {variant: {"levels": [(noise, diffs, mean, se, verdict)], "decision": str}}}."""
    out = {}
    for dataset, seeds in spec.regimes.items():
        out[dataset] = {}
        for v in spec.variants:
            rows = []
            for n in spec.noises:
                base = {s: x for s, x in _rsums(runs, dataset, spec.baseline, n).items() if s in seeds}
                d = paired({s: x for s, x in _rsums(runs, dataset, v, n).items() if s in seeds}, base)
                rows.append((n, d, *mean_se(d), level(d, len(seeds))))
            out[dataset][v] = {"levels": rows, "decision": decide([r[-1] for r in rows], reverse=v == NO_HINGE)}
    return out


MARK = {"better": "▲", "worse": "▼", "same": "·", "incomplete": "?"}


def _noise_header(noises) -> list[str]:
    return ["| method | " + " | ".join(f"{n:.0%} noise" for n in noises) + " |", "|---|" + "---|" * len(noises)]


def _conclusion(spec: Spec, verdicts: dict) -> list[str]:
    lines = []
    for dataset, per in verdicts.items():
        passing = [v for v in spec.variants if v != NO_HINGE and per[v]["decision"] == "passes"]
        incomplete = [v for v in spec.variants if per[v]["decision"] == "incomplete"]
        text = (f"**{', '.join(f'`{v}`' for v in passing)}** pass{'es' if len(passing) == 1 else ''}"
                if passing else "no variant passes")
        if NO_HINGE in per:
            h = per[NO_HINGE]["decision"]
            text += ("; the hinge **earns its place** (`srem-nohinge` is worse)" if h == "passes"
                     else "; the hinge is not shown to earn its place" if h == "fails" else "")
            # descriptive, outside the protocol's rule: a hinge whose removal is better where it differs
            if h == "fails" and decide([r[-1] for r in per[NO_HINGE]["levels"]]) == "passes":
                better = sum(r[-1] == "better" for r in per[NO_HINGE]["levels"])
                text += (f" — removing it is better at {better} of {len(per[NO_HINGE]['levels'])} noise levels "
                         "and worse at none (descriptive: the protocol decides only whether the hinge helps)")
        if incomplete:
            text += f"; incomplete: {', '.join(f'`{v}`' for v in incomplete)}"
        lines.append(f"- `{dataset}`: {text}.")
    return lines


def _wall(runs: Path) -> str:
    """The runner invocations' wall time (one killed before its end: up to its last entry) and the
    runs' time summed."""
    entries = _wall_entries(runs)
    if not entries:
        return "unknown"
    wall, starts, first, last = 0.0, 0, None, None
    for e in entries + [{"event": "start"}]:  # a sentinel closes the last invocation
        t = datetime.fromisoformat(e["time"]).timestamp() if "time" in e else None
        if e["event"] == "start":
            if first is not None:
                wall += last - first
            first, last = t, t
            starts += t is not None
        else:
            last = t
    work = sum(e["seconds"] for e in entries if e["event"] == "run")
    jobs = sorted({e["jobs"] for e in entries if e["event"] == "start"})
    return (f"{wall / 3600:.2f} h wall over {starts} runner invocation(s) with --jobs {'/'.join(map(str, jobs))}; "
            f"{work / 3600:.2f} h of run time summed over runs")


def _ms3(xs) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def _selection_rows(spec: Spec, runs: dict, dataset: str) -> list[str]:
    keys = ("sel_precision", "sel_recall", "hinge_precision", "hinge_recall", "hinge_weight_precision", "hinge_weight_mean")
    rows = ["| method | noise | GMM precision | GMM recall | hinge precision | hinge recall | hinge weight on clean | mean hinge weight |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in (spec.baseline, *spec.variants):
        for n in spec.noises:
            es = [r["last_selection"] for r in _cell(runs, dataset, m, n).values()]
            if not any(es):
                continue
            cells = []
            for k in keys:
                # nan: no hinge weight at all in that epoch (nothing selected)
                xs = [e[k] * (1 if k == "hinge_weight_mean" else 100) for e in es if k in e and math.isfinite(e[k])]
                cells.append("–" if not xs else _ms(xs) if k != "hinge_weight_mean" else _ms3(xs))
            rows.append(f"| {m} | {n:.0%} | " + " | ".join(cells) + " |")
    return rows


def _warmup_rows(spec: Spec, runs: dict, dataset: str) -> list[str]:
    """How many seeds' best-on-validation epoch lies inside the warm-up, where every SREM variant
    trains the same complementary loss alone (their test results then coincide)."""
    rows = ["| method | " + " | ".join(f"{n:.0%} noise" for n in spec.noises) + " |", "|---|" + "---|" * len(spec.noises)]
    for m in (spec.baseline, *spec.variants):
        cells = []
        for n in spec.noises:
            rs = list(_cell(runs, dataset, m, n).values())
            cells.append(f"{sum(r['best_epoch'] < r['config']['warmup_epochs'] for r in rs)}/{len(rs)}" if rs else "–")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return rows


def report(spec: Spec, runs_dir: Path, out_md: Path, command: str) -> str:
    import torch

    from srem_kernels.train.methods import METHODS

    runs = load_runs(runs_dir, spec)
    if not runs:
        raise SystemExit(f"no finished runs under {runs_dir}")
    verdicts = judge(spec, runs)
    commits = sorted({r["commit"] for r in _wall_entries(runs_dir) if r.get("event") == "run"}) or ["unknown"]
    cfg = next(iter(runs.values()))["config"]
    lines = [
        "# Does each part of SREM earn its place? The ablation's results",
        "",
        f"The protocol, fixed before the runs: [ablation_protocol.md](ablation_protocol.md). Produced by `{command}` "
        f"(runs by `python -m srem_kernels.train.ablation run --jobs N`) on {platform.processor() or platform.machine()} "
        f"CPU, one thread per run, torch {torch.__version__}; runs trained at commit {', '.join(commits)}, report "
        f"written at commit {_commit()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Wall time: {_wall(runs_dir)}.",
        f"Settings: the trainer's defaults (epochs {cfg['epochs']}, warm-up {cfg['warmup_epochs']}, batch "
        f"{cfg['batch_size']}, lr {cfg['lr']}, tau {cfg['tau']}, margin {cfg['margin']}), synthetic size `{spec.size}`; "
        "test rSum of the best-on-validation epoch.",
        "",
        "## Conclusion (computed by the protocol's decision rule)",
        "",
        "A variant passes on a regime when its seed-paired mean difference of test rSum against "
        f"`{spec.baseline}` exceeds twice its standard error at two or more noise levels and is not "
        "significantly worse (below −2 SE) at any. Each pass has a chance probability of about 1 % "
        "(k = 5) or 2.5 % (k = 3) under no effect (the protocol's 'Chance').",
        "",
        *_conclusion(spec, verdicts),
        "",
        f"![Test rSum minus {spec.baseline}'s, paired by seed, ±2 SE, per regime]({out_md.with_suffix('.png').name})",
        "",
    ]
    for dataset, seeds in spec.regimes.items():
        lines += [f"## `{dataset}` (seeds {', '.join(map(str, seeds))})", "",
                  f"Test rSum minus `{spec.baseline}`'s, paired by seed: mean ± SE (▲ better, ▼ worse by the 2 SE rule, "
                  "· neither, ? incomplete).", "",
                  "| variant | " + " | ".join(f"{n:.0%} noise" for n in spec.noises) + " | decision |",
                  "|---|" + "---|" * (len(spec.noises) + 1)]  # fmt: skip
        for v in spec.variants:
            cells = [f"{m:+.1f} ± {se:.1f} {MARK[verdict]}" if d and se == se else (f"{m:+.1f} {MARK[verdict]}" if d else "–")
                     for _, d, m, se, verdict in verdicts[dataset][v]["levels"]]  # fmt: skip
            decision = verdicts[dataset][v]["decision"]
            if v == NO_HINGE:
                decision = {"passes": "hinge earns its place", "fails": "hinge not shown to matter"}.get(decision, decision)
            lines.append(f"| {v} | " + " | ".join(cells) + f" | {decision} |")
        lines += ["", "rSum (test, mean ± std over seeds) and R@1 (mean of both directions, %):", "",
                  "| method | " + " | ".join(f"rSum {n:.0%}" for n in spec.noises) + " | "
                  + " | ".join(f"R@1 {n:.0%}" for n in spec.noises) + " |", "|---|" + "---|" * (2 * len(spec.noises))]
        for m in (spec.baseline, *spec.variants):
            sel = {n: list(_cell(runs, dataset, m, n).values()) for n in spec.noises}
            lines.append(f"| {m} | " + " | ".join(_ms([r["test"]["rsum"] for r in sel[n]]) for n in spec.noises) + " | "
                         + " | ".join(_ms([_r1(r) for r in sel[n]]) for n in spec.noises) + " |")
        lines += ["", "Selection at the last epoch (%, mean ± std over seeds; against the ground-truth noise flags, never "
                  "used in training): the dataset-level GMM's flags, the flags the hinge used (after `srem-sce-clean`'s "
                  "factor), the share of the total hinge weight c·w on clean pairs, and the mean of c·w.", "",
                  *_selection_rows(spec, runs, dataset), "",
                  "Seeds whose best-on-validation epoch (the one tested) lies inside the warm-up (epochs 0–"
                  f"{spec.settings(dataset)['warmup_epochs'] - 1}), where every SREM variant trains the complementary loss alone, so that "
                  "their test results coincide:", "", *_warmup_rows(spec, runs, dataset), ""]
    if spec.table:
        lines += _table_section(spec, runs)
    lines += ["## Methods", "", *(f"- `{m}`: {METHODS[m].describe()}" for m in
                                  dict.fromkeys((spec.baseline, *spec.variants, *(TABLE_METHODS if spec.table else ())))), ""]
    text = "\n".join(lines) + "\n"
    out_md.write_text(text)
    _plot(spec, verdicts, out_md.with_suffix(".png"))
    return text


def _wall_entries(runs_dir: Path) -> list[dict]:
    log = runs_dir / WALL_LOG
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _table_section(spec: Spec, runs: dict) -> list[str]:
    """The scenes regime's table as docs/training_results.md has it for the plain benchmark."""
    d, noises = TABLE_DATASET, spec.table_noises

    def of(m, n):
        return [r for s, r in _cell(runs, d, m, n).items() if s in spec.table_seeds]

    lines = [f"## VSE++, InfoNCE, RCL and SREM on `{d}` (seeds {', '.join(map(str, spec.table_seeds))})", "",
             "Test rSum, mean ± std:", "", *_noise_header(noises)]
    for m in TABLE_METHODS:
        lines.append(f"| {m} | " + " | ".join(_ms([r["test"]["rsum"] for r in of(m, n)]) for n in noises) + " |")
    lines += ["", "Test R@1 (mean of both directions, %):", "", *_noise_header(noises)]
    for m in TABLE_METHODS:
        lines.append(f"| {m} | " + " | ".join(_ms([_r1(r) for r in of(m, n)]) for n in noises) + " |")
    lines += ["", "SREM's rSum minus each method's, paired by seed (mean ± std):", "", *_noise_header(noises)]
    for m in TABLE_METHODS[:-1]:
        cells = [_ms(paired({r["config"]["seed"]: r["test"]["rsum"] for r in of("srem", n)},
                            {r["config"]["seed"]: r["test"]["rsum"] for r in of(m, n)})) for n in noises]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines + [""]


def _plot(spec: Spec, verdicts: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'srem-kernels[plot]'): no plot written")
        return
    fig, axes = plt.subplots(1, len(verdicts), figsize=(5 * len(verdicts), 4.2), squeeze=False)
    for ax, (dataset, per) in zip(axes[0], verdicts.items()):
        for k, v in enumerate(spec.variants):
            pts = [(100 * n + (k - len(spec.variants) / 2) * 0.8, m, 2 * se) for n, d, m, se, _ in per[v]["levels"] if d]
            if pts:
                xs, ms, es = zip(*pts)
                ax.errorbar(xs, ms, yerr=[e if e == e else 0 for e in es], marker="o", capsize=3, label=v,
                            lw=2 if v == "srem" else 1.2)  # fmt: skip
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(dataset)
        ax.set_xlabel("noise (% of training captions shuffled)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test rSum − {spec.baseline}'s (paired, ±2 SE)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------- command line


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(","))


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(","))


def spec_from(args) -> Spec:
    names = args.regimes.split(",") if args.regimes else list(REGIMES)
    bad = [r for r in names if r not in REGIMES]
    if bad:
        raise SystemExit(f"--regimes: unknown {bad}; choose from {', '.join(REGIMES)}")
    regimes = {r: REGIMES[r] for r in names}
    if args.seeds:
        regimes = {r: _ints(args.seeds) for r in regimes}
    spec = Spec(regimes=regimes, size=args.size, epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                table=not args.no_table and TABLE_DATASET in regimes)  # fmt: skip
    if args.noises:
        spec = replace(spec, noises=_floats(args.noises), table_noises=tuple(sorted({0.0, *_floats(args.noises)})))
    if args.seeds:
        spec = replace(spec, table_seeds=_ints(args.seeds))
    if args.methods:
        spec = replace(spec, variants=tuple(m for m in args.methods.split(",") if m != spec.baseline))
    return spec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m srem_kernels.train.ablation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("command", choices=("list", "run", "report"))
    ap.add_argument("--runs", default="results/ablation_runs", help="where the runs live (default results/ablation_runs)")
    ap.add_argument("--report", default="docs/ablation.md", help="the report (its plot beside it, .png)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes, one thread each (default 2)")
    ap.add_argument("--regimes", help=f"a subset of {','.join(REGIMES)}")
    ap.add_argument("--methods", help="variants instead of the protocol's (the baseline srem-nosce always runs)")
    ap.add_argument("--noises", help="noise levels instead of 0.4,0.6,0.8 (the scenes table adds 0)")
    ap.add_argument("--seeds", help="seeds for every regime instead of the protocol's")
    ap.add_argument("--size", default="default", help="synthetic size of both synthetic regimes (tiny for a smoke test)")
    ap.add_argument("--epochs", type=int, help="instead of the trainer's default (smoke tests)")
    ap.add_argument("--warmup-epochs", type=int, help="instead of the trainer's default (smoke tests)")
    ap.add_argument("--no-table", action="store_true", help="skip the VSE++/InfoNCE/RCL/SREM table on synthetic-scenes")
    args = ap.parse_args(argv)
    spec, runs = spec_from(args), Path(args.runs)
    command = " ".join(["python -m srem_kernels.train.ablation", *(sys.argv[1:] if argv is None else argv)])
    try:
        if args.command == "list":
            jobs = spec.jobs()
            todo = pending(spec, runs)
            for j in todo:
                print(j.dir(runs))
            print(f"{len(jobs)} runs ({len(spec.grid_jobs())} in the grid, {len(spec.table_jobs())} in the table, "
                  f"{len(spec.grid_jobs()) + len(spec.table_jobs()) - len(jobs)} shared); {len(todo)} to run")
        elif args.command == "run":
            run(spec, runs, args.jobs)
            if pending(spec, runs):
                raise SystemExit(1)
        else:
            print(report(spec, runs, Path(args.report), command))
    except OtherGrid as err:
        raise SystemExit(f"ablation {args.command}: {err}") from None


if __name__ == "__main__":
    main()
