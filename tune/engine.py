"""Run a sweep: Optuna proposes, ASHA stops, Ray Tune runs ``trainers`` fine-tunes as trials.

``run_sweep`` is the Python API behind ``stune sweep``; it returns the same summary it writes
to ``summary.json``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import threading
import time
import warnings
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any, Callable

from trainers.config import input_paths, refuse_out_holding_inputs
from trainers.errors import StuneError
from tune.config import SweepConfig, parse_duration
from tune.rundir import PARTIAL_MARK, RAY_STATE_PREFIX, SUMMARY, SWEEP, RunDir, SweepRunning, trial_dirname
from tune.space import SearchSpace, fit_losses_to_data, initial_point_params, recipe_point
from tune.trainable import BEST_OBJECTIVE, OBJECTIVE

log = logging.getLogger("stune.sweep")

# Ray saves its experiment state every >= 10 s by default: a driver killed soon after trials
# finish would re-run them on --resume. Saving every second keeps them.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# Ray's TensorBoard logger costs the driver a 2.5 s tensorboardX import before the first trial;
# trials write their own TensorBoard events (RUN_DIR/trial_<id>/tensorboard). Ray's CSV and JSON
# loggers (result.json: stune report) are passed explicitly instead.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# A trial that cannot go on reports its error without a score (tune.faults): Ray must not
# insist on the searcher's metric in that one result.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")


class SweepError(StuneError):
    pass


def sweep_inputs(config: SweepConfig, warm_start_from: str | None = None) -> dict[str, str | None]:
    """What a sweep reads, by the key or flag that names it: no --out may hold one."""
    return {**input_paths(config), "--warm-start-from": warm_start_from}


def run_dir_uri(out: str, storage: str | None) -> str:
    """``--out``, or with ``--storage`` the folder of that name under it."""
    if not storage:
        return out
    from cluster.storage import join, resolve_storage

    return join(resolve_storage(storage), os.path.basename(os.path.normpath(out)))


def check_run_dir(out: str, *, storage: str | None, resume: bool, force: bool, inputs: dict[str, str | None] | None = None) -> RunDir:
    """Where the sweep would live; refuses to clobber a run, or a folder holding one of the
    sweep's ``inputs`` (even with ``force``), or to resume something that is not one. Changes nothing."""
    out = run_dir_uri(out, storage)
    run_dir = RunDir.open(out)
    if not resume and run_dir.is_local:  # --storage /shared/runs is a local folder too
        refuse_out_holding_inputs(run_dir.path, inputs or {})
    if (resume or force) and (holder := SweepRunning(run_dir).holder()):
        raise _running_there(out, holder, "--resume" if resume else "--force")
    if resume:
        if not run_dir.has_sweep():
            if run_dir.exists(SWEEP):
                raise SweepError(f"--resume: {out} holds no saved sweep state (it was stopped before its first trial "
                                 f"started): start that sweep again with --force")
            raise SweepError(f"--resume: {out} {run_dir.why_not_a_sweep()}; pass the RUN_DIR of an earlier 'stune sweep'")
    elif not force and not run_dir.is_empty():
        raise SweepError(f"--out {out} already exists; use --resume to continue it, or --force to start over there")
    return run_dir


def _running_there(out: str, holder: str, before: str) -> SweepError:
    return SweepError(f"--out {out}: a sweep is running there ({holder}); wait for it to end or stop it "
                      f"(Ctrl-C in its terminal) before {before}")


def prepare_run_dir(out: str, *, storage: str | None, resume: bool, force: bool, inputs: dict[str, str | None] | None = None) -> RunDir:
    """``check_run_dir``, then empties the run dir when ``force`` starts over there."""
    run_dir = check_run_dir(out, storage=storage, resume=resume, force=force, inputs=inputs)
    if force and not resume and not run_dir.is_empty():
        run_dir.fs.delete_dir_contents(run_dir.path)
    return run_dir


