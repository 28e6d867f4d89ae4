"""The sweep's Optuna study on disk: ``RUN_DIR/study.db`` (SQLite), and warm starts from it.

The searcher keeps its study in memory: TPE reads every trial at each proposal, and through
SQLite that took 0.1–0.3 s of the driver per trial, growing with the sweep (300 two-step trials
of the tiny test model: 107–110 s with the study in SQLite, 83–85 s in memory; BENCHMARKS.md §1). ``StudyMirror`` writes
each trial into ``RUN_DIR/study.db`` as it starts, reports and ends (with its stune trial id as user
attr ``trial_id``), so that
``optuna-dashboard sqlite:///RUN_DIR/study.db`` shows it, ``stune report`` plots it, and a later
sweep can be seeded with its trials (``--warm-start-from``).

- Local run dirs hold ``study.db`` themselves. Object stores (s3://, gs://) cannot hold a SQLite
  database: the study then lives in a local cache folder and is uploaded to ``RUN_DIR/study.db``
  as trials finish and when the sweep ends (a resume on another machine downloads it back).
- ``OptunaSearch`` is pickled into Ray's experiment state for ``--resume``, the in-memory study
  with it, and the mirror as its path. ``relocated`` points an unpickled mirror (or, in run dirs
  made before 2026-12-07, the searcher's ``StudyStorage``) at where the study is now, so a moved
  run dir or another machine still resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import optuna
import pyarrow.fs as pafs
from optuna.storages import RDBStorage

from trainers.errors import StuneError
from trainers.losses import LOSSES
from tune.rundir import SWEEP, RunDir

log = logging.getLogger("stune.sweep")

STUDY_DB = "study.db"
WARM_START_ATTR = "warm_start_from"
_ENGINE_KWARGS = {"connect_args": {"timeout": 60}}  # wait, not fail, while a dashboard reads

_relocation: str | None = None


class StudyError(StuneError):
    pass


class StudyStorage(RDBStorage):
    """An ``RDBStorage`` that, when unpickled inside ``relocated(url)``, opens ``url`` instead of
    the URL it was pickled with: the searchers of run dirs made before 2026-12-07 kept their study in it."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        if _relocation is not None:
            state = {**state, "url": _relocation}
        super().__setstate__(state)


