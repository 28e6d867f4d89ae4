"""``stune report RUN_DIR``: what a sweep found, as a terminal table, PNG plots and one offline
HTML page.

Everything is read from the run directory as it is on disk, so a finished sweep, one still
running and one that was interrupted all report (``trials.csv``, each trial's ``result.json``,
``study.db``, ``sweep.json``, ``summary.json`` when the sweep has ended). Local and remote
(``s3://``...) run dirs alike: files are read through ``pyarrow.fs``.

Plots are drawn with ``optuna.visualization.matplotlib`` (optimization history, hyperparameter
importances, parallel coordinates) and matplotlib (spearman by loss, learning curves, time per
trial). A plot that cannot be drawn yet (say, one finished trial) becomes a PNG that says why,
so the report always has the same files. The HTML embeds the PNGs (base64) and uses no
script, font or stylesheet from the network: it opens from disk, offline, alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from trainers.errors import StuneError
from tune.progress import describe_counts, signed_delta
from tune.progress import finite_number as _number
from tune.rundir import SUMMARY, SWEEP, TRIALS, RunDir
from tune.trainable import OBJECTIVE

log = logging.getLogger("stune.report")

# name -> title; the order is the report's order.
PLOTS = {
    "optimization_history": "Optimization history (best so far vs trials)",
    "param_importances": "Hyperparameter importances",
    "parallel_coordinate": "Parallel coordinates",
    "spearman_by_loss": f"Eval {OBJECTIVE} by loss",
    "learning_curves": f"Learning curves ({OBJECTIVE} vs step) of the top trials",
    "trial_times": "Time spent per trial",
}
KEY_PLOTS = ("optimization_history", "spearman_by_loss", "learning_curves", "param_importances")  # model card
REPORT_HTML = "report.html"
OVERVIEW = "overview.png"  # every plot on one page (the README's picture of a report)
TOP_CURVES = 5
STATUS_COLORS = {"completed": "#2b8a3e", "stopped_early": "#e8a33d", "out_of_time": "#9c36b5", "errored": "#c92a2a",
                 "running": "#1c7ed6", "pending": "#868e96"}




def _not_params() -> set[str]:
    """trials.csv columns that are not hyperparameters (``loss`` is one, shown apart)."""
    from tune.recorder import FIXED_COLUMNS, RESULT_COLUMNS

    return (set(FIXED_COLUMNS) | set(RESULT_COLUMNS)) - {"loss"}


class ReportError(StuneError):
    pass


@dataclass
class RunData:
    """A snapshot of a run directory, as read at one moment."""

    run_dir: RunDir
    sweep: dict[str, Any]
    summary: dict[str, Any] | None
    trials: list[dict[str, Any]]  # trials.csv rows, numbers as numbers, "" as None
    curves: dict[str, list[dict[str, Any]]]  # trial_id -> reported results, in order
    study: Any | None  # an in-memory optuna.Study copied from study.db (None if absent)
    seeded: int = 0  # trials of another sweep the study was warm-started with (not plotted)
    read_at: float = field(default_factory=time.time)

    @property
    def baseline(self) -> float | None:
        return (self.sweep.get("baseline") or {}).get(OBJECTIVE)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in STATUS_COLORS}
        for t in self.trials:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        return counts

    def scored(self) -> list[dict[str, Any]]:
        return sorted((t for t in self.trials if _number(t.get(OBJECTIVE)) is not None), key=lambda t: t[OBJECTIVE], reverse=True)

    def params(self) -> list[str]:
        """Hyperparameter columns of trials.csv (loss first)."""
        seen: list[str] = []
        not_params = _not_params()
        for t in self.trials:
            for k in t:
                if k not in seen and k not in not_params:
                    seen.append(k)
        return sorted(seen)

    def state(self) -> str:
        if self.finished:
            return "finished"
        if any(t["status"] in ("running", "pending") for t in self.trials):
            return "running or interrupted (no summary.json yet)"
        return "not finished (no summary.json yet)"


# -- reading


def load(uri: str) -> RunData:
    run_dir = RunDir.open(uri)
    if not run_dir.exists(SWEEP):
        raise ReportError(f"{uri} {run_dir.why_not_a_sweep()}; pass the RUN_DIR of a 'stune sweep'")
    sweep = run_dir.read_json(SWEEP)
    summary = _read_json(run_dir, SUMMARY)
    trials = [_typed(row) for row in run_dir.read_csv(TRIALS)] if run_dir.exists(TRIALS) else []
    curves = run_dir.trial_results()
    study, seeded = _read_study(run_dir, trials)
    for t in trials:  # a running or interrupted trial has no seconds yet: Ray's own clock
        if t.get("seconds") is None and curves.get(t["trial_id"]):
            t["seconds"] = _number(curves[t["trial_id"]][-1].get("time_total_s"))
    return RunData(run_dir, sweep, summary, trials, curves, study, seeded)


def _read_json(run_dir: RunDir, name: str) -> Any | None:
    try:
        return run_dir.read_json(name) if run_dir.exists(name) else None
    except (OSError, ValueError):  # being rewritten right now: the next read will see it
        return None


def _typed(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or value == "":
            out[key] = None
        elif key in ("trial_id", "status", "loss", "node", "error"):
            out[key] = value
        else:
            number = _number(value)
            out[key] = value if number is None else (int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number)
    return out


def _read_study(run_dir: RunDir, rows: list[dict[str, Any]] = ()):
    """The sweep's Optuna study copied into memory (so the sweep may keep writing study.db), and
    the number of warm-start trials left out of it. Trials still running (or cut off by an
    interruption) count with their best score so far, from their trials.csv row."""
    import optuna

    from tune.study import WARM_START_ATTR, StudyError, load_study, local_copy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with local_copy(run_dir) as path:
        if path is None:
            return None, 0
        try:
            stored = load_study(path, run_dir.name)
        except (StudyError, Exception) as exc:  # a damaged or locked file: report without it
            log.warning("could not read %s: %s", path, exc)
            return None, 0
        trials = stored.get_trials(deepcopy=True)
    study = optuna.create_study(direction="maximize", study_name=run_dir.name)
    seeded = 0
    scored = {row.get("trial_id"): row for row in rows if row.get(OBJECTIVE) is not None}
    for trial in trials:
        if WARM_START_ATTR in trial.user_attrs:
            seeded += 1
            continue
        if trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None and math.isfinite(trial.value):
            study.add_trial(trial)
        elif trial.state == optuna.trial.TrialState.RUNNING:
            row = scored.get(trial.user_attrs.get("trial_id")) or _row_of(trial.params, rows)  # no id before 2026-12-07
            if row is not None:
                study.add_trial(optuna.trial.create_trial(
                    params=trial.params, distributions=trial.distributions, value=row[OBJECTIVE],
                    user_attrs={**trial.user_attrs, "running": True},
                ))
    return study, seeded


def _row_of(params: dict[str, Any], rows) -> dict[str, Any] | None:
    """The scored trials.csv row whose hyperparameters are these Optuna params
    (``TripletLoss.margin`` is the ``margin`` column)."""

    def same(a, b) -> bool:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        return str(a) == str(b)

    for row in rows:
        if row.get(OBJECTIVE) is None:
            continue
        if all(same(value, row.get(key.split(".", 1)[1] if "." in key else key)) for key, value in params.items()):
            return row
    return None


# -- plots


def _pyplot():
    import matplotlib

    if "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def _placeholder(title: str, why: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True, color="#555555")
    return _png(fig)


def _baseline_line(ax, data: RunData, horizontal: bool = True) -> None:
    if data.baseline is None:
        return
    draw = ax.axhline if horizontal else ax.axvline
    draw(data.baseline, color="#868e96", linestyle="--", linewidth=1, label=f"base model {data.baseline:.4f}")


class NotYet(Exception):
    """A plot that the run cannot show yet; the message says why."""


def _optuna_study(data: RunData, need: int):
    if data.study is None:
        raise NotYet("no study.db in the run dir (a sweep from before study recording)")
    n = len(data.study.trials)
    if n < need:
        raise NotYet(f"needs {need} finished trials in study.db; {n} so far")
    return data.study


def short_loss(name: str) -> str:
    """``MultipleNegativesRankingLoss`` -> ``MNR``, ``TripletLoss`` -> ``Triplet``: axis labels."""
    name = name[:-4] if name.endswith("Loss") and len(name) > 4 else name
    return "".join(c for c in name if c.isupper()) if len(name) > 16 else name


_SHORT_PARAMS = {"per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum"}


def short_param(name: str) -> str:
    if "." in name:
        owner, rest = name.split(".", 1)
        return f"{short_loss(owner)}.{rest}"
    return _SHORT_PARAMS.get(name, name)


def _short_study(study):
    """A copy of the study with short parameter names and loss values, for plots whose axes
    would otherwise overlap."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    short = optuna.create_study(direction="maximize")
    for trial in study.trials:
        params, distributions = {}, {}
        for key, value in trial.params.items():
            distribution = trial.distributions[key]
            if key == "loss":
                distribution = CategoricalDistribution([short_loss(c) for c in distribution.choices])
                value = short_loss(value)
            params[short_param(key)] = value
            distributions[short_param(key)] = distribution
        short.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=trial.value))
    return short


