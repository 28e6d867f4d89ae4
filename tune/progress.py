"""What ``stune sweep`` shows while it runs, in place of Ray Tune's tables.

Both displays are ``on_event(kind, row, recorder)`` targets for :class:`tune.recorder.SweepRecorder`
(kinds: start / result / best / done):

- :class:`LiveProgress`: one compact view (rich ``Live``) refreshed in place on a terminal:
  trials completed / running / stopped early / errored out of the budget, elapsed and estimated
  remaining time, the best score so far with its loss and hyperparameters, and per running
  trial its step and last score.
- :class:`PlainProgress`: one line per finished trial, for logs, CI and ``nohup``.

``progress_for(...)`` picks one (Live when the stream is a terminal); ``--verbose`` picks none
and Ray's own tables come back (``quiet_ray`` is what keeps them away otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from typing import Any, Iterator, TextIO

from tune.rundir import DONE
from tune.trainable import OBJECTIVE

_TERSE = {"learning_rate": "lr", "per_device_train_batch_size": "batch", "warmup_ratio": "warmup", "weight_decay": "wd"}


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_params(params: dict[str, Any]) -> str:
    """``lr=3.3e-04 batch=8 warmup=0.14 margin=1.13``: training hyperparameters first."""
    from tune.recorder import FIXED_COLUMNS, RESULT_COLUMNS

    skip = {*FIXED_COLUMNS, *RESULT_COLUMNS, "last_score"}
    keys = sorted((k for k, v in params.items() if k not in skip and v not in (None, "")), key=lambda k: (k not in _TERSE, k))
    return " ".join(f"{_TERSE.get(k, k)}={_short(params[k])}" for k in keys)


def _short(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if isinstance(value, str) and not any(c in value for c in ".eE"):
        return value  # an integer as written
    if isinstance(value, int) or number.is_integer() and abs(number) < 1e4:
        return str(int(number))
    return f"{number:.1e}" if abs(number) < 1e-2 else f"{number:.3g}"


def signed_delta(delta: float) -> str:
    """A score difference to 4 decimals with its sign; one that rounds to zero reads +0.0000, not -0.0000."""
    return f"{round(delta, 4) + 0.0:+.4f}"


def describe_counts(counts: dict[str, int], *, ended: bool = True) -> str:
    """``3 completed, 3 stopped early, 2 stopped by the time budget, 0 errored, 1 never started`` (the
    last two only where there are any; "waiting" for a sweep that has not ended): the end-of-sweep and
    report headlines."""
    out_of_time = f"{counts['out_of_time']} stopped by the time budget, " if counts.get("out_of_time") else ""
    never = f", {counts['pending']} {'never started' if ended else 'waiting'}" if counts.get("pending") else ""
    return (f"{counts['completed']} completed, {counts['stopped_early']} stopped early, {out_of_time}"
            f"{counts['errored']} errored{never}")


def finite_number(value) -> float | None:
    """A finite float, or None for blanks, text, NaN and inf (CSV cells, reported metrics)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class SweepProgress:
    """The state both displays show, kept from the recorder's events. Thread-safe: a live
    display renders it from its own refresh thread."""

    def __init__(self, planned: int, *, time_budget_s: float | None = None, clock=time.monotonic):
        self.planned = planned
        self.time_budget_s = time_budget_s
        self.clock = clock
        self.started = clock()
        self.lock = threading.RLock()
        self.running: dict[str, dict[str, Any]] = {}  # trial_id -> loss, step, total, last
        self.counts: dict[str, int] = {}
        self.finished_here = 0  # trials finished by this process (what the time estimate uses)
        self.first_start: float | None = None  # when this process saw its first trial start
        self.best: dict[str, Any] | None = None  # {score, loss, params, trial_id, step}
        self.baseline: float | None = None
        self.run_name = ""
        self._recorder = None

    # -- events
    def __call__(self, kind: str, row: dict[str, Any], recorder) -> None:
        if kind == "baseline":  # the untuned model's scores, ready some time after the start
            with self.lock:
                self.baseline = row.get(OBJECTIVE)
            return self.on_update(kind, row)
        with self.lock:
            if self._recorder is None:
                self._attach(recorder)
            trial = row.get("trial_id")
            if kind == "start":
                if self.first_start is None:
                    self.first_start = self.clock()
                self.running[trial] = {"loss": row.get("loss"), "step": None, "total": None, "last": None}
            elif kind == "result":
                state = self.running.setdefault(trial, {"loss": row.get("loss")})
                state.update(step=row.get("steps"), total=row.get("total_steps"), last=row.get("last_score"))
            elif kind == "done":
                self.running.pop(trial, None)
                self.finished_here += 1
            self.counts = recorder.counts()
            self._update_best(recorder)
        self.on_update(kind, row)

    def _attach(self, recorder) -> None:
        self._recorder = recorder
        self.planned = getattr(recorder, "planned_trials", None) or self.planned
        run_dir = getattr(recorder, "run_dir", None)
        if run_dir is None:
            return
        self.run_name = run_dir.name
        try:
            from tune.rundir import SWEEP

            self.baseline = (run_dir.read_json(SWEEP).get("baseline") or {}).get(OBJECTIVE, self.baseline)
        except Exception:  # the display goes on without the baseline
            pass
        for trial, row in recorder.rows.items():  # a resumed sweep: trials that were running
            if row.get("status") == "running":
                self.running.setdefault(trial, {"loss": row.get("loss"), "step": finite_number(row.get("steps")), "total": row.get("total_steps"), "last": None})

    def _update_best(self, recorder) -> None:
        best = getattr(recorder, "best", None)
        if best:
            config = dict(best.get("config") or {})
            self.best = {"score": best[OBJECTIVE], "loss": config.pop("loss", None), "params": config,
                         "trial_id": best.get("trial_id"), "step": best.get("step")}

    def on_update(self, kind: str, row: dict[str, Any]) -> None:  # displays override
        pass

    # -- derived
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in DONE)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float | None:
        """Seconds left: this session's pace (trials finished per second since the first trial
        started; Ray's start-up and the baseline do not count) over the trials left, capped by
        the time budget. None until a trial has finished."""
        left = max(0, self.planned - self.done())
        if left == 0:
            return 0.0
        elapsed = self.elapsed()
        running_for = self.clock() - (self.first_start if self.first_start is not None else self.started)
        estimate = running_for / self.finished_here * left if self.finished_here else None
        if self.time_budget_s is not None:
            budget_left = max(0.0, self.time_budget_s - elapsed)
            estimate = budget_left if estimate is None else min(estimate, budget_left)
        return estimate

    def best_line(self) -> str:
        if not self.best:
            return f"best {OBJECTIVE}: – (no evaluation yet)"
        b = self.best
        base = f" (base {self.baseline:.4f})" if self.baseline is not None else ""
        return f"best {OBJECTIVE} {b['score']:.4f}{base}: {b['loss']} {format_params(b['params'])} [trial {b['trial_id']}, step {b['step']}]"