class StudyMirror:
    """``study.db`` as a live copy of the searcher's in-memory study, keyed by stune trial id (user
    attr ``trial_id``): a trial is written when it is proposed, each score as it is reported, its
    end when it ends, so optuna-dashboard shows running trials as they go. A write that fails (a
    dashboard holding the file for over a minute, a full disk) is logged and the sweep goes on; the
    trial's end writes whatever of it is missing. The in-memory study is what searches."""

    def __init__(self, path: str, name: str):
        self.path, self.name = path, name
        self._study: optuna.Study | None = None
        self._rdb: RDBStorage | None = None
        self._study_id = -1
        self._rows: dict[str, int] = {}  # stune trial id -> its trial's id in study.db
        self._steps: dict[str, set[int]] = {}  # the intermediate values written, per trial
        self._finished: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:  # pickled with the searcher: no open database
        return {"path": self.path, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        path = _relocation.removeprefix("sqlite:///") if _relocation else state["path"]
        self.__init__(path, state["name"])

    def seed(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        """Copy a warm start's seed trials."""
        self._write("seeds", lambda study: study.add_trials(trials))

    def start(self, trial_id: str, trial: optuna.trial.FrozenTrial) -> None:
        """Write proposed trial ``trial_id`` as running, with its parameters."""
        def write(study):
            if trial_id not in self._rows and trial_id not in self._finished:
                self._rows[trial_id] = self._rdb.create_new_trial(
                    self._study_id, template_trial=_with_user_attr(trial, "trial_id", trial_id))
                self._steps[trial_id] = set(trial.intermediate_values)
        self._write(trial_id, write)

    def report(self, trial_id: str, step: int, value: float) -> None:
        """Write a score of a running trial (a trial not written as running is left to its end)."""
        def write(study):
            if trial_id in self._rows and trial_id not in self._finished:
                self._rdb.set_trial_intermediate_value(self._rows[trial_id], step, value)
                self._steps[trial_id].add(step)
        self._write(trial_id, write)

    def finish(self, trial_id: str, trial: optuna.trial.FrozenTrial) -> None:
        """Write the end of trial ``trial_id`` (``trial`` finished): its state, value and any score
        not written yet; the whole trial if its start was not written."""
        def write(study):
            if trial_id in self._finished:
                return
            if trial_id not in self._rows:
                study.add_trial(_with_user_attr(trial, "trial_id", trial_id))
            else:
                row, storage = self._rows[trial_id], self._rdb
                for step, value in trial.intermediate_values.items():
                    if step not in self._steps[trial_id]:
                        storage.set_trial_intermediate_value(row, step, value)
                storage.set_trial_state_values(row, trial.state, trial.values)
                del self._rows[trial_id], self._steps[trial_id]
            self._finished.add(trial_id)
        self._write(trial_id, write)

    def finish_unknown(self, trial_id: str, value: float | None, error: bool) -> None:
        """The end of a trial that the searcher lost in an interruption but Ray ran on: its row, if
        it was written as running, is ended with the trial's last score."""
        def write(study):
            if trial_id in self._rows:
                self._end(trial_id, None if error else value)
        self._write(trial_id, write)

    def end_running(self, scores: dict[str, float] | None = None) -> int:
        """End the trials still written as running when the sweep ends: those in ``scores`` (cut
        by the time budget; Ray does not tell the searcher) as complete with their best score so
        far, the others (lost to a killed driver, never resumed) as failed. Returns how many."""
        ended = []
        def write(study):
            for trial_id in list(self._rows):
                self._end(trial_id, (scores or {}).get(trial_id))
                ended.append(trial_id)
        self._write("still running", write)
        return len(ended)

    def _end(self, trial_id: str, score: float | None) -> None:
        """End a trial written as running: complete with ``score``, or failed without a finite one."""
        if score is not None and math.isfinite(score):
            self._rdb.set_trial_state_values(self._rows[trial_id], optuna.trial.TrialState.COMPLETE, [score])
        else:
            self._rdb.set_trial_state_values(self._rows[trial_id], optuna.trial.TrialState.FAIL)
        del self._rows[trial_id], self._steps[trial_id]
        self._finished.add(trial_id)

    def finished_trials(self) -> dict[str, optuna.trial.FrozenTrial]:
        """This sweep's finished trials by stune trial id (what a resumed searcher may have lost)."""
        try:
            return {trial_id: t for trial_id, t in self._own_trials(self.study()).items() if t.state.is_finished()}
        except Exception as exc:  # noqa: BLE001
            log.warning("could not read %s: %s", self.path, exc)
            return {}

    def study(self) -> optuna.Study:
        if self._study is None:
            rdb = RDBStorage(sqlite_url(self.path), engine_kwargs=_ENGINE_KWARGS)
            study = optuna.create_study(storage=rdb, study_name=self.name, direction="maximize", load_if_exists=True)
            self._rdb, self._study_id = rdb, rdb.get_study_id_from_name(self.name)
            own = self._own_trials(study)
            self._finished = {trial_id for trial_id, t in own.items() if t.state.is_finished()}
            self._rows = {trial_id: rdb.get_trial_id_from_study_id_trial_number(self._study_id, t.number)
                          for trial_id, t in own.items() if trial_id not in self._finished}
            self._steps = {trial_id: set(own[trial_id].intermediate_values) for trial_id in self._rows}
            self._study = study
        return self._study

    def _write(self, what: str, write) -> None:
        try:
            write(self.study())
        except Exception as exc:  # noqa: BLE001 - the record must not end the sweep it records
            log.warning("could not record trial %s in %s: %s", what, self.path, exc)

    @staticmethod
    def _own_trials(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:  # not a warm start's seeds
        return {t.user_attrs["trial_id"]: t for t in study.get_trials(deepcopy=False)
                if "trial_id" in t.user_attrs and WARM_START_ATTR not in t.user_attrs}


def _with_user_attr(trial: optuna.trial.FrozenTrial, key: str, value: Any) -> optuna.trial.FrozenTrial:
    copy = optuna.trial.create_trial(
        state=trial.state, value=trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None,
        params=trial.params, distributions=trial.distributions, user_attrs={**trial.user_attrs, key: value},
        system_attrs=trial.system_attrs, intermediate_values=trial.intermediate_values,
    )
    copy.datetime_start, copy.datetime_complete = trial.datetime_start, trial.datetime_complete
    return copy


@contextlib.contextmanager
def relocated(url: str) -> Iterator[None]:
    global _relocation
    previous, _relocation = _relocation, url
    try:
        yield
    finally:
        _relocation = previous


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{os.path.abspath(path)}"


def study_name(run_dir: RunDir) -> str:
    return run_dir.name


def local_study_path(run_dir: RunDir, *, resume: bool) -> str:
    """Where this sweep's SQLite file lives while it runs (created folders included)."""
    if run_dir.is_local:
        os.makedirs(run_dir.path, exist_ok=True)
        return run_dir.join(STUDY_DB)
    digest = hashlib.sha256(run_dir.uri.encode()).hexdigest()[:10]
    folder = Path(tempfile.gettempdir()) / "stune-studies" / f"{run_dir.name}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STUDY_DB
    if not resume:
        path.unlink(missing_ok=True)
    elif not path.exists() and run_dir.exists(STUDY_DB):
        pafs.copy_files(run_dir.join(STUDY_DB), str(path), source_filesystem=run_dir.fs, destination_filesystem=pafs.LocalFileSystem())
    return str(path)


class StudyUploader:
    """Copies the local study of a remote run dir to ``RUN_DIR/study.db`` (at most every
    ``every`` seconds, and at the end). A no-op for local run dirs."""

    def __init__(self, run_dir: RunDir, local_path: str, every: float = 30.0):
        self.run_dir, self.local_path, self.every = run_dir, local_path, every
        self._last = 0.0

    def __call__(self, force: bool = False) -> None:
        if self.run_dir.is_local or not os.path.exists(self.local_path):
            return
        if not force and time.monotonic() - self._last < self.every:
            return
        try:
            self.run_dir.write_bytes(STUDY_DB, Path(self.local_path).read_bytes())
            self._last = time.monotonic()
        except OSError as exc:  # the sweep goes on; the next upload may work
            log.warning("could not upload %s to %s: %s", STUDY_DB, self.run_dir.uri, exc)


@contextlib.contextmanager
def local_copy(run_dir: RunDir) -> Iterator[str | None]:
    """A local path to the run's ``study.db`` for reading (downloaded if remote), or None."""
    if run_dir.is_local:
        yield run_dir.join(STUDY_DB) if run_dir.exists(STUDY_DB) else None
        return
    if not run_dir.exists(STUDY_DB):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="stune-study-") as tmp:
        path = os.path.join(tmp, STUDY_DB)
        pafs.copy_files(run_dir.join(STUDY_DB), path, source_filesystem=run_dir.fs, destination_filesystem=pafs.LocalFileSystem())
        yield path


def load_study(path: str, name: str | None = None) -> optuna.Study:
    """The study in a ``study.db``: the one named ``name``, else the only one there."""
    storage = RDBStorage(sqlite_url(path), engine_kwargs=_ENGINE_KWARGS)
    names = optuna.get_all_study_names(storage)
    if not names:
        raise StudyError(f"{path} holds no Optuna study")
    chosen = name if name in names else names[0] if len(names) == 1 else None
    if chosen is None:
        raise StudyError(f"{path} holds several studies ({', '.join(names)}); none is named {name}")
    return optuna.load_study(study_name=chosen, storage=storage)


# -- warm start


def warm_start_trials(uri: str, space, config) -> tuple[list[optuna.trial.FrozenTrial], int]:
    """The finished trials of an earlier sweep re-expressed in this sweep's search space, ready
    for ``study.add_trials``; and how many were left out because they fall outside it."""
    other = RunDir.open(uri)
    if not other.exists(STUDY_DB):
        why = other.why_not_a_sweep() if not other.exists(SWEEP) else f"has no {STUDY_DB} (it predates study recording)"
        raise StudyError(f"--warm-start-from {uri} {why}; pass the RUN_DIR of an earlier 'stune sweep'")
    _warn_if_different(other, config)
    with local_copy(other) as path:
        study = load_study(path, other.name)
        finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    # Settings that change memory or speed, not the model (CachedMNRL's mini_batch_size, searched
    # by sweeps before 2026-12-06): an old trial's value for one says nothing against it.
    memory_only = {f"{spec.name}.{name}" for spec in LOSSES.values() for name in spec.unsearched}
    seeded, skipped = [], 0
    for old in finished:
        replay = _Replay(old.params)
        try:
            fixed = space(replay)
        except _Mismatch:
            skipped += 1
            continue
        extra = set(old.params) - set(replay.distributions) - set(fixed) - memory_only
        if extra or any(k in old.params and old.params[k] != v for k, v in fixed.items() if k not in memory_only):
            skipped += 1
            continue
        seeded.append(
            optuna.trial.create_trial(
                params={k: old.params[k] for k in replay.distributions},
                distributions=replay.distributions,
                value=old.value,
                intermediate_values=old.intermediate_values,
                user_attrs={**{k: v for k, v in old.user_attrs.items() if k != "trial_id"}, WARM_START_ATTR: uri,
                            "warm_start_number": old.number,
                            **({"warm_start_trial_id": old.user_attrs["trial_id"]} if "trial_id" in old.user_attrs else {})},
            )
        )
    return seeded, skipped


def _warn_if_different(other: RunDir, config) -> None:
    try:
        old = other.read_json(SWEEP)["config"]
    except (OSError, KeyError, ValueError):
        return
    new = config.model_dump(mode="json")
    changed = [k for k in ("model", "data", "max_steps", "num_train_epochs", "max_seq_length") if old.get(k) != new.get(k)]
    if changed:
        log.warning(
            "--warm-start-from %s: that sweep differs in %s; its scores guide the searcher all the same",
            other.uri, ", ".join(changed),
        )


class _Mismatch(Exception):
    pass


class _Replay:
    """Stands in for an Optuna trial: answers the search space's ``suggest_*`` calls with an old
    trial's values, and records this space's distributions; a value this space cannot
    produce raises ``_Mismatch``."""

    def __init__(self, params: dict[str, Any]):
        self.params = params
        self.distributions: dict[str, optuna.distributions.BaseDistribution] = {}

    def suggest_categorical(self, name, choices):
        return self._take(name, optuna.distributions.CategoricalDistribution(choices))

    def suggest_float(self, name, low, high, *, step=None, log=False):
        return self._take(name, optuna.distributions.FloatDistribution(low, high, step=step, log=log))

    def suggest_int(self, name, low, high, *, step=1, log=False):
        return self._take(name, optuna.distributions.IntDistribution(low, high, step=step, log=log))

    def _take(self, name, distribution):
        if name not in self.params:
            raise _Mismatch(name)
        value = self.params[name]
        try:
            inside = distribution._contains(distribution.to_internal_repr(value))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            raise _Mismatch(name)
        self.distributions[name] = distribution
        return value
