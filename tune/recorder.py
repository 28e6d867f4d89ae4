"""The driver-side bookkeeping of a sweep, as a Ray Tune callback.

- keeps ``best/``: the model of the best evaluation of any trial so far (copied when a result
  beats it, without optimizer state), so the winner survives whatever Ray deletes;
- deletes a trial's own checkpoint once the trial ends, so disk holds at most one checkpoint
  per running trial plus ``best/`` whatever the number of trials;
- keeps ``trials.csv`` current as trials start and end;
- hands on the untuned model's scores, which the first trial reports with its results.
Its state is rebuilt from the run directory in ``setup``, so it survives ``--resume``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from trainers.evaluation import selection_key
from tune.rundir import BEST, DONE, TRIAL_STATUSES, TRIALS, RunDir, delete_checkpoint_dirs, trial_dir_name
from tune.space import SCORE_BASE, param_columns
from tune.trainable import BASE_PREFIX, ERROR_KEY, EVAL_NOTE, FINISHED_NOTE, OBJECTIVE

log = logging.getLogger("stune.sweep")

BEST_JSON = "best.json"
FIXED_COLUMNS = ["trial_id", "number", "status", "loss"]
LOST = "lost:"  # the error of a trial Ray's saved state lacked
RESULT_COLUMNS = [OBJECTIVE, "best_step", "steps", "total_steps", "node", "seconds", "error"]


class SweepRecorder(Callback):
    def __init__(self, run_dir: RunDir, planned_trials: int, on_event=None):
        self.run_dir = run_dir
        self.planned_trials = planned_trials
        self.on_event = on_event  # progress display: on_event(kind, row, recorder)
        self.rows: dict[str, dict[str, Any]] = {}
        self.best: dict[str, Any] | None = None
        self._started: dict[str, float] = {}
        self._finished_before: set[str] = set()  # done before a --resume, restarted by Ray's older state
        self._ended_trials: dict[str, Any] = {}

    # Ray calls setup() on a fresh run and again after Tuner.restore.
    def setup(self, **info):
        if self.run_dir.exists(TRIALS):
            for row in self.run_dir.read_csv(TRIALS):
                self.rows[row["trial_id"]] = dict(row)
        if self.run_dir.exists(BEST_JSON):
            self.best = self.run_dir.read_json(BEST_JSON)

    def kept_trial_ids(self) -> set[str]:
        """Trials that ran to their end (not those lost with a killed driver): they count towards ``trials``."""
        return {tid for tid, row in self.rows.items() if row["status"] in DONE and not str(row.get("error", "")).startswith(LOST)}

    def on_trial_start(self, iteration, trials, trial, **info):
        row = self._row(trial)
        if row["status"] in DONE and trial.checkpoint is not None and _mark_finished(trial):
            # The driver was killed after this trial finished but before Ray saved that: Ray
            # restores it from its last checkpoint, where the mark makes it end at once. Its
            # row, score and status stay as they were.
            self._finished_before.add(trial.trial_id)
            return
        row["status"] = "running"
        row["error"] = ""
        self._started[trial.trial_id] = time.monotonic()
        self._emit("start", row)
        self._write()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        if result.get(ERROR_KEY):  # the trial cannot go on; StopOnTrialError ends it
            row["error"] = _one_line(str(result[ERROR_KEY]))
            return
        if BASE_PREFIX + OBJECTIVE in result:  # this trial scored the untuned model before it trained
            self._emit("base", {k.removeprefix(BASE_PREFIX): v for k, v in result.items() if k.startswith(BASE_PREFIX)})
        if _take_result(row, result):
            self._emit("result", {**row, "last_score": result[OBJECTIVE]})  # last_score: for the live display, not trials.csv

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # Each checkpoint names the evaluation it was saved at, so the best is decided from the
        # checkpoint itself, whatever order Ray delivers results and checkpoints in.
        try:
            with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{EVAL_NOTE}") as src:
                evaluation = json.loads(src.read())
        except (OSError, ValueError):
            return
        score = evaluation.get(OBJECTIVE)
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            return
        if self.best is not None and selection_key(evaluation) <= selection_key(self.best):
            return
        pending = {
            "trial_id": trial.trial_id,
            OBJECTIVE: score,
            "pearson_cosine": evaluation.get("pearson_cosine"),
            "step": evaluation.get("step"),
            "config": param_columns(trial.config),
        }
        try:
            self.run_dir.replace_dir_from(BEST, checkpoint.filesystem, checkpoint.path, skip=_OPTIMIZER_FILES)
        except OSError as exc:  # e.g. disk full: best/ and best.json still hold the previous best
            log.warning("could not copy trial %s's checkpoint to %s (%s); the previous best is kept", trial.trial_id, BEST, exc)
            return
        pending["checkpoint"] = self.run_dir.join(BEST)
        self.best = pending
        self.run_dir.write_json(BEST_JSON, self.best)
        self._emit("best", self.rows[trial.trial_id])

    def on_trial_complete(self, iteration, trials, trial, **info):
        row = self._row(trial)
        if trial.trial_id in self._finished_before:
            self._finished_before.discard(trial.trial_id)
            _delete_trial_checkpoints(trial)
            return
        if not _int(row.get("steps")) and trial.last_result:
            # The driver was killed after Ray saved this trial's last result and checkpoint but
            # before trials.csv had them: the resumed trial, at its last step, ends without a new
            # report (tune.trainable.run_trial). Ray's saved result is the trial's last one.
            _take_result(row, trial.last_result)
        steps, total = _int(row.get("steps")), _int(row.get("total_steps"))
        if row.get("error"):  # ended by StopOnTrialError
            row["status"] = "errored"
        else:
            row["status"] = "completed" if steps and total and steps >= total else "stopped_early"
        self._finish(trial, row)

    def on_trial_error(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row["status"] = "errored"
        row["error"] = _error_line(trial)
        self._finish(trial, row)

    def on_experiment_end(self, trials, **info):
        self._ended_trials = {trial.trial_id: trial for trial in trials}
        for trial in trials:  # trials never started (time budget) stay visible as pending
            self._row(trial)
        known = {trial.trial_id for trial in trials}
        for row in self.rows.values():
            if row["status"] in ("running", "pending") and row["trial_id"] not in known:
                # Started in the last second before the driver was killed, so missing from Ray's
                # saved state: Ray's searcher made another trial in its place.
                row["status"] = "errored"
                row["error"] = f"{LOST} the sweep was killed before Ray saved this trial; another trial replaced it"
                # Ray will never end it, so nothing else deletes what it saved before the kill.
                try:
                    delete_checkpoint_dirs(self.run_dir.fs, self.run_dir.join(trial_dir_name(row["trial_id"])))
                except OSError as exc:
                    log.debug("could not delete checkpoints of lost trial %s: %s", row["trial_id"], exc)
        self._write()

    def close_out_of_time(self) -> None:
        """After ``time_budget`` ended the sweep: trials still running were stopped by it, not by
        ASHA or an error. Their evaluations so far count (best/ may come from one of them)."""
        for trial_id, row in self.rows.items():
            if row["status"] == "running":
                row["status"] = "out_of_time"
                trial = self._ended_trials.get(trial_id)
                if trial is not None:
                    self._finish(trial, row)
        self._write()

    # -- helpers
    def _finish(self, trial, row):
        started = self._started.pop(trial.trial_id, None)
        if started is not None:
            row["seconds"] = round(time.monotonic() - started, 1)
        # trials.csv first: once it says "done", a --resume after a driver kill ends the trial at
        # once (on_trial_start) instead of restoring a checkpoint deleted below.
        self._write()
        _delete_trial_checkpoints(trial)
        if trial.config.get(SCORE_BASE):  # its results had the base scores, unless it failed first
            self._emit("base_trial_ended", row)
        self._emit("done", row)

    def _row(self, trial) -> dict[str, Any]:
        row = self.rows.setdefault(trial.trial_id, {"trial_id": trial.trial_id, "status": "pending"})
        # Ray tags trials "<n>_<params>"; n is the order the searcher proposed them in.
        number = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
        if number.isdigit():
            row["number"] = int(number)
        row.update(param_columns(trial.config))
        return row

    def _write(self):
        params = sorted({k for row in self.rows.values() for k in row} - set(FIXED_COLUMNS) - set(RESULT_COLUMNS))
        self.run_dir.write_csv(TRIALS, list(self.rows.values()), FIXED_COLUMNS + params + RESULT_COLUMNS)

    def _emit(self, kind, row):
        if self.on_event is not None:
            self.on_event(kind, row, self)

    def counts(self) -> dict[str, int]:
        counts = {status: 0 for status in TRIAL_STATUSES}
        for row in self.rows.values():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts

    def __getstate__(self):  # the progress display is not part of the experiment state
        state = dict(self.__dict__)
        state["on_event"] = None
        state["_ended_trials"] = {}
        return state


class KeepRunFilesCurrent(Callback):
    """Keeps Ray's restore from turning back stune's own files of the run dir.

    On ``--resume`` Ray copies every top-level ``.json`` and ``.pkl`` of the run dir into its
    driver staging dir, to find its own state there, and uploads that whole dir back to the run
    dir at every save: ``sweep.json`` and ``best.json`` would return to what they held before the
    resume, losing a baseline scored or a best trial found since (and ``stune export`` reads
    them). Ray's first save comes after the first ``on_step_begin``; the copies go before it.
    """

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self._dropped = False

    def on_step_begin(self, iteration, trials, **info):
        if self._dropped or not trials:
            return
        staging = Path(trials[0].storage.experiment_driver_staging_path)
        for name in self.names:
            (staging / name).unlink(missing_ok=True)
        self._dropped = True


_OPTIMIZER_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "training_args.bin")


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "failed")[:300]


def _take_result(row: dict[str, Any], result: dict[str, Any]) -> bool:
    """Copy a result's progress and score into the trial's row; False when it holds no score."""
    score = result.get(OBJECTIVE)
    row["steps"] = result.get("step")
    row["total_steps"] = result.get("total_steps")
    row["node"] = result.get("node", "")
    if score is None or not math.isfinite(score):
        return False
    if not row.get(OBJECTIVE) or score > float(row[OBJECTIVE]):
        row[OBJECTIVE] = round(score, 6)
        row["best_step"] = result.get("step")
    return True


def _mark_finished(trial) -> bool:
    """Put FINISHED_NOTE into the trial's last checkpoint folder (made again if it was deleted)."""
    checkpoint = trial.checkpoint
    try:
        checkpoint.filesystem.create_dir(checkpoint.path, recursive=True)
        with checkpoint.filesystem.open_output_stream(f"{checkpoint.path}/{FINISHED_NOTE}") as out:
            out.write(b"finished before the sweep was resumed\n")
        return True
    except OSError as exc:
        log.warning("could not mark trial %s as finished (%s); it runs again", trial.trial_id, exc)
        return False


def _error_line(trial) -> str:
    text = ""
    try:
        error = trial.get_error()
        text = str(error) if error else ""
    except Exception:
        pass
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # Ray wraps the trial's exception; its own message is the last meaningful line.
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return (lines[-1] if lines else "failed")[:300]


def _delete_trial_checkpoints(trial) -> None:
    storage = getattr(trial, "storage", None)
    if storage is None:
        return
    try:
        delete_checkpoint_dirs(storage.storage_filesystem, storage.trial_fs_path)
    except OSError as exc:
        log.debug("could not delete checkpoints of %s: %s", trial.trial_id, exc)