class PlainProgress(SweepProgress):
    """One line per finished trial (nothing else), flushed at once: for logs, CI and ``nohup``."""

    def __init__(self, planned: int, *, stream: TextIO | None = None, **kwargs):
        super().__init__(planned, **kwargs)
        self.stream = stream

    def on_update(self, kind: str, row: dict[str, Any]) -> None:
        if kind != "done":
            return
        with self.lock:
            line = self.line(row)
        stream = self.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def line(self, row: dict[str, Any]) -> str:
        width = len(str(self.planned))
        score = finite_number(row.get(OBJECTIVE))
        steps = f"{row.get('steps') or 0}/{row.get('total_steps') or '?'} steps"
        what = f"{OBJECTIVE} {score:.4f} (step {row.get('best_step')})" if score is not None else f"{OBJECTIVE} –"
        seconds = finite_number(row.get("seconds"))
        status = row.get("status", "?").replace("_", " ")
        if row.get("status") == "errored" and row.get("error"):
            status += f" ({str(row['error'])[:80]})"
        best = f"best {self.best['score']:.4f}" if self.best else "best –"
        return (
            f"[{self.done():>{width}}/{self.planned}] trial {row.get('trial_id')} {status}: {row.get('loss')} {format_params(row)}"
            f" | {what}, {steps}" + (f", {seconds:.0f} s" if seconds is not None else "")
            + f" | {best}, {format_duration(self.elapsed())} elapsed, ~{format_duration(self.remaining())} left"
        )