def run_sweep(
    config: SweepConfig,
    out: str,
    *,
    address: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    force: bool = False,
    verbose: bool = False,
    on_event: Callable | None = None,
    warm_start_from: str | None = None,
    mlflow: str | None = None,
) -> dict[str, Any]:
    """``warm_start_from``: RUN_DIR of an earlier sweep whose finished trials seed the searcher;
    ``mlflow``: an MLflow tracking URI to log every trial's params and metrics to."""
    started = time.time()
    if mlflow:
        from tune.exporter import absolute_mlflow_uri

        mlflow = absolute_mlflow_uri(mlflow)
    run_dir = prepare_run_dir(out, storage=storage, resume=resume, force=force, inputs=sweep_inputs(config, warm_start_from))
    created_here = not run_dir.exists()
    running = SweepRunning(run_dir)
    try:  # checked by check_run_dir a moment ago: only a sweep started since is caught here
        running.take()
    except RuntimeError as exc:
        raise _running_there(run_dir.uri, str(exc), "starting this one") from None
    try:
        return _sweep_in(run_dir, config, created_here=created_here, started=started, address=address, resume=resume,
                         verbose=verbose, on_event=on_event, warm_start_from=warm_start_from, mlflow=mlflow)
    finally:
        running.release()
        if created_here and run_dir.is_local and run_dir.exists() and run_dir.is_empty():  # only the lock was made here
            run_dir.fs.delete_dir(run_dir.path)


