"""The ablation's grid, runner and report (srem_kernels/train/ablation.py): the protocol's grid,
skip and resume, the decision rule by hand, and the report on a small fake result set."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import pytest

from srem_kernels.train import ablation, trainer
from srem_kernels.train.ablation import Job, Spec


def test_grid_is_the_protocols():
    spec = Spec()
    grid, table = spec.grid_jobs(), spec.table_jobs()
    assert len(grid) == 8 * 3 * (5 + 5 + 3) == 312 and len(table) == 4 * 5 * 3 == 60
    assert len(spec.jobs()) == 312 + 60 - 9  # srem on synthetic-scenes at 40/60/80 %, seeds 0-2: in both
    assert {j.seed for j in grid if j.dataset == "digits"} == {0, 1, 2}
    assert {j.noise for j in grid} == {0.4, 0.6, 0.8} and {j.method for j in grid} == {"srem-nosce", *ablation.VARIANTS}
    assert Job("digits", "srem-nosce-lh0.5", 0.4, 2).dir(ablation.Path("r")).as_posix() == "r/digits/srem-nosce-lh0.5_noise40_seed2"


def _fake_train(calls):
    def train(cfg):
        calls.append(cfg)
        out = ablation.Path(cfg.output)
        out.mkdir(parents=True, exist_ok=True)
        res = {"config": asdict(cfg.resolved()), "test": {"rsum": 100.0 + cfg.seed}}
        (out / trainer.RESULTS).write_text(json.dumps(res))
        return res

    return train


def test_runner_skips_finished_runs_and_resumes_interrupted_ones(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer, "train", _fake_train(calls))
    spec = Spec(regimes={"synthetic": (0, 1)}, noises=(0.4,), variants=("srem",), table=False, size="tiny", epochs=3)
    runs = tmp_path / "runs"
    finished, interrupted = Job("synthetic", "srem", 0.4, 0), Job("synthetic", "srem-nosce", 0.4, 1)
    finished.dir(runs).mkdir(parents=True)
    _fake_train([])(trainer.TrainConfig(dataset="synthetic", method="srem", noise=0.4, seed=0, output=str(finished.dir(runs)),
                                        synthetic_size="tiny", epochs=3))  # fmt: skip
    interrupted.dir(runs).mkdir(parents=True)
    (interrupted.dir(runs) / trainer.CHECKPOINT).write_bytes(b"an epoch's checkpoint")
    assert ablation.pending(spec, runs) == [j for j in spec.jobs() if j != finished]

    done = ablation.run(spec, runs, n_jobs=1, executor=ThreadPoolExecutor(1))
    assert {j for j, _, _ in done} == {j for j in spec.jobs() if j != finished}
    by_dir = {c.output: c for c in calls}
    assert len(calls) == 3 and str(finished.dir(runs)) not in by_dir
    assert all(c.resume for c in calls)  # the trainer resumes a checkpoint and starts afresh without one
    assert all(c.synthetic_size == "tiny" and c.epochs == 3 and not c.progress for c in calls)
    assert not (interrupted.dir(runs) / trainer.CHECKPOINT).exists()  # deleted once finished
    log = [json.loads(line) for line in (runs / ablation.WALL_LOG).read_text().splitlines()]
    assert [e["event"] for e in log] == ["start", "run", "run", "run", "end"]

    assert ablation.run(spec, runs, n_jobs=1, executor=ThreadPoolExecutor(1)) == []  # nothing left: nothing redone
    assert len(calls) == 3
    with pytest.raises(ValueError, match="--jobs must be at least 1"):
        ablation.run(spec, runs, n_jobs=0)


def test_a_failing_run_is_logged_and_the_others_go_on(tmp_path, monkeypatch):
    calls = []
    fake = _fake_train(calls)

    def train(cfg):
        if cfg.seed == 1 and cfg.method == "srem":
            raise RuntimeError("out of memory")
        return fake(cfg)

    monkeypatch.setattr(trainer, "train", train)
    spec = Spec(regimes={"synthetic": (0, 1)}, noises=(0.4,), variants=("srem",), table=False)
    done = ablation.run(spec, tmp_path, n_jobs=1, executor=ThreadPoolExecutor(1))
    assert len(done) == 3 and ablation.pending(spec, tmp_path) == [Job("synthetic", "srem", 0.4, 1)]
    log = [json.loads(line) for line in (tmp_path / ablation.WALL_LOG).read_text().splitlines()]
    assert [e for e in log if e["event"] == "error"][0]["error"] == "RuntimeError: out of memory"
    assert log[-1]["failed"] == 1


def test_two_processes_train_the_tiny_grid(tmp_path):
    """The real pool: spawned workers, one thread each, the trainer end to end."""
    spec = Spec(regimes={"synthetic": (0,)}, noises=(0.4,), variants=("srem",), table=False, size="tiny", epochs=2,
                warmup_epochs=1)  # fmt: skip
    done = ablation.run(spec, tmp_path, n_jobs=2)
    assert len(done) == 2 and all(0 <= r <= 600 for _, _, r in done)
    for j in spec.jobs():
        assert (j.dir(tmp_path) / trainer.RESULTS).exists() and not (j.dir(tmp_path) / trainer.CHECKPOINT).exists()
    assert ablation.run(spec, tmp_path, n_jobs=2) == []


def test_a_run_killed_before_its_first_checkpoint_is_run_again(tmp_path):
    """Killed after its first epoch was logged but before the checkpoint was written: the folder
    holds log.jsonl alone, and the runner trains the run afresh instead of refusing the folder."""
    job = Job("synthetic", "srem", 0.4, 0)
    job.dir(tmp_path).mkdir(parents=True)
    (job.dir(tmp_path) / trainer.LOG).write_text(json.dumps({"epoch": 0, "loss": 1.0}) + "\n")
    assert ablation.execute(job, str(tmp_path), "tiny", 2, 1)[0] == job
    assert [json.loads(line)["epoch"] for line in (job.dir(tmp_path) / trainer.LOG).read_text().splitlines()] == [0, 1]
    assert (job.dir(tmp_path) / trainer.RESULTS).exists() and not (job.dir(tmp_path) / trainer.CHECKPOINT).exists()


# ---------------------------------------------------------------- the decision rule


def test_mean_and_standard_error_by_hand():
    m, se = ablation.mean_se([3.0, 4.0, 5.0, 4.0, 4.0])
    assert m == 4.0 and se == pytest.approx((0.5**0.5) / 5**0.5)  # sample sd sqrt(2/4)


@pytest.mark.parametrize("d,k,verdict", [
    ([3.0, 4.0, 5.0, 4.0, 4.0], 5, "better"),
    ([-3.0, -4.0, -5.0, -4.0, -4.0], 5, "worse"),
    ([1.0, -1.0, 2.0, -2.0, 0.5], 5, "same"),
    ([0.5, 0.5, 0.5], 3, "better"),  # no spread: any positive mean exceeds 2 SE = 0
    ([3.0, 4.0, 5.0, 4.0], 5, "incomplete"),
])  # fmt: skip
def test_level(d, k, verdict):
    assert ablation.level(d, k) == verdict


def test_decide():
    assert ablation.decide(["better", "better", "same"]) == "passes"
    assert ablation.decide(["better", "better", "better"]) == "passes"
    assert ablation.decide(["better", "same", "same"]) == "fails"
    assert ablation.decide(["better", "better", "worse"]) == "fails"  # significantly worse somewhere
    assert ablation.decide(["better", "better", "incomplete"]) == "incomplete"
    assert ablation.decide(["worse", "worse", "same"], reverse=True) == "passes"
    assert ablation.decide(["worse", "worse", "better"], reverse=True) == "fails"


# ---------------------------------------------------------------- the report on fake results

BASE = {0: 300.0, 1: 310.0, 2: 305.0}
FAKE = {  # method -> noise -> d_s added to the baseline's rSum per seed
    "srem": {0.4: [5, 6, 7], 0.6: [4, 5, 6], 0.8: [-1, 0, 1]},  # better at two, worse at none: passes
    "srem-sce-rank": {0.4: [5, 6, 7], 0.6: [0, 1, -1], 0.8: [-5, -6, -7]},  # worse at 80 %: fails
    "srem-nohinge": {0.4: [-9, -8, -10], 0.6: [-5, -4, -6], 0.8: [1, 0, -1]},  # the hinge earns its place
    "srem-sce-margin": {0.4: [1, 2, 3], 0.6: [1, 2, 3], 0.8: [1, 2]},  # seed 2 missing at 80 %: incomplete
}


def _write_run(runs, method, noise, seed, rsum, dataset="synthetic", **settings):
    out = Job(dataset, method, noise, seed).dir(runs)
    out.mkdir(parents=True)
    cfg = {"dataset": dataset, "method": method, "noise": noise, "seed": seed, "epochs": 12, "warmup_epochs": 2,
           "synthetic_size": "default", "batch_size": 128, "lr": 1e-3, "tau": 0.05, "margin": 0.2, **settings}  # fmt: skip
    (out / trainer.RESULTS).write_text(json.dumps({"config": cfg, "best_epoch": seed,  # seeds 0, 1: inside the warm-up
                                                   "test": {"rsum": rsum, "i2t_r1": 10.0, "t2i_r1": 20.0}}))
    sel = {"sel_selected": 0.5, "sel_precision": 0.9, "sel_recall": 0.6, "hinge_selected": 0.5, "hinge_precision": 0.95,
           "hinge_recall": 0.55, "hinge_weight_mean": 0.012, "hinge_weight_precision": float("nan") if seed else 0.97}  # fmt: skip
    (out / trainer.LOG).write_text(json.dumps({"epoch": 10, **sel}) + "\n" + json.dumps({"epoch": 11, **sel}) + "\n")


def test_report_on_a_fake_result_set(tmp_path):
    runs = tmp_path / "runs"
    for n in (0.4, 0.6, 0.8):
        for s, b in BASE.items():
            _write_run(runs, "srem-nosce", n, s, b)
        for m, per in FAKE.items():
            for s, d in enumerate(per[n]):
                _write_run(runs, m, n, s, BASE[s] + d)
    spec = Spec(regimes={"synthetic": (0, 1, 2)}, variants=tuple(FAKE), table=False)
    verdicts = ablation.judge(spec, ablation.load_runs(runs, spec))["synthetic"]
    assert {v: r["decision"] for v, r in verdicts.items()} == {
        "srem": "passes", "srem-sce-rank": "fails", "srem-nohinge": "passes", "srem-sce-margin": "incomplete"}
    n, d, m, se, verdict = verdicts["srem"]["levels"][0]
    assert (n, d, m, verdict) == (0.4, [5.0, 6.0, 7.0], 6.0, "better") and se == pytest.approx(1 / 3**0.5)

    md = tmp_path / "ablation.md"
    text = ablation.report(spec, runs, md, "the command")
    assert md.read_text() == text and md.with_suffix(".png").stat().st_size > 0
    assert "- `synthetic`: **`srem`** passes; the hinge **earns its place** (`srem-nohinge` is worse); incomplete: `srem-sce-margin`." in text
    assert "| srem | +6.0 ± 0.6 ▲ | +5.0 ± 0.6 ▲ | +0.0 ± 0.6 · | passes |" in text
    assert "| srem-sce-rank | +6.0 ± 0.6 ▲ | +0.0 ± 0.6 · | -6.0 ± 0.6 ▼ | fails |" in text
    assert "| srem-nohinge | -9.0 ± 0.6 ▼ | -5.0 ± 0.6 ▼ | +0.0 ± 0.6 · | hinge earns its place |" in text
    assert "| srem-sce-margin | +2.0 ± 0.6 ▲ | +2.0 ± 0.6 ▲ | +1.5 ± 0.5 ? | incomplete |" in text  # better twice, but a run is missing
    # selection per variant: the seeds' last epoch; a nan share (nothing weighted) is left out
    assert "| srem | 40% | 90.0 ± 0.0 | 60.0 ± 0.0 | 95.0 ± 0.0 | 55.0 ± 0.0 | 97.0 ± 0.0 | 0.012 ± 0.000 |" in text
    assert "`the command`" in text
    assert "![Test rSum minus srem-nosce's, paired by seed, ±2 SE, per regime](ablation.png)" in text
    # best epochs inside the warm-up (epochs 0-1): seeds 0 and 1 of every cell; seed 2 missing for one cell
    assert "| srem-nosce | 2/3 | 2/3 | 2/3 |" in text and "| srem-sce-margin | 2/3 | 2/3 | 2/2 |" in text


def test_report_on_a_partial_grid(tmp_path):
    """A regime of the spec without any finished run yet: its tables say incomplete, the rest is reported."""
    runs = tmp_path / "runs"
    for s, b in BASE.items():
        _write_run(runs, "srem-nosce", 0.4, s, b)
        _write_run(runs, "srem", 0.4, s, b + 5 + s)
    spec = Spec(regimes={"synthetic": (0, 1, 2), "digits": (0, 1, 2)}, noises=(0.4, 0.6), variants=("srem",), table=False)
    text = ablation.report(spec, runs, tmp_path / "ablation.md", "the command")
    assert "- `synthetic`: no variant passes; incomplete: `srem`." in text and "- `digits`: no variant passes; incomplete: `srem`." in text
    assert "| srem | +6.0 ± 0.6 ▲ | – | incomplete |" in text and "| srem | – | – | incomplete |" in text
    assert "warm-up (epochs 0–1)" in text and "| srem-nosce | – | – |" in text


def test_report_says_when_removing_the_hinge_is_better(tmp_path):
    runs = tmp_path / "runs"
    for n, per in {0.4: [5, 6, 7], 0.6: [4, 5, 6], 0.8: [-1, 0, 1]}.items():
        for s, b in BASE.items():
            _write_run(runs, "srem-nosce", n, s, b)
            _write_run(runs, "srem-nohinge", n, s, b + per[s])
    spec = Spec(regimes={"synthetic": (0, 1, 2)}, variants=("srem-nohinge",), table=False)
    text = ablation.report(spec, runs, tmp_path / "ablation.md", "the command")
    assert ("- `synthetic`: no variant passes; the hinge is not shown to earn its place — removing it is better at "
            "2 of 3 noise levels and worse at none") in text


@pytest.mark.parametrize("dataset, settings, differ", [
    ("synthetic-scenes", {"synthetic_size": "tiny", "epochs": 2}, "epochs=2, synthetic_size='tiny', not this grid's epochs=12, synthetic_size='default'"),
    ("digits", {"warmup_epochs": 1, "synthetic_size": "tiny"}, "warmup_epochs=1, not this grid's warmup_epochs=2"),
])  # fmt: skip
def test_a_run_of_another_grids_settings_is_refused_naming_its_folder(tmp_path, capsys, dataset, settings, differ):
    """A smoke run (--size tiny --epochs 2) left under the default --runs: its folder's name is a
    full run's, so the runner must not skip it as done nor the report judge it as full."""
    _write_run(tmp_path, "srem", 0.4, 0, 300.0, dataset=dataset, **settings)
    folder = Job(dataset, "srem", 0.4, 0).dir(tmp_path)
    spec = Spec(regimes={dataset: (0,)}, noises=(0.4,), variants=("srem",), table=False)
    for call in (lambda: ablation.pending(spec, tmp_path), lambda: ablation.load_runs(tmp_path, spec)):
        with pytest.raises(ablation.OtherGrid, match=f"^{re.escape(f'{folder}: a run with {differ}')} "):
            call()
    with pytest.raises(SystemExit, match=re.escape(f"ablation list: {folder}: a run with {differ}")):
        ablation.main(["list", "--runs", str(tmp_path), "--regimes", dataset])
    # the grid it belongs to accepts it
    same = Spec(regimes={dataset: (0,)}, noises=(0.4,), variants=("srem",), table=False,
                size=settings.get("synthetic_size", "default"), epochs=settings.get("epochs"),
                warmup_epochs=settings.get("warmup_epochs"))  # fmt: skip
    assert Job(dataset, "srem", 0.4, 0) not in ablation.pending(same, tmp_path) and len(ablation.load_runs(tmp_path, same)) == 1