def plot_optimization_history(data: RunData):
    from optuna.visualization.matplotlib import plot_optimization_history

    ax = plot_optimization_history(_optuna_study(data, 1), target_name=f"best eval {OBJECTIVE} of the trial")
    _baseline_line(ax, data)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(PLOTS["optimization_history"])
    return ax.figure


def plot_param_importances(data: RunData):
    from optuna.visualization.matplotlib import plot_param_importances

    study = _short_study(_optuna_study(data, 2))
    ax = plot_param_importances(study, target_name=OBJECTIVE)
    ax.set_title("", loc="left")  # optuna's own title
    ax.set_title(PLOTS["param_importances"] + " (fANOVA; few trials: a rough guide)")
    return ax.figure


def plot_parallel_coordinate(data: RunData):
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    study = _short_study(_optuna_study(data, 2))
    ax = plot_parallel_coordinate(study, target_name=OBJECTIVE)
    fig = ax.figure
    fig.set_size_inches(max(8, 1.6 * len({p for t in study.trials for p in t.params}) + 2), 5)
    ax.set_title(PLOTS["parallel_coordinate"])
    for label in ax.get_xticklabels():  # loss-specific names ("TripletLoss.margin") are long
        label.set_rotation(20)
        label.set_ha("right")
    return fig