def _sweep_in(run_dir: RunDir, config: SweepConfig, *, created_here: bool, started: float, address: str | None, resume: bool,
              verbose: bool, on_event: Callable | None, warm_start_from: str | None, mlflow: str | None) -> dict[str, Any]:
    """The sweep itself, in a run dir ``run_sweep`` has checked and holds."""
    if resume and (warm_start_from or mlflow):
        raise SweepError("--resume continues a sweep as it was started; --warm-start-from and --mlflow apply to new sweeps only")
    saved = run_dir.read_json(SWEEP) if resume else None
    if saved:  # the sweep goes on exactly as it was defined
        config = SweepConfig.model_validate(saved["config"])

    from trainers.model import max_seq_length_warning, resolve_model_path
    from trainers.data import load_splits

    splits = load_splits(config, with_test=False)  # bad data fails before Ray starts
    if not saved:  # (a resumed sweep searches what it searched)
        config, unfit = fit_losses_to_data(config, splits.train.pairs)  # so does a listed loss the data cannot feed
        for loss, why in unfit.items():
            log.warning("%s left out of the search: it cannot train on data.train (%s)", loss, why)
    space = SearchSpace(config)  # and an initial point the space cannot take
    model_path = resolve_model_path(config.model)
    if not saved and (warning := max_seq_length_warning(config, model_path)):  # a resumed sweep said it before
        log.warning(warning)
    seed_trials = _warm_start(warm_start_from, config) if warm_start_from else None
    _mlflow_callbacks(mlflow, run_dir)  # a missing MLflow fails before Ray starts
    if resume:  # what a killed sweep may have left in the run dir, before Ray reads it
        if run_dir.is_local:
            _remove_partial_saves(run_dir.path)
        _set_aside_unreadable_ray_state(run_dir)

    import ray

    from cluster.connect import (
        connect, disconnect, ray_starts_shielded_from_ctrl_c, stop_ray_and_its_agents, unfit_resources,
    )

    # The untuned model is scored by the first trial, before it trains: its worker has torch and
    # the model loaded already. In the driver, importing torch and sentence-transformers and
    # evaluating took ~20 s of CPU on 2 cores beside the trials, and ~0.6 GB (bench/resources.py).
    # Only when no trial brought the score (the first one failed before it, or a resumed sweep
    # lacks it) does the driver score the model itself. sweep.json gets the score when it is
    # known; the summary waits for it.
    baseline = BackgroundBaseline(config, splits, known=saved and saved.get("baseline"))
    try:
        with ray_starts_shielded_from_ctrl_c():
            connection = connect(address, log_to_driver=verbose)
    except BaseException as e:  # e.g. Ctrl-C while Ray starts: stop what it started so far
        _say_where_ray_logs_are(stop_ray_and_its_agents(keep_ray_logs=_unexpected(e)))
        raise
    log.info("trials run on %s", connection.describe())
    from trainers.evaluation import selection_warnings

    # once the input is known good: a bad one gets one error line
    for warning in selection_warnings(splits, "trial"):
        log.warning(warning)
    from ray import tune

    gpus = config.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if short := unfit_resources(config.cpus_per_trial, gpus):
        asked = "; ".join(f"{kind.lower()}s_per_trial: {want:g}, but {'this machine' if connection.local else 'the largest node'} "
                          f"has {have:g} {kind}" for kind, (want, have) in short.items())
        if connection.local:  # this machine is all a private Ray will ever have: trials would wait forever
            _say_where_ray_logs_are(disconnect())
            hint = " (left out, gpus_per_trial is 1 on GPU machines, else 0)" if "GPU" in short else ""
            raise SweepError(f"{asked}: lower it in the sweep config{hint}, or pass --address of a cluster that has them")
        log.warning("%s: trials wait until such a node joins the cluster (an autoscaler's, or `stune cluster join`)", asked)
    for change in space.widened:
        log.info("search space widened to hold the config's own value: %s", change)
    if saved:
        sweep_doc = saved
    else:
        sweep_doc = {
            "config": config.model_dump(mode="json"), "space": space.describe(), "baseline": None,
            "warm_start_from": warm_start_from, "mlflow": mlflow,
        }
        run_dir.write_json(SWEEP, sweep_doc)
    baseline.when_done(lambda scores: _publish_baseline(scores, run_dir, sweep_doc, config, on_event))

    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    from tune.faults import Interrupted, StopOnTrialError, graceful_ctrl_c
    from tune.recorder import SweepRecorder
    from tune.trainable import pack_model, run_trial

    from tune.study import StudyMirror, StudyUploader, local_study_path, relocated, sqlite_url, study_name

    if not verbose:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_path = local_study_path(run_dir, resume=resume)
    upload_study = StudyUploader(run_dir, study_path)  # remote run dirs: study.db is uploaded

    def on_trial_event(kind, row, recorder):
        if kind == "base":  # the scores of the untuned model, from the trial that took them
            baseline.offer(row)
            return
        if kind == "base_trial_ended":
            # The trial that was to score the untuned model ended without its scores (it failed
            # first, e.g. to load the model, as every trial then will): the driver scores it.
            if not baseline.settled():
                baseline.start()
            return
        if kind == "done":
            upload_study()
        if on_event is not None:
            on_event(kind, row, recorder)

    recorder = SweepRecorder(run_dir, config.trials, on_event=on_trial_event)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base_config=config_for_trials(config),
            splits=splits,
            # A loopback-only Ray has every node on this machine: trials read the model folder in
            # place. Otherwise it is shipped through the object store, as nodes need not share
            # this disk (for MiniLM: ~0.55 s of CPU, 92 MB in the object store and 88 MB unpacked).
            model_bundle=os.path.abspath(model_path) if connection.loopback_only else pack_model(model_path),
            evaluations=config.evaluations_per_trial,
        ),
        {"cpu": config.cpus_per_trial, "gpu": gpus},
    )
    if resume:
        # Sweeps started before this module was renamed from tune/sweep.py pickled references to
        # it; an alias in sys.modules (not an attribute of the package: that is the tune.sweep API) finds them.
        sys.modules.setdefault("tune.sweep", sys.modules[__name__])
        with relocated(sqlite_url(study_path)):  # the searcher pickled in the Tuner, before its own state is restored
            tuner = tune.Tuner.restore(
                run_dir.uri if not run_dir.is_local else run_dir.path, trainable=trainable, resume_unfinished=True,
                resume_errored=True, storage_filesystem=run_dir.ray_storage_filesystem,
            )
        _reattach(tuner, recorder)
        replayed = replay_asha_history(tuner._local_tuner._tune_config.scheduler, run_dir)
        if replayed:
            log.info("ASHA's rungs rebuilt from %d results reported before the resume", replayed)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                # What max_concurrent_trials makes of the searcher, made here so that a --resume
                # can reach Ray's count of trials (CountTrialsThatExist).
                search_alg=SearchGenerator(ConcurrencyLimiter(
                    _searcher(config, space, run_dir, study_path=study_path, seed_trials=seed_trials),
                    max_concurrent=config.max_concurrent_trials,
                )),
                scheduler=_scheduler(config),
                num_samples=config.trials,
                reuse_actors=True,
                time_budget_s=parse_duration(config.time_budget) if config.time_budget else None,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=run_dir.name,
                storage_path=run_dir.storage_path,
                storage_filesystem=run_dir.ray_storage_filesystem,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                # Crashes (a killed worker, a lost node) are retried from the last checkpoint;
                # errors that would only repeat (NaN, out of memory) end the trial at once.
                failure_config=tune.FailureConfig(max_failures=config.max_failures),
                # A model the baseline could not load fails every trial the same way: stop at once.
                stop=StopOnTrialError(abort_when=baseline.failed),
                callbacks=[recorder, CSVLoggerCallback(), JsonLoggerCallback(), *_mlflow_callbacks(mlflow, run_dir)],
                # What a trial writes to its working dir (TensorBoard events) lands in RUN_DIR/trial_<id>/.
                sync_config=tune.SyncConfig(sync_artifacts=True),
                verbose=1 if verbose else 0,
            ),
        )
    try:
        from tune.progress import quiet_ray

        # relocated: a resumed searcher opens the study where it is now; quiet_ray: without
        # --verbose, the progress display (on_event) replaces Ray's tables and INFO logs.
        with relocated(sqlite_url(study_path)), (contextlib.nullcontext() if verbose else quiet_ray()), \
                graceful_ctrl_c() as ctrl_c:
            tuner.fit()
    except BaseException:
        baseline.abandon()
        raise
    else:
        if ctrl_c.interrupted:
            baseline.abandon()
        else:  # Scoring while Ray shuts down made Ray's core worker end the process (exit 1, no message).
            baseline.wait_if_started()
            # Trials still written as running in study.db: cut by the time budget (complete, with their
            # best score so far), or lost to a killed driver and never resumed (failed).
            cut = {tid: float(row[OBJECTIVE]) for tid, row in recorder.rows.items()
                   if row.get("status") == "running" and row.get(OBJECTIVE) not in (None, "")}
            StudyMirror(study_path, study_name(run_dir)).end_running(cut)
    finally:
        failure = sys.exc_info()[1]  # on its way out of tuner.fit() or the lines after it
        _say_where_ray_logs_are(disconnect(keep_ray_logs=failure is not None and _unexpected(failure)))
        upload_study(force=True)
        if run_dir.is_local:
            _remove_partial_saves(run_dir.path)
    # The wall time of a resumed sweep counts its earlier runs (Ray's time budget does too).
    sweep_doc["elapsed_seconds"] = round(float(sweep_doc.get("elapsed_seconds") or 0.0) + time.time() - started, 1)
    if ctrl_c.interrupted:  # Ray saved its state: the run dir resumes; no summary of a partial sweep
        with contextlib.suppress(Exception):  # the hint to resume matters more than this figure
            run_dir.write_json(SWEEP, sweep_doc)
        raise Interrupted(ctrl_c.signum)
    baseline.start()  # no trial brought the scores (none ran, or resumed trials): scored now, with Ray down
    # Trials that fail at once (the model does not load for them either) can end the sweep before
    # the baseline has: its outcome decides what is left of the run dir.
    if baseline.failed(wait=True) and not resume:
        # Nothing half-written is left of a sweep that could not run.
        (run_dir.fs.delete_dir if created_here else run_dir.fs.delete_dir_contents)(run_dir.path)
    scores = baseline.result()
    if config.time_budget:
        recorder.close_out_of_time()
    run_dir.write_json(SWEEP, sweep_doc)
    summary = write_summary(
        run_dir, config, space, recorder, scores, eval_pairs=len(splits.eval.pairs), seconds=sweep_doc["elapsed_seconds"]
    )
    return summary


