"""The GPU check's bookkeeping: deadlines on one wall clock, result rows appended to
$OUT/results.csv as they come (so a killed tier leaves what it measured), and the closing table.

Every process of the check (the driver and its workers) reads the same clock, time.time(), so a
deadline crosses a process boundary as one number (--deadline).
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

# worst first: a tier's status is the worst of its rows'
STATUSES = ("ERROR", "FAIL", "PASS", "INFO", "SKIP")
MAX_LISTED_FAILURES = 15


@dataclass
class Row:
    tier: str
    check: str  # "<subject> <what>": the table counts rows per subject (the first word)
    status: str  # one of STATUSES
    seconds: float = 0.0
    value: str = ""
    detail: str = ""
    show: bool = False  # listed in the table on its own (measurements), not only counted

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}; got {self.status!r}")


FIELDS = tuple(f.name for f in fields(Row))


class Results:
    """$OUT/results.csv, appended row by row and flushed (workers write to it too, one at a time)."""

    def __init__(self, out: Path):
        self.path = Path(out) / "results.csv"

    def add(self, row: Row) -> Row:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                w.writeheader()
            w.writerow(asdict(row) | {"seconds": f"{row.seconds:.1f}", "show": "1" if row.show else ""})
        print(f"[{row.tier}] {row.status:<5} {row.check}  {row.value}  {row.detail}"[:300], flush=True)
        return row

    def rows(self) -> list[Row]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            return [Row(**(r | {"seconds": float(r["seconds"] or 0), "show": r["show"] == "1"})) for r in csv.DictReader(f)]


class Deadline:
    """An absolute time on time.time()'s clock."""

    def __init__(self, at: float):
        self.at = at

    def left(self) -> float:
        return self.at - time.time()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds

    def share(self, weights: int | Sequence[float]) -> "Deadline":
        """The first share of the time left split in proportion to `weights` (this part's, then
        each later part's; an int n: n equal parts). What a part leaves unused goes to the next."""
        w = [1.0] * max(weights, 1) if isinstance(weights, int) else list(weights)
        return Deadline(time.time() + max(self.left(), 0.0) * w[0] / sum(w))


def skipped(tier: str, check: str, need_s: float, left_s: float) -> Row:
    return Row(tier, check, "SKIP", detail=f"skipped (budget): needs ~{need_s:.0f} s, {max(left_s, 0):.0f} s left")


def worst(statuses) -> str:
    found = list(statuses)
    return min(found, key=STATUSES.index) if found else "SKIP"


def worker_args(description: str, argv=None, extra=None) -> argparse.Namespace:
    """The arguments every tier worker takes (the driver passes them)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, required=True, help="the check's output folder ($OUT)")
    ap.add_argument("--deadline", type=float, required=True, help="stop starting work after this time.time()")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (Triton's interpreter)")
    if extra:
        extra(ap)
    return ap.parse_args(argv)


def table(rows: list[Row], header: str) -> str:
    """Per tier: its status and time, then per subject the count of each status; then every
    failure (up to MAX_LISTED_FAILURES) and every row marked `show`."""
    lines = [f"== {header} ==", f"{'tier':<12} {'status':<6} {'s':>6}  summary"]
    tiers = list(dict.fromkeys(r.tier for r in rows))
    for tier in tiers:
        own = [r for r in rows if r.tier == tier and r.check != "tier"]
        head = [r for r in rows if r.tier == tier and r.check == "tier"]
        counts: dict[str, dict[str, int]] = {}
        for r in own:
            c = counts.setdefault(r.check.split(" ")[0], {})
            c[r.status] = c.get(r.status, 0) + 1
        summary = "; ".join(f"{s}: " + " ".join(f"{n} {k}" for k, n in sorted(c.items(), key=lambda kv: STATUSES.index(kv[0])))
                            for s, c in counts.items())  # fmt: skip
        status = head[-1].status if head else worst(r.status for r in own)
        seconds = head[-1].seconds if head else sum(r.seconds for r in own)
        detail = head[-1].detail if head and head[-1].detail else ""
        lines.append(f"{tier:<12} {status:<6} {seconds:>6.0f}  {summary or detail}" + (f" ({detail})" if summary and detail else ""))
    bad = [r for r in rows if r.status in ("ERROR", "FAIL") and r.check != "tier"]
    if bad:
        lines.append("-- failures --")
        lines += [f"{r.tier:<12} {r.status:<6} {r.check}: {r.detail}"[:250] for r in bad[:MAX_LISTED_FAILURES]]
        if len(bad) > MAX_LISTED_FAILURES:
            lines.append(f"... {len(bad) - MAX_LISTED_FAILURES} more in results.csv")
    shown = [r for r in rows if r.show]
    if shown:
        lines.append("-- measurements --")
        lines += [f"{r.tier:<12} {r.check}: {r.value}" + (f"  [{r.detail}]" if r.detail else "") for r in shown]
    return "\n".join(lines)