def plot_spearman_by_loss(data: RunData):
    scored = data.scored()
    if not scored:
        raise NotYet("no trial has finished an evaluation yet")
    plt = _pyplot()
    losses = sorted({t["loss"] for t in scored}, key=lambda loss: -max(t[OBJECTIVE] for t in scored if t["loss"] == loss))
    groups = [[t[OBJECTIVE] for t in scored if t["loss"] == loss] for loss in losses]
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(losses) + 2), 4.5))
    ax.boxplot(groups, tick_labels=losses, showfliers=False, widths=0.5)
    import random

    jitter = random.Random(0)
    for i, loss in enumerate(losses, start=1):
        for t in (t for t in scored if t["loss"] == loss):
            ax.scatter(i + jitter.uniform(-0.12, 0.12), t[OBJECTIVE], s=28, zorder=3,
                       color=STATUS_COLORS.get(t["status"], "#333333"), edgecolors="white", linewidths=0.5)
    for status in STATUS_COLORS:
        if any(t["status"] == status for t in scored):
            ax.scatter([], [], color=STATUS_COLORS[status], label=status.replace("_", " "))
    _baseline_line(ax, data)
    ax.set_ylabel(f"best eval {OBJECTIVE} of the trial")
    ax.set_title(PLOTS["spearman_by_loss"] + " (one dot per trial)")
    ax.legend(fontsize=8, loc="best")
    ax.tick_params(axis="x", labelrotation=15)
    return fig


def plot_learning_curves(data: RunData, top: int = TOP_CURVES):
    chosen = [t for t in data.scored() if data.curves.get(t["trial_id"])][:top]
    if not chosen:
        raise NotYet("no trial has reported an evaluation yet")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for rank, t in enumerate(chosen, start=1):
        points = [(r.get("step"), r.get(OBJECTIVE)) for r in data.curves[t["trial_id"]]]
        points = [(s, v) for s, v in points if _number(s) is not None and _number(v) is not None]
        steps, values = zip(*points)
        label = f"#{rank} {t['trial_id']} {t['loss']}" + (f" lr={t['learning_rate']:.1e}" if _number(t.get("learning_rate")) else "")
        line, = ax.plot(steps, values, marker="o", markersize=4, label=label)
        if t["status"] == "stopped_early":
            ax.plot(steps[-1], values[-1], marker="x", color=line.get_color(), markersize=9)
    _baseline_line(ax, data)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"eval {OBJECTIVE}")
    ax.set_title(PLOTS["learning_curves"] + " (x: stopped early)")
    ax.legend(fontsize=8, loc="best")
    return fig