class LiveProgress(SweepProgress):
    """A rich ``Live`` view, redrawn in place (4 times a second, and at each event)."""

    def __init__(self, planned: int, *, console=None, **kwargs):
        super().__init__(planned, **kwargs)
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.live = None

    def __rich__(self):
        from rich.console import Group
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        with self.lock:
            c = self.counts
            done = self.done()
            top = Table.grid(padding=(0, 1))
            top.add_row(
                ProgressBar(total=max(1, self.planned), completed=done, width=24),
                Text.assemble((f"{done}/{self.planned} trials done", "bold"),
                              f"   elapsed {format_duration(self.elapsed())}   ~{format_duration(self.remaining())} left"),
            )
            counts = Text.assemble(
                f"{c.get('completed', 0)} completed · {c.get('stopped_early', 0)} stopped early · ",
                (f"{c.get('errored', 0)} errored", "red" if c.get("errored") else ""),
                f" · {len(self.running)} running",
            )
            best = Text(self.best_line(), style="green" if self.best else "dim")
            parts: list[Any] = [top, counts, best]
            if self.running:
                table = Table(box=None, pad_edge=False, show_edge=False, header_style="dim")
                for name, justify in (("trial", "left"), ("loss", "left"), ("step", "right"), ("last score", "right")):
                    table.add_column(name, justify=justify)
                for trial, state in sorted(self.running.items()):
                    step = f"{state.get('step') or 0}/{state.get('total') or '?'}" if state.get("step") is not None else "starting"
                    last = finite_number(state.get("last"))
                    table.add_row(trial, str(state.get("loss") or ""), step, f"{last:.4f}" if last is not None else "–")
                parts.append(table)
        title = f"stune sweep {self.run_name}".strip()
        return Panel(Group(*parts), title=title, title_align="left", border_style="blue", expand=False)

    def on_update(self, kind: str, row: dict[str, Any]) -> None:
        if self.live is not None:
            self.live.refresh()
            if kind == "done" and row.get("status") == "errored":  # errors stay on screen above the view
                self.live.console.print(f"[red]trial {row.get('trial_id')} errored:[/red] {row.get('error') or ''}", highlight=False)

    @contextlib.contextmanager
    def shown(self) -> Iterator["LiveProgress"]:
        from rich.live import Live

        with Live(self, console=self.console, refresh_per_second=4, transient=False, redirect_stdout=True, redirect_stderr=True) as live:
            self.live = live
            with _logs_through(sys.stderr):  # Live's proxy while it runs
                try:
                    yield self
                finally:
                    self.live = None


@contextlib.contextmanager
def _logs_through(proxy) -> Iterator[None]:
    """stune's log lines go through Live's stderr proxy, which prints them above the view (a
    handler writing to the real stderr would be drawn over by the next refresh)."""
    handlers = [h for h in logging.getLogger("stune").handlers if isinstance(h, logging.StreamHandler) and h.stream in (sys.__stderr__, sys.__stdout__)]
    previous = [h.stream for h in handlers]
    for handler in handlers:
        handler.setStream(proxy)
    try:
        yield
    finally:
        for handler, stream in zip(handlers, previous):
            handler.setStream(stream)


@contextlib.contextmanager
def progress_for(planned: int, *, verbose: bool = False, live: bool | None = None, stream: TextIO | None = None,
                 time_budget_s: float | None = None) -> Iterator[SweepProgress | None]:
    """The display for ``stune sweep``: None with ``verbose`` (Ray's own output), a live view when
    ``stream`` (default stderr) is a terminal, else one plain line per finished trial."""
    if verbose:
        yield None
        return
    stream = stream or sys.stderr
    if live is None:
        live = stream.isatty() and os.environ.get("TERM") != "dumb"
    if not live:
        yield PlainProgress(planned, stream=stream, time_budget_s=time_budget_s)
        return
    from rich.console import Console

    display = LiveProgress(planned, console=Console(file=stream), time_budget_s=time_budget_s)
    with display.shown():
        yield display


@contextlib.contextmanager
def quiet_ray() -> Iterator[None]:
    """Ray Tune prints an experiment table, result paths and INFO logs even at ``verbose=0``
    with its new output engine; its legacy engine at verbosity 0 prints nothing. Ray's own
    logger is reset to INFO when Ray is imported, so it is lowered here, for the sweep only."""
    import ray  # noqa: F401  (sets up Ray's logging before we lower it)

    previous_env = os.environ.get("RAY_AIR_NEW_OUTPUT")
    # "ray": INFO lines; "ray.tune.utils.util": "... may be a performance bottleneck" warnings
    # (an MLflow callback writing to SQLite takes ~0.5 s per result); "experiment_analysis": "Failed
    # to fetch metrics" for each trial that never started, which stune's summary counts itself.
    levels = {"ray": logging.WARNING, "ray.tune.utils.util": logging.ERROR,
              "ray.tune.analysis.experiment_analysis": logging.ERROR}
    previous_levels = {name: logging.getLogger(name).level for name in levels}
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in previous_levels.items():
            logging.getLogger(name).setLevel(level)
        if previous_env is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous_env
