"""Results as JSON (one object per suite run), a markdown table on stdout, and PNG
charts (matplotlib, imported only when ``--plot`` is given); :func:`publish` is the end
of every suite run, :func:`progress` its status lines on stderr.

Every figure is a ratio against a baseline measured in the same run; a result with no
valid run has ``value`` None and ``valid`` False and is never charted.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from perf.stats import ratio


@dataclass(frozen=True, slots=True)
class Result:
    """One figure: a metric of one path, its baseline and every run behind it."""

    metric: str
    path: str
    unit: str
    value: float | None
    baseline: str | None = None
    baseline_value: float | None = None
    runs: Sequence[dict[str, Any]] = ()
    offered_pps: int | None = None
    pkts_per_wakeup: float | None = None
    valid: bool = True
    note: str = ""
    minimum: float | None = None
    maximum: float | None = None
    lower_is_better: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.baseline_value)

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["runs"] = list(self.runs)
        d["ratio"] = self.ratio
        return d


def host_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "kernel": platform.release(), "cores": os.cpu_count() or 0}


def document(suite: str, results: Sequence[Result], **meta: Any) -> dict[str, Any]:
    return {
        "suite": suite,
        "host": host_info(),
        **meta,
        "results": [r.as_json() for r in results],
    }


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def progress(msg: str) -> None:
    """One status line on stderr (stdout is the table)."""
    print(f"# {msg}", file=sys.stderr, flush=True)


def publish(
    suite: str,
    results: Sequence[Result],
    json_path: Path,
    *,
    started: float,
    summary: str = "",
    plot_dir: Path | None = None,
    **meta: Any,
) -> None:
    """Write the JSON document (``meta`` after the wall time since ``started``, a
    ``time.monotonic()``), print the table, ``summary`` and where the JSON went, and
    draw the charts when ``plot_dir`` is given."""
    wall = time.monotonic() - started
    write_json(document(suite, results, wall_seconds=round(wall, 1), **meta), json_path)
    print(markdown(results))
    if summary:
        print(summary)
    print(f"wall time {wall:.0f} s; JSON in {json_path}")
    if plot_dir is not None:
        for png in plot(results, plot_dir, suite):
            print(f"chart {png}")


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if abs(value) >= 10 or digits == 0 else f"{value:.{digits}f}"


def markdown(results: Sequence[Result]) -> str:
    head = (
        "| metric | path | value | min..max | unit | baseline | ratio | offered pps "
        "| pkts/wake | valid runs | note |\n"
        "|---|---|---:|---|---|---|---:|---:|---:|---|---|\n"
    )
    rows = []
    for r in results:
        digits = 2 if (r.value is not None and abs(r.value) < 100) else 0
        spread = (
            f"{_fmt(r.minimum, digits)}..{_fmt(r.maximum, digits)}" if r.minimum is not None else ""
        )
        valid_runs = sum(1 for run in r.runs if run.get("valid", True))
        rows.append(
            f"| {r.metric} | {r.path} | {_fmt(r.value, digits)} | {spread} | {r.unit} "
            f"| {r.baseline or '-'} | {_fmt(r.ratio, 2)} | {_fmt(r.offered_pps)} "
            f"| {_fmt(r.pkts_per_wakeup, 1)} | {valid_runs}/{len(r.runs)} | {r.note} |"
        )
    return head + "\n".join(rows) + "\n"


def plot(results: Sequence[Result], directory: Path, suite: str) -> list[Path]:
    """One bar chart per metric (value per path, min..max as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    by_metric: dict[str, list[Result]] = {}
    for r in results:
        if r.value is not None:
            by_metric.setdefault(r.metric, []).append(r)
    written = []
    for metric, rows in by_metric.items():
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 2), 3.5))
        labels = [r.path for r in rows]
        values = [r.value or 0.0 for r in rows]
        lows = [
            (r.value or 0.0) - (r.minimum if r.minimum is not None else r.value or 0.0)
            for r in rows
        ]
        highs = [
            (r.maximum if r.maximum is not None else r.value or 0.0) - (r.value or 0.0)
            for r in rows
        ]
        ax.bar(labels, values, yerr=[lows, highs], capsize=4, color="#4878a8")
        ax.set_ylabel(rows[0].unit)
        ax.set_title(f"{suite}: {metric}")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        for i, r in enumerate(rows):
            if r.ratio is not None:
                ax.annotate(f"{r.ratio:.2f}x", (i, values[i]), ha="center", va="bottom", fontsize=7)
        fig.tight_layout()
        out = directory / f"{suite}-{metric.replace('/', '_')}.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written