def plot_trial_times(data: RunData):
    timed = [t for t in data.trials if _number(t.get("seconds")) is not None]
    if not timed:
        raise NotYet("no trial has finished or reported yet")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.32 * len(timed) + 1.2)))
    labels = [f"{t['trial_id']} {t['loss']}" for t in timed]
    ax.barh(range(len(timed)), [t["seconds"] for t in timed], color=[STATUS_COLORS.get(t["status"], "#333333") for t in timed])
    ax.set_yticks(range(len(timed)), labels, fontsize=8)
    ax.invert_yaxis()  # first trial on top
    for status in STATUS_COLORS:
        if any(t["status"] == status for t in timed):
            ax.barh([0], [0], color=STATUS_COLORS[status], label=status.replace("_", " "))
    ax.set_xlabel("seconds (start to end on the driver; running trials: so far)")
    total = sum(t["seconds"] for t in timed)
    ax.set_title(PLOTS["trial_times"] + f" (sum {total:.0f} s)")
    ax.legend(fontsize=8, loc="lower right")
    return fig


PLOTTERS: dict[str, Callable[[RunData], Any]] = {
    "optimization_history": plot_optimization_history,
    "param_importances": plot_param_importances,
    "parallel_coordinate": plot_parallel_coordinate,
    "spearman_by_loss": plot_spearman_by_loss,
    "learning_curves": plot_learning_curves,
    "trial_times": plot_trial_times,
}


def render_plots(data: RunData, names=tuple(PLOTS)) -> tuple[dict[str, bytes], dict[str, str]]:
    """PNG bytes per plot name, and the plots that are placeholders (name -> why)."""
    import optuna

    pngs: dict[str, bytes] = {}
    notes: dict[str, str] = {}
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                pngs[name] = _png(PLOTTERS[name](data))
        except NotYet as exc:
            notes[name] = str(exc)
        except Exception as exc:  # one broken plot must not cost the whole report
            log.warning("plot %s failed: %s: %s", name, type(exc).__name__, exc)
            notes[name] = f"could not be drawn: {type(exc).__name__}: {exc}"
        if name in notes:
            _pyplot().close("all")
            pngs[name] = _placeholder(PLOTS[name], notes[name])
    return pngs, notes


def overview_png(data: RunData, pngs: dict[str, bytes]) -> bytes:
    """All plots on one page under the headline: ``overview.png``, a picture of the report."""
    import matplotlib.image as mpimg

    plt = _pyplot()
    names = [n for n in PLOTS if n in pngs]
    cols = 2
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(16, 5.2 * rows + 1.2))
    for ax in getattr(axes, "flat", [axes]):
        ax.axis("off")
    for ax, name in zip(getattr(axes, "flat", [axes]), names):
        ax.imshow(mpimg.imread(io.BytesIO(pngs[name]), format="png"))
    fig.suptitle("stune report: " + "\n".join(headline(data)), fontsize=13, x=0.02, ha="left", y=0.995, va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - 1.1 / (5.2 * rows + 1.2)))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


# -- tables


