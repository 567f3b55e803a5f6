"""Tables and plots from the benchmark logs: rewrites bench/RESULTS.md and bench/results/plots/;
hand-kept sections (bench/results/*.section.md) are appended as they are.

    python -m bench.report [--results bench/results]

For every device log (bench/results/<device>.csv) the latest run is shown: forward+backward time
per contender and batch size with its ratio to the bare matmuls, peak memory, and plots of time,
memory and ratio against B. Train-step logs (<device>.train-step.csv) get a table of their own.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"


def _latest_run(rows: list[dict]) -> list[dict]:
    last = max(r["run"] for r in rows)
    return [r for r in rows if r["run"] == last]


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return _latest_run(rows) if rows and "run" in rows[0] else []


def _is_sweep(path: Path) -> bool:
    """A log in bench/run.py's columns (the scoring log, say, has a run column but no contenders)."""
    rows = _read(path)
    return bool(rows) and {"contender", "phase"} <= rows[0].keys()


def _cell(r: dict) -> str:
    if r["status"] != "ok":
        return "OOM" if r["status"].startswith("OOM") else "—"
    ratio = f" ({float(r['ratio_to_floor']):.3g}×)" if r["ratio_to_floor"] and not r["contender"].startswith("floor") else ""
    return f"{float(r['median_ms']):.4g}{ratio}"