def config_for_trials(config: SweepConfig) -> dict[str, Any]:
    """The TrainConfig part of a sweep config: what every trial starts from."""
    from trainers.config import TrainConfig

    return {k: v for k, v in config.model_dump().items() if k in TrainConfig.model_fields}


class BackgroundBaseline:
    """The untuned model's eval scores: ``offer``ed by the trial that scored them, or computed in
    a daemon thread (a Ctrl-C does not wait for it) once ``start`` is called, whichever comes
    first; ``known``: a resumed sweep's, when it has them.

    A sweep that ends without a summary (Ctrl-C, an error) ``abandon``s it: its outcome is then
    neither written nor logged. The thread cannot be stopped, and a score still being computed
    while the process exits failed on CI with a spurious "could not be scored" line after the
    resume command (an import cut short by the exit)."""

    def __init__(self, config: SweepConfig, splits, *, known: dict[str, float] | None = None):
        self._config, self._splits, self._known = config, splits, known
        self._started, self._abandoned = threading.Event(), threading.Event()
        self._publishing = threading.Lock()
        self._future: Future = Future()
        threading.Thread(target=self._run, name="stune-baseline", daemon=True).start()

    def start(self) -> None:
        self._started.set()

    def offer(self, scores: dict[str, float]) -> None:
        self._settle(scores)
        self._started.set()  # the thread wakes, finds them known, and scores nothing

    def settled(self) -> bool:
        return self._future.done()

    def wait_if_started(self) -> None:
        if self._started.is_set():
            futures_wait([self._future])

    def abandon(self) -> None:
        with self._publishing:  # one being published (sweep.json being written) finishes first
            self._abandoned.set()
        self._started.set()

    def when_done(self, publish: Callable[[dict[str, float]], None]) -> None:
        """``publish(scores)`` once they are known; a failure is logged instead."""
        def on_done(future: Future) -> None:
            with self._publishing:
                if self._abandoned.is_set():
                    return
                if future.exception() is not None:
                    log.error("the untuned model could not be scored (%s); stopping the sweep", describe_error(future.exception()))
                else:
                    publish(future.result())
        self._future.add_done_callback(on_done)

    def failed(self, wait: bool = False) -> bool:
        if wait:
            futures_wait([self._future])
        return self._future.done() and self._future.exception() is not None

    def result(self) -> dict[str, float]:
        return self._future.result()

    def _run(self) -> None:
        try:
            scores = self._score()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever asks the future
            self._settle(error=exc)
        else:
            if scores is not None:
                self._settle(scores)

    def _settle(self, scores: dict[str, float] | None = None, error: BaseException | None = None) -> None:
        with contextlib.suppress(InvalidStateError):  # the first outcome stands: a trial's offer or the thread's own
            if error is not None:
                self._future.set_exception(error)
            else:
                self._future.set_result(scores)

    def _score(self) -> dict[str, float] | None:
        _import_driver_modules()
        if self._known:
            return self._known
        self._started.wait()
        if self._future.done():  # offered by a trial
            return None
        if self._abandoned.is_set():
            raise CancelledError("the sweep stopped before the untuned model was scored")
        import torch

        from tune.exporter import score_base_model

        # One core: the rest belong to the trials starting beside it on a local Ray.
        torch.set_num_threads(1)
        return score_base_model(self._config, {"eval": self._splits.eval})["eval"]