def test_command_line_lists_and_narrows(tmp_path, capsys):
    ablation.main(["list", "--runs", str(tmp_path), "--regimes", "digits", "--noises", "0.4", "--seeds", "0"])
    out = capsys.readouterr().out
    assert out.strip().endswith("8 runs (8 in the grid, 0 in the table, 0 shared); 8 to run")
    with pytest.raises(SystemExit, match="--regimes: unknown"):
        ablation.main(["list", "--regimes", "imagenet"])


def test_wall_time_counts_an_invocation_killed_before_its_end(tmp_path):
    lines = [
        {"event": "start", "jobs": 2, "time": "2026-12-01T10:00:00+00:00"},
        {"event": "run", "seconds": 1000.0, "time": "2026-12-01T10:30:00+00:00"},  # then killed
        {"event": "start", "jobs": 2, "time": "2026-12-01T12:00:00+00:00"},
        {"event": "run", "seconds": 800.0, "time": "2026-12-01T12:15:00+00:00"},
        {"event": "end", "time": "2026-12-01T12:18:00+00:00"},
    ]
    (tmp_path / ablation.WALL_LOG).write_text("".join(json.dumps(e) + "\n" for e in lines))
    assert ablation._wall(tmp_path) == "0.80 h wall over 2 runner invocation(s) with --jobs 2; 0.50 h of run time summed over runs"