def _fmt(value, key: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if key == OBJECTIVE:
            return f"{value:.4f}"
        if key == "seconds":
            return f"{value:.1f}"
        return f"{value:.2e}" if (abs(value) < 1e-2 or abs(value) >= 1e4) and value != 0 else f"{value:.3g}"
    return str(value)


_TERSE = {"learning_rate": "lr", "per_device_train_batch_size": "batch", "warmup_ratio": "warmup", "weight_decay": "wd"}


def table_rows(data: RunData, top: int = 10, *, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the top-trials table (terminal, HTML, model card). ``compact``: the
    hyperparameters in one column, to fit a terminal."""
    params = [p for p in data.params() if p != "loss"]
    header = ["trial", "status", "loss", OBJECTIVE, "best step", "steps"]
    header = (["trial", "status", "loss", "spearman", "steps", "hyperparameters", "seconds"] if compact
              else ["#", *header, *params, "seconds"])
    rows = []
    for rank, t in enumerate(data.scored()[:top], start=1):
        steps = f"{_fmt(t.get('steps'))}/{_fmt(t.get('total_steps'))}" if t.get("total_steps") else _fmt(t.get("steps"))
        if compact:
            row = [t["trial_id"], t["status"].replace("_early", ""), short_loss(t["loss"]), _fmt(t[OBJECTIVE], OBJECTIVE), steps]
        else:
            row = [str(rank), t["trial_id"], t["status"].replace("_", " "), t["loss"], _fmt(t[OBJECTIVE], OBJECTIVE), _fmt(t.get("best_step")), steps]
        if compact:
            seconds = t.get("seconds")
            ordered = sorted(params, key=lambda p: (p not in _TERSE, p))
            row += [" ".join(f"{_TERSE.get(p, p)}={_fmt(t[p], p)}" for p in ordered if t.get(p) is not None),
                    f"{seconds:.0f}" if seconds is not None else ""]
        else:
            row += [*[_fmt(t.get(p), p) for p in params], _fmt(t.get("seconds"), "seconds")]
        rows.append(row)
    return header, rows


def headline(data: RunData) -> list[str]:
    counts = data.counts()
    planned = (data.sweep.get("config") or {}).get("trials")
    lines = [
        f"{data.run_dir.uri}: {data.state()}",
        f"trials: {describe_counts(counts, ended=data.finished)}, {counts['running']} running" + (f" of {planned} planned" if planned else ""),
    ]
    scored = data.scored()
    if scored:
        best = scored[0]
        base = data.baseline
        lines.append(
            f"best eval {OBJECTIVE} {best[OBJECTIVE]:.4f} (trial {best['trial_id']}, {best['loss']})"
            + (f"; base model {base:.4f} ({signed_delta(best[OBJECTIVE] - base)})" if base is not None else "")
        )
    if data.seeded:
        lines.append(f"searcher warm-started with {data.seeded} trials of {data.sweep.get('warm_start_from')} (not plotted)")
    if data.summary:
        lines.append(f"wall time {data.summary.get('wall_seconds', 0):.0f} s")
    return lines


def print_table(data: RunData, top: int = 10, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    # In a pipe or a log rich would fit the table to 80 columns and wrap each row over several lines.
    console = console or Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    for line in headline(data):
        console.print(line, highlight=False)
    header, rows = table_rows(data, top, compact=True)
    if rows:
        from rich import box

        table = Table(title=f"top {len(rows)} trials by eval {OBJECTIVE}", box=box.SIMPLE_HEAD, pad_edge=False)
        for name in header:
            left = name in ("trial", "status", "loss", "hyperparameters")
            table.add_column(name, justify="left" if left else "right", no_wrap=name != "hyperparameters")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        shortened = sorted({t["loss"] for t in data.scored()[:top] if short_loss(t["loss"]) != t["loss"].removesuffix("Loss")})
        if shortened:
            console.print("  " + ", ".join(f"{short_loss(name)} = {name}" for name in shortened), highlight=False)
    else:
        console.print("no trial has finished an evaluation" + ("" if data.finished else " yet"))
    errored = Counter(t.get("error") or "no reason recorded" for t in data.trials if t["status"] == "errored")
    if errored:  # why, in the terminal too: the reasons are what the user fixes next
        console.print(f"{sum(errored.values())} trial(s) errored:", highlight=False)
        for reason, n in errored.most_common():
            console.print(f"  {n} x {reason}", highlight=False)


# -- HTML


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;color:#212529;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dee2e6;padding-bottom:.3rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}th,td{border:1px solid #dee2e6;padding:.25rem .5rem;text-align:right}
th{background:#f1f3f5}td.l,th.l{text-align:left}.note{color:#868e96;font-size:.85rem}img{max-width:100%;height:auto}
figure{margin:1rem 0}figcaption{font-size:.9rem;color:#495057}code{background:#f1f3f5;padding:0 .2rem}
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    left = {"trial", "status", "loss", "trial_id", "error"}
    cells = "".join(f'<th class="l">{html.escape(h)}</th>' if h in left else f"<th>{html.escape(h)}</th>" for h in header)
    out = [f"<table><thead><tr>{cells}</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td class="l">{html.escape(v)}</td>' if h in left else f"<td>{html.escape(v)}</td>" for h, v in zip(header, row)
        ) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(data: RunData, pngs: dict[str, bytes], notes: dict[str, str], top: int = 10) -> str:
    name = html.escape(data.run_dir.name)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>stune report: {name}</title><style>{_CSS}</style></head><body>",
        f"<h1>stune sweep report: {name}</h1>",
        "<p>" + "<br>".join(html.escape(line) for line in headline(data)) + "</p>",
        f'<p class="note">Read {time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data.read_at))}; '
        "re-run <code>stune report</code> to refresh a sweep that is still running.</p>",
        f"<h2>Top trials by eval {OBJECTIVE}</h2>",
    ]
    header, rows = table_rows(data, top)
    parts.append(_html_table(header, rows) if rows else "<p>No trial has finished an evaluation yet.</p>")
    for plot, title in PLOTS.items():
        if plot not in pngs:
            continue
        encoded = base64.b64encode(pngs[plot]).decode()
        parts.append(f"<h2>{html.escape(title)}</h2><figure>")
        parts.append(f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(title)}">')
        caption = f"{plot}.png" + (f" (not drawn: {notes[plot]})" if plot in notes else "")
        parts.append(f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    errored = [t for t in data.trials if t["status"] == "errored"]
    if errored:
        parts.append("<h2>Errored trials</h2>")
        parts.append(_html_table(["trial_id", "loss", "error"], [[t["trial_id"], t["loss"] or "", t.get("error") or ""] for t in errored]))
    all_header = ["trial_id", *(["number"] if any(t.get("number") is not None for t in data.trials) else []), "status", "loss", OBJECTIVE, "best_step", "steps", *[p for p in data.params() if p != "loss"], "seconds"]
    parts.append(f"<h2>All trials ({len(data.trials)})</h2>")
    parts.append(_html_table(all_header, [[_fmt(t.get(k), k) for k in all_header] for t in data.trials]))
    config = data.sweep.get("space") or {}
    parts.append("<h2>Search space</h2><pre>" + html.escape(json.dumps(config, indent=2, default=str)) + "</pre>")
    parts.append(
        '<p class="note">Made by <code>stune report</code>. More: <code>tensorboard --logdir RUN_DIR</code>, '
        "<code>optuna-dashboard sqlite:///RUN_DIR/study.db</code>.</p></body></html>"
    )
    return "\n".join(parts)


# -- the command


def default_out(uri: str) -> str:
    run_dir = RunDir.open(uri)
    return run_dir.join("report") if run_dir.is_local else os.path.abspath(f"{run_dir.name}-report")


def write_report(uri: str, out: str | os.PathLike | None = None, *, top: int = 10, force: bool = False) -> dict[str, Any]:
    """Write ``report.html`` and one PNG per plot into ``out`` (default ``RUN_DIR/report``);
    returns the loaded data, the file paths and the plots that are placeholders. A file of those
    names that an earlier report did not write is replaced only with ``force``."""
    data = load(uri)
    out = Path(out or default_out(uri))
    if out.is_file():
        raise ReportError(f"--out {out} is a file; --out names a folder, so choose another --out")
    names = [REPORT_HTML, OVERVIEW, *(f"{plot}.png" for plot in PLOTS)]
    if not force and (theirs := [n for n in names if (out / n).exists()]) and not _is_stune_report(out / REPORT_HTML):
        raise ReportError(f"--out {out} already holds {theirs[0]}, which no stune report wrote; "
                          "pass --force to replace it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    pngs, notes = render_plots(data)
    files = {}
    for plot, png in pngs.items():
        files[plot] = str(_write_atomic(out / f"{plot}.png", png))
    files["overview"] = str(_write_atomic(out / OVERVIEW, overview_png(data, pngs)))
    files["html"] = str(_write_atomic(out / REPORT_HTML, render_html(data, pngs, notes, top).encode()))
    return {"data": data, "out": str(out), "files": files, "placeholders": notes}


def _is_stune_report(html: Path) -> bool:
    try:
        with open(html, "rb") as fh:
            return b"<title>stune report: " in fh.read(4096)
    except OSError:
        return False


def _write_atomic(path: Path, payload: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
    return path