def describe_error(exc: BaseException) -> str:
    """``exc``, and the error it was raised from when that says more: transformers' lazy imports
    wrap the one that matters in "Could not import module ...; set the logging verbosity to DEBUG"."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    return str(exc) if root is exc else f"{exc}; caused by {type(root).__name__}: {root}"


# What the driver needs after Ray has started, imported while it waits on that start (~5 s on 2
# cores; these took ~4 s of the driver's time after it): Ray Tune and Optuna; the integrations Ray
# Tune's usage tags import before any trial (MLflow's alone took 1.6 s); the study's tables
# (SQLAlchemy models, alembic).
_DRIVER_MODULES = (
    "ray.tune", "ray.tune.search.optuna", "tune.study", "optuna.storages._rdb.models", "alembic.command",
    "ray.air.integrations.mlflow", "ray.air.integrations.wandb", "ray.air.integrations.comet", "ray.tune.logger.aim",
)


def _import_driver_modules() -> None:
    import importlib

    for module in _DRIVER_MODULES:
        with contextlib.suppress(Exception):  # an optional integration that fails: Ray's to report, later
            importlib.import_module(module)


def _publish_baseline(baseline: dict[str, float], run_dir: RunDir, sweep_doc: dict, config: SweepConfig, on_event: Callable | None) -> None:
    if sweep_doc.get("baseline") != baseline:
        sweep_doc["baseline"] = baseline
        run_dir.write_json(SWEEP, sweep_doc)
    log.info("baseline (untuned %s): eval %s %.4f", config.model or "bundled all-MiniLM-L6-v2", OBJECTIVE, baseline[OBJECTIVE])
    if on_event is not None:
        on_event("baseline", baseline, None)


def _warm_start(uri: str, config: SweepConfig) -> list:
    from tune.study import warm_start_trials

    trials, skipped = warm_start_trials(uri, SearchSpace(config), config)
    log.info(
        "warm start: the searcher starts from %d finished trials of %s%s", len(trials), uri,
        f" ({skipped} outside this search space left out)" if skipped else "",
    )
    return trials


def _unexpected(error: BaseException) -> bool:
    """An error worth Ray's logs: not Ctrl-C, not one of stune's one-line errors."""
    from cluster.errors import ClusterError

    return not isinstance(error, (KeyboardInterrupt, StuneError, ClusterError))


def _say_where_ray_logs_are(path: str | None) -> None:
    if path:
        log.warning("the local Ray's logs are kept in %s", path)


def _remove_partial_saves(path: str) -> None:
    """Ray saves its searcher and search state to a temporary file it then renames, in a staging
    folder it copies into the run dir in the background: a copy that ran while a save was under
    way, or a driver killed mid-save, leaves that file in the run dir for good; so does a copy
    into it cut by a kill (rundir.PARTIAL_MARK). Run by the sweep holding the run dir's lock, with
    its Ray stopped or not yet started: nothing else is writing there."""
    run = Path(path)
    leftovers = [*run.glob(".*-tmp-searcher-state-*"), *run.glob("tmp-search_gen_state-*"), *run.rglob(f".*{PARTIAL_MARK}*")]
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)


def _set_aside_unreadable_ray_state(run_dir: RunDir) -> None:
    """Ray resumes from the newest ``experiment_state-*.json`` in the run dir; one it cannot read
    makes it log "Failed to restore the run state" and start the sweep over, in the same run dir
    (seen after a driver was killed while copying it there, before rundir._ReplacedOnClose). An
    unreadable one is renamed aside, so that Ray resumes from the newest it can read."""
    import fnmatch

    import pyarrow.fs as pafs

    entries = run_dir.fs.get_file_info(pafs.FileSelector(run_dir.path))
    names = sorted(e.base_name for e in entries if fnmatch.fnmatch(e.base_name, f"{RAY_STATE_PREFIX}-*.json"))
    for name in reversed(names):
        try:
            run_dir.read_json(name)  # Ray's format is JSON, with its pickled objects as strings inside
            return
        except ValueError:
            run_dir.fs.move(run_dir.join(name), run_dir.join(f".unreadable-{name}"))
            log.warning("%s in the run dir cannot be read (cut short by a kill?): set aside as .unreadable-%s", name, name)
    if names:
        raise SweepError(f"--resume: Ray's saved state of {run_dir.uri} cannot be read (set aside as .unreadable-*); "
                         "its finished trials are listed in trials.csv; start the sweep again with --force")


def _searcher(config: SweepConfig, space: SearchSpace, run_dir: RunDir, *, study_path: str | None = None, seed_trials: list | None = None):
    import optuna

    from tune.faults import ResumableOptunaSearch

    startup = config.random_startup_trials
    sampler = {
        # constant_liar: parallel workers do not all get the same proposal while trials run;
        # group: TPE models the parameters of each loss together (conditional space).
        "tpe": lambda: optuna.samplers.TPESampler(
            seed=config.seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True
        ),
        "random": lambda: optuna.samplers.RandomSampler(seed=config.seed),
        # These two model the parameters every trial has; each loss's own are sampled apart by design.
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=config.seed, n_startup_trials=startup, warn_independent_sampling=False),
        "gp": lambda: optuna.samplers.GPSampler(seed=config.seed, n_startup_trials=startup, warn_independent_sampling=False),
    }[config.searcher]
    with warnings.catch_warnings():  # multivariate/group are "experimental" to Optuna: chosen here on purpose
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = sampler()
    if config.initial_points is None:
        # The config's own recipe first, so the sweep starts from what `stune train` gives; a warm
        # start instead begins from the old sweep's trials, which tell the searcher more.
        point = None if seed_trials else recipe_point(config, space)
        points = [point] if point else []
    else:
        points = [initial_point_params(p, config.loss.name) for p in config.initial_points]
    from tune.study import StudyMirror, study_name

    # The study is searched in memory and recorded in RUN_DIR/study.db as trials go
    # (optuna-dashboard, stune report, warm starts): see tune/study.py.
    searcher = ResumableOptunaSearch(
        space, metric=BEST_OBJECTIVE, mode="max", sampler=sampler, points_to_evaluate=points or None,
        study_name=study_name(run_dir),
    )
    searcher.mirror = StudyMirror(study_path, study_name(run_dir)) if study_path else None
    searcher.score_base_with_next_trial = True
    if searcher.mirror is not None:
        searcher.mirror.study()  # study.db exists from the start, as the dashboard and report expect
    if seed_trials:  # finished trials of an earlier sweep: TPE models them from the first trial on
        searcher._ot_study.add_trials(seed_trials)
        if searcher.mirror is not None:
            searcher.mirror.seed(seed_trials)
    return searcher


def _mlflow_callbacks(uri: str | None, run_dir: RunDir) -> list:
    """Ray's MLflow logger: one MLflow run per trial (params, every reported metric), in an
    experiment named after the run dir."""
    if not uri:
        return []
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise SweepError("--mlflow needs MLflow: pip install 'stune[mlflow]'") from None
    from tune.exporter import mlflow_problem

    if problem := mlflow_problem(uri):
        raise SweepError(problem)
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from tune.space import param_columns

    class TrialParamsToMLflow(MLflowLoggerCallback):
        """Logs a trial's params as trials.csv names them (``margin``, not ``TripletLoss.margin``),
        without stune's note to the first trial (``stune_score_base``)."""

        def setup(self, *args, **kwargs):
            super().setup(*args, **kwargs)
            log_params = self.mlflow_util.log_params
            self.mlflow_util.log_params = lambda run_id, params_to_log: log_params(run_id=run_id, params_to_log=param_columns(params_to_log))

    return [TrialParamsToMLflow(tracking_uri=uri, experiment_name=run_dir.name, tags={"stune_run_dir": run_dir.uri}, save_artifact=False)]