def _table(rows: list[dict], value) -> list[str]:
    sizes = sorted({int(r["B"]) for r in rows})
    names = list(dict.fromkeys(r["contender"] for r in rows))
    by = {(r["contender"], int(r["B"])): r for r in rows}
    out = ["| contender | " + " | ".join(f"B={b}" for b in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for n in names:
        out.append(f"| `{n}` | " + " | ".join(value(by[(n, b)]) if (n, b) in by else "" for b in sizes) + " |")
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    series = defaultdict(list)
    for r in rows:
        if r["status"] == "ok":
            series[r["contender"]].append(r)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (name, rs) in enumerate(series.items()):
        rs.sort(key=lambda r: int(r["B"]))
        B = [int(r["B"]) for r in rs]
        # one colour per contender in every panel (the ratio panel leaves the floor out)
        style = dict(marker="o", label=name, color=colors[n % len(colors)],
                     linestyle="--" if name.startswith(("floor", "infonce")) else "-")  # fmt: skip
        axes[0].plot(B, [float(r["median_ms"]) for r in rs], **style)
        axes[1].plot(B, [max(float(r["peak_mb"]), 0.1) for r in rs], **style)
        if not name.startswith("floor"):
            axes[2].plot(B, [float(r["ratio_to_floor"]) for r in rs], **style)
    for ax, ylabel in zip(axes, ("forward+backward time (ms)", "peak memory above inputs (MB)", "time / bare matmuls")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load(rows: list[dict]) -> str:
    """The 1-minute load average during the run, where the log records it."""
    loads = [float(r[k]) for r in rows for k in ("load_before", "load_after") if r.get(k)]
    return f" Load average {min(loads):.2f}–{max(loads):.2f} (1 min)." if loads else ""


def device_section(log: Path, plots: Path) -> list[str]:
    rows = _read(log)
    if not rows:
        return []
    r0 = rows[0]
    lines = [
        f"## {r0['device']}",
        "",
        f"Run {r0['run']} ({r0['date']}), commit `{r0['commit']}`, torch {r0['torch']}, triton {r0['triton'] or '—'}, "
        f"{r0['threads']} CPU threads. Command: `{r0['command']}`." + _load(rows),
        "",
    ]
    groups = defaultdict(list)
    for r in rows:
        if r["phase"] == "fwd+bwd":
            groups[(r["dtype"], r["D"])].append(r)
    for (dtype, D), rs in groups.items():
        png = plots / f"{log.stem}-{dtype}-D{D}.png"
        plot(rs, png, f"{r0['device']} — {dtype}, D={D}, forward+backward (commit {r0['commit']}, {r0['date']})")
        lines += [f"### {dtype}, D={D}: forward+backward, median ms (ratio to the bare matmuls)", ""]
        lines += _table(rs, _cell)
        lines += ["", "Peak memory above the inputs, MB:", ""]
        lines += _table(rs, lambda r: f"{float(r['peak_mb']):.0f}" if r["status"] == "ok" else _cell(r))
        lines += ["", f"![{dtype} D={D}](results/plots/{png.name})", ""]
    return lines


def _heading(title: str, r0: dict) -> list[str]:
    """A section's title and the run it shows: date, commit and the command that made it."""
    return [f"### {title}, {r0['device']}", "",
            f"Run {r0['run']} ({r0['date']}), commit `{r0['commit']}`. Command: `{r0['command']}`."]  # fmt: skip


def _log_section(log: Path, title: str, intro, header: str, row) -> list[str]:
    """A section of the latest run in `log`: its heading, intro(rows) lines, a table under
    `header` (its cells, "|"-separated) with one row(r) line per logged row."""
    rows = _read(log)
    if not rows:
        return []
    cells = header.split(" | ")
    return (_heading(title, rows[0]) + [*intro(rows), "", f"| {header} |", "|" + "---|" * len(cells)]
            + [f"| {row(r)} |" for r in rows] + [""])  # fmt: skip


def train_step_section(log: Path) -> list[str]:
    def row(r):
        ok = r["status"] == "ok"
        ms = f"{float(r['median_ms']):.4g}" if ok else r["status"]
        mb = f"{float(r['peak_mb']):.0f}" if ok else ""
        return f"`{r['contender']}` | {r['B']} | {r['D']} | {ms} | {mb}"

    return _log_section(log, "End to end: one training step", lambda rows: [],
                  "loss | B | D | step ms (median) | peak MB above the model", row)


def fixed_cost_section(log: Path) -> list[str]:
    """bench/fixed_cost.py's latest run: what a call launches and reads, and its time at small B."""

    def row(r):
        t = f"{r['median_ms']} ({float(r['ratio_to_floor']):.3g}×)" if r.get("median_ms") else "—"
        return (f"`{r['backend']}` | {r['B']} | {r['D']} | {r['config']} | {r['aten_ops']} | {r['host_reads']} "
                f"| {r['h2d_copies']} | {r['triton_launches']} | {t}")  # fmt: skip

    return _log_section(log, "Fixed cost per call: launches, host reads and time at small B", lambda rows: [
        f"{rows[0]['threads']} threads.{_load(rows)} Per forward+backward of `srem_kernels.loss` (fp32): ATen operators that launch work (views and bare",
        "allocations not counted), host reads (`_local_scalar_dense`), host-to-device copies (tensors built from",
        "Python data count), Triton launches (interpreted ones counted, not timed); time against the three bare",
        "matmuls of the same size in the same run (interleaved, medians).",
    ], "backend | B | D | options | ATen ops | host reads | H2D | Triton launches | ms (× matmuls)", row)  # fmt: skip


def tau_overhead_section(log: Path) -> list[str]:
    """bench/tau_overhead.py's latest run: a tensor tau against a float tau."""
    return _log_section(log, "Tensor tau: a learnable temperature against a float tau", lambda rows: [
        f"{rows[0]['threads']} threads.{_load(rows)} One forward+backward of `srem_kernels.loss` (fp32), tau given",
        "as a float, as a 0-d tensor, and as a 0-d tensor that requires grad (dL/dtau reduced in the dS pass);",
        "interleaved in one run, medians (p20–p80).",
    ], "backend | B | D | tau | ms (p20–p80) | × float tau | bare matmuls ms", lambda r: (
        f"`{r['backend']}` | {r['B']} | {r['D']} | {r['tau']} | {r['median_ms']} ({r['p20_ms']}–{r['p80_ms']}) "
        f"| {float(r['ratio_to_float']):.3f} | {r['floor_ms']}"))  # fmt: skip


def open_clip_section(log: Path) -> list[str]:
    """bench/open_clip_step.py's latest run: SREMClipLoss beside open_clip's ClipLoss."""
    return _log_section(log, "open_clip: SREMClipLoss beside ClipLoss", lambda rows: [
        f"{rows[0]['threads']} threads, torch {rows[0]['torch']} (open_clip's venv).{_load(rows)} fp32; interleaved in one",
        "run, medians (p20–p80). The loss alone:",
        "forward+backward from features and logit_scale as open_clip calls it; the step: a small open_clip CLIP",
        "model's forward, loss, backward and AdamW step.",
    ], "what | B | D | loss | ms (p20–p80) | × ClipLoss", lambda r: (
        f"{r['what']} | {r['B']} | {r['D']} | `{r['loss']}` | {r['median_ms']} ({r['p20_ms']}–{r['p80_ms']}) "
        f"| {float(r['ratio_to_clip']):.2f}"))  # fmt: skip


def breakdown_section(log: Path) -> list[str]:
    """bench/breakdown.py's latest run: each phase of one cpu call, per batch size."""
    rows = _read(log)
    if not rows:
        return []
    sizes = sorted({int(r["B"]) for r in rows})
    by = {(r["phase"], int(r["B"])): r for r in rows}
    lines = _heading("Where the time goes: the phases of one cpu call", rows[0]) + [
        f"{rows[0]['threads']} threads, D={rows[0]['D']}, fp32, forward+backward.{_load(rows)} Each phase timed on its own,",
        "interleaved, medians: ms (share of the whole call; ns per element of S for the B×B passes). The GMM",
        "runs inside the glue forward and an OpenMP region's start inside every kernel (shown for scale);",
        "\"rest\" is the whole call (check_finite=False) minus its phases: Python, autograd, argument handling;",
        "the two rows before the whole call time the same work with layers taken away (kernels and glue",
        "called in turn from Python; then through the backend's run and its autograd Function), which",
        "splits the rest.",
        "",
        "| phase | " + " | ".join(f"B={b}" for b in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    for phase in dict.fromkeys(r["phase"] for r in rows):
        cells = []
        for b in sizes:
            r = by.get((phase, b))
            if r is None:
                cells.append("")
                continue
            extra = [f"{100 * float(r['share']):.0f} %"] if r.get("share") and phase != "whole call" else []
            extra += [f"{float(r['ns_per_element']):.3g} ns/el"] if r.get("ns_per_element") else []
            cells.append(f"{float(r['median_ms']):.3g}" + (f" ({', '.join(extra)})" if extra else ""))
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return lines + [""]


def sgraf_section(log: Path) -> list[str]:
    """bench/sgraf.py's rows: one run per command (grid and paper dimensions, training steps and the
    network's evaluation), so every run's rows are shown, each with its run and command."""
    with log.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return []
    lines = [f"### SGRAF's networks: training step and evaluation cost, {rows[0]['device']}", "",
             f"`bench/sgraf.py`, {rows[0]['threads']} thread{'' if rows[0]['threads'] == '1' else 's'}, torch {rows[0]['torch']}; each row from the run",
             "named beside it (median, p20–p80 ms; `grid`: the SGR grid's scaled-down dimensions, `paper`: the",
             "literature's). docs/training.md reads them: a B=128 step of `vse` and `sgr`, and the 1K evaluation's",
             "cost extrapolated from the 10 × 1000 slices.", "",
             "| what | model | dims | shape | ms (p20–p80) | peak MB | run (commit): command |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['what']} | `{r['model']}` | {r['dims']} | {r['shape']} | {r['median_ms']} "
                     f"({r['p20_ms']}–{r['p80_ms']}) | {r['peak_mb'] or '–'} | {r['run']} (`{r['commit']}`): "
                     f"`{r['command']}` |")  # fmt: skip
    return lines + [""]


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--output", type=Path, default=RESULTS_MD)
    args = ap.parse_args(argv)
    # sweep logs of bench/run.py only (other scripts keep their own CSVs beside them)
    logs = sorted(p for p in args.results.glob("*.csv")
                  if not p.name.endswith((".train-step.csv", ".fixed-cost.csv", ".tau-overhead.csv", ".open-clip.csv",
                                       ".breakdown.csv", ".sgraf.csv"))
                  and _is_sweep(p))  # fmt: skip
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m bench.report` from the logs in `bench/results/`; reproduce with `make bench`",
        "(`python -m bench --quick` on CPU) or, on a GPU machine, `python -m bench` (docs/benchmarks.md).",
        "Times are medians over interleaved rounds after a warm-up; the ratio is to the three bare",
        "matmuls (S = I·Tᵀ, G·T, Gᵀ·I) of the same dtype in the same run. `—`: not run at that size",
        "(see the log's status column: skipped for memory, error).",
        "",
    ]
    if not any(not p.stem.startswith("cpu-") for p in logs):  # CPU logs are named cpu-<model>
        lines += ["## GPU", "", "Awaits a run on a GPU machine: `make gpu-check` (docs/gpu_check.md).", ""]
    for log in logs:
        lines += device_section(log, args.results / "plots")
        step = log.with_name(f"{log.stem}.train-step.csv")
        if step.exists():
            lines += train_step_section(step)
        fixed = log.with_name(f"{log.stem}.fixed-cost.csv")
        if fixed.exists():
            lines += fixed_cost_section(fixed)
        tau = log.with_name(f"{log.stem}.tau-overhead.csv")
        if tau.exists():
            lines += tau_overhead_section(tau)
        clip = log.with_name(f"{log.stem}.open-clip.csv")
        if clip.exists():
            lines += open_clip_section(clip)
        parts = log.with_name(f"{log.stem}.breakdown.csv")
        if parts.exists():
            lines += breakdown_section(parts)
        sgraf = log.with_name(f"{log.stem}.sgraf.csv")
        if sgraf.exists():
            lines += sgraf_section(sgraf)
    # sections measured by other scripts and written by hand from their output (the Triton
    # counts and compile table: bench/triton_tiles.py, scripts/triton_aot_check.py --markdown)
    for part in sorted(args.results.glob("*.section.md")):
        lines += [part.read_text().rstrip(), ""]
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()