def _scheduler(config: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if config.scheduler == "none":
        return FIFOScheduler()
    return ASHAScheduler(
        metric=BEST_OBJECTIVE,
        mode="max",
        time_attr="training_iteration",  # one iteration = one evaluation
        # A trial that reaches max_t is stopped: it must be the trial's last evaluation (or, where
        # that is only known to the trial, beyond any).
        max_t=config.evaluations or 10**6,
        grace_period=config.grace_period,
        reduction_factor=config.asha.reduction_factor,
    )


def replay_asha_history(scheduler, run_dir: RunDir) -> int:
    """Ray does not save ASHA's rungs with the experiment: restored, they are empty, and the trials
    run after a ``--resume`` are compared only with each other, so trials that ASHA would have
    stopped run to their end. This feeds every result reported before the resume back into the
    rungs, in the order each trial reported them, as ASHA recorded them live; returns how many."""
    from types import SimpleNamespace

    from ray.tune.schedulers import AsyncHyperBandScheduler

    if not isinstance(scheduler, AsyncHyperBandScheduler):
        return 0
    (bracket,) = scheduler._brackets  # stune's ASHA has a single bracket
    time_attr, metric, sign = scheduler._time_attr, scheduler._metric, scheduler._metric_op
    replayed = 0
    for trial_id, results in run_dir.trial_results().items():
        trial = SimpleNamespace(trial_id=trial_id)
        for result in results:
            if isinstance(result.get(time_attr), int) and isinstance(result.get(metric), (int, float)):
                bracket.on_result(trial, result[time_attr], sign * result[metric])
                replayed += 1
    return replayed


def _reattach(tuner, recorder) -> None:
    """After restore, this run's recorder (progress display, the run dir where it is now) takes
    the place of the pickled one; Ray calls its ``setup``, which reloads trials.csv and best.json,
    so the summary written after ``fit`` sees every trial, from before and after the restore.
    ``CountTrialsThatExist`` counts its kept trials in the number Ray runs; ``KeepRunFilesCurrent``
    stops Ray's restored copies of sweep.json and best.json from being uploaded over what this
    run writes to them."""
    from ray.tune.search import SearchGenerator

    from tune.faults import CountTrialsThatExist
    from tune.recorder import BEST_JSON, KeepRunFilesCurrent

    run_config = tuner._local_tuner._run_config
    ours = (type(recorder), KeepRunFilesCurrent, CountTrialsThatExist)
    callbacks = [c for c in run_config.callbacks or [] if not isinstance(c, ours)]
    run_config.callbacks = [recorder, KeepRunFilesCurrent((SWEEP, BEST_JSON, SUMMARY)), *callbacks]
    search_alg = tuner._local_tuner._tune_config.search_alg
    if isinstance(search_alg, SearchGenerator):  # sweeps started before 2026-12-07 pickled the searcher alone
        run_config.callbacks.append(CountTrialsThatExist(search_alg, recorder.kept_trial_ids))


def write_summary(
    run_dir: RunDir, config: SweepConfig, space: SearchSpace, recorder, baseline, *, eval_pairs: int, seconds: float
) -> dict[str, Any]:
    from trainers.evaluation import spearman_interval

    best = recorder.best
    counts = recorder.counts()
    interval = spearman_interval(best[OBJECTIVE], eval_pairs) if best else None
    summary = {
        "objective": OBJECTIVE,
        "best": best,
        "eval_pairs": eval_pairs,
        "best_interval_95": [round(x, 4) for x in interval] if interval else None,
        "baseline": baseline,
        "beats_baseline": bool(best and best[OBJECTIVE] > baseline[OBJECTIVE]),
        "counts": counts,
        "trials_planned": config.trials,
        "search_space": space.describe(),
        "searcher": config.searcher,
        "scheduler": config.scheduler,
        "wall_seconds": round(seconds, 1),
        "run_dir": run_dir.uri,
    }
    run_dir.write_json(SUMMARY, summary)
    return summary


def sweep(config: SweepConfig | dict | str | None = None, out: str | None = None, **kwargs) -> dict[str, Any]:
    """Notebook entry point: ``from tune import sweep; summary = sweep({"trials": 8})``. Relative
    paths in a dict are read in the working directory (and recorded absolute, as the CLI does); a
    line per finished trial is printed unless ``on_event`` is given."""
    from tune.config import load_sweep_config
    from tune.progress import progress_for
    from trainers.config import parse_config, with_overrides

    if isinstance(config, dict):
        config = parse_config(SweepConfig, with_overrides(copy.deepcopy(config), {}))
    elif config is None or isinstance(config, str):
        config = load_sweep_config(config)
    out = out or default_run_dir()
    if "on_event" in kwargs:
        return run_sweep(config, out, **kwargs)
    budget = parse_duration(config.time_budget) if config.time_budget else None
    with progress_for(config.trials, verbose=kwargs.get("verbose", False), live=False, time_budget_s=budget) as on_event:
        return run_sweep(config, out, on_event=on_event, **kwargs)


def default_run_dir() -> str:
    return os.path.join("runs", time.strftime("sweep-%Y%m%d-%H%M%S"))
