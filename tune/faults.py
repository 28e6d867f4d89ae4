"""How a sweep survives what goes wrong (the guarantees are listed in docs/reliability.md).

- A trial that *cannot* go on (NaN/inf loss, collapsed eval, out of memory, bad data for its
  loss: any ``StuneError`` inside the trial) reports the reason once, as a result holding
  ``ERROR_KEY``; ``StopOnTrialError`` ends the trial there. Ray's ``FailureConfig`` retries are
  kept for crashes (a killed worker, a lost node), which resume from the last checkpoint;
  retrying a deterministic error would only fail the same way again, ``max_failures`` times.
- A driver killed between Ray's saves of the experiment and of the searcher: the resumed searcher
  skips the results of a trial it never saw (``ResumableOptunaSearch``) instead of failing.
- Ctrl-C or SIGTERM (``graceful_ctrl_c``; SIGTERM is how SLURM's scancel or time limit and
  Kubernetes stop a job): Ray Tune stops the trials and saves its experiment state one last
  time, then ``run_sweep`` raises ``Interrupted`` (a ``KeyboardInterrupt``) instead of writing a
  summary, and the CLI prints the ``--resume`` command (``resume_hint``). A second one stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import optuna
from ray.tune import Callback, Stopper
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from trainers.errors import Interrupted, on_stop_signals
from tune.space import SCORE_BASE
from tune.trainable import ERROR_KEY

if TYPE_CHECKING:
    from tune.study import StudyMirror

log = logging.getLogger("stune.sweep")


class StopOnTrialError(Stopper):
    """Stops a trial at the result that carries its error (before the scheduler or the searcher
    see it: Optuna records the trial as pruned, at its last good evaluation if it had one)."""

    def __init__(self, abort_when: Callable[[], bool] | None = None):
        self.abort_when = abort_when  # and the whole sweep, once this says so

    def __call__(self, trial_id: str, result: dict) -> bool:
        return bool(result.get(ERROR_KEY))

    def stop_all(self) -> bool:
        return bool(self.abort_when and self.abort_when())

    def __getstate__(self) -> dict:
        # Ray saves the stopper with the experiment; what abort_when watches lives in this process only.
        return {"abort_when": None}


class ResumableOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, with its study in memory and copied to ``study.db`` (``mirror``) as
    trials start, report and finish, and resumable after a killed driver. Ray can save its experiment state with
    trials started or finished after it saved the searcher's. Then:
    - the results of a trial the searcher has no record of are not fed to Optuna, where Ray's
      raised KeyError and every ``--resume`` died at that trial's first result; the trial runs
      and is recorded as any other;
    - trials that finished after that save, and so are in ``study.db`` only, are given back to
      the restored study, and the sampler is reseeded: with its saved random state and the same
      trials it would propose again what it proposed after the save (``CountTrialsThatExist``
      makes Ray count them too)."""

    mirror: "StudyMirror | None" = None  # none in searchers pickled before 2026-12-07 (their study is in SQLite)
    # The next trial it proposes scores the untuned model before it trains (SCORE_BASE): a trial
    # worker has torch and the model loaded, where the driver would import and load them again.
    score_base_with_next_trial: bool = False

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if self.mirror is not None and config is not None:
            self.mirror.start(trial_id, self._frozen(trial_id))
        if self.score_base_with_next_trial and config is not None:
            self.score_base_with_next_trial = False
            config = {**config, SCORE_BASE: True}
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._knows(trial_id) and trial_id not in self._completed_trials:
            super().on_trial_result(trial_id, result)
        if self.mirror is not None and self.metric in result:
            self.mirror.report(trial_id, result[TRAINING_ITERATION], result[self.metric])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not self._knows(trial_id):
            log.info("trial %s is not in the searcher's saved state: its result does not inform the search", trial_id)
            if self.mirror is not None:
                self.mirror.finish_unknown(trial_id, (result or {}).get(self.metric), error)
            return
        if trial_id in self._completed_trials:  # run again after a resume; the study has it already
            return
        super().on_trial_complete(trial_id, result, error)
        if self.mirror is not None:
            self.mirror.finish(trial_id, self._frozen(trial_id))

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if self.mirror is None:
            return
        taken_back = 0
        for trial_id, finished in self.mirror.finished_trials().items():
            if trial_id in self._completed_trials:
                continue
            if trial_id in self._ot_trials:  # running when the searcher was saved
                value = finished.value if finished.state == optuna.trial.TrialState.COMPLETE else None
                self._ot_study.tell(self._ot_trials[trial_id], value, state=finished.state)
            else:  # started after it
                self._ot_study.add_trial(finished)
            self._completed_trials.add(trial_id)
            taken_back += 1
        if taken_back:
            log.info("the searcher took back %d trial(s) that finished after its last save", taken_back)
        self._ot_study.sampler.reseed_rng()

    def _frozen(self, trial_id: str) -> optuna.trial.FrozenTrial:
        return self._ot_study.get_trials(deepcopy=False)[self._ot_trials[trial_id].number]

    def _knows(self, trial_id: str) -> bool:
        return trial_id in self._ot_trials or trial_id in self._completed_trials


class CountTrialsThatExist(Callback):
    """On ``--resume``, before Ray asks the searcher for its first new trial: Ray's count of the
    trials it created, which decides how many more it creates, becomes the number of trials that
    exist: those Ray restored, and those that finished after its last save and so are in
    trials.csv only (``kept``: they are kept, with their scores). Ray restores the count of its last
    save, and its files in the run dir need not even come from one save (a killed driver's last
    upload can stop between them): a 50-trial sweep resumed after a kill ran 51 (CI, 2026-12-07).
    Trials lost with the driver (running, in neither) are not counted: new ones take their place."""

    def __init__(self, search_alg: SearchGenerator, kept: Callable[[], set[str]]):
        self.search_alg, self.kept, self.pending = search_alg, kept, True

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if not self.pending:
            return
        self.pending = False
        exist = {trial.trial_id for trial in trials} | self.kept()
        state = self.search_alg.get_state()
        if state["counter"] != len(exist):
            log.info("Ray's count of trials created set from %d to the %d that exist", state["counter"], len(exist))
            self.search_alg.set_state({**state, "counter": len(exist)})


@dataclass
class Interruption:
    interrupted: bool = False
    signum: int = signal.SIGINT



@contextlib.contextmanager
def graceful_ctrl_c() -> Iterator[Interruption]:
    """While ``Tuner.fit`` runs: the first Ctrl-C or SIGTERM asks Ray Tune to stop gracefully (it
    saves the experiment state, so the run directory stays resumable) and is remembered; a second
    one raises ``Interrupted`` at once.

    Ray's own SIGINT handler stops just as gracefully but lets ``fit`` return as if the sweep had
    finished; here Ray's handler is turned off (``TUNE_DISABLE_SIGINT_HANDLER``) and called by
    ours, through the SIGUSR1 handler Ray Tune registers for the same purpose during ``fit``.
    """
    state = Interruption()
    previous_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"

    def on_sigint(signum, frame):
        if state.interrupted:
            raise Interrupted(signum)
        state.interrupted, state.signum = True, signum
        ray_stop = signal.getsignal(signal.SIGUSR1)
        if not callable(ray_stop):  # fit() has not started yet (or has ended): nothing to save
            raise Interrupted(signum)
        log.warning("%s: stopping; saving the sweep's state so that it can be resumed (Ctrl-C again to stop at once)",
                    Interrupted(signum).signal_name)
        # Ray repeats that line in its own words, warns that trials stopped before their first
        # result have no metrics, and ends by suggesting Tuner.restore(...); stune prints its own
        # --resume command instead.
        for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
            logging.getLogger(name).setLevel(logging.ERROR)
        ray_stop(signum, frame)

    try:
        with on_stop_signals(on_sigint):
            yield state
    finally:
        if previous_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous_env


def resume_hint(out: str, storage: str | None = None) -> str:
    """What to tell a user whose sweep was interrupted: the ``--resume`` command, or, when the
    sweep had not started yet, that there is nothing to resume."""
    storage_flag = f" --storage {shlex.quote(storage)}" if storage else ""
    try:
        from tune.rundir import RunDir

        from tune.engine import run_dir_uri

        run_dir = RunDir.open(run_dir_uri(out, storage))
        resumable = run_dir.has_sweep()
        empty = run_dir.is_empty()
    except Exception:  # noqa: BLE001 - a hint must never fail; assume the usual case
        resumable, empty = True, False
    if resumable:
        return f"interrupted; the run directory is kept, continue with: stune sweep --resume --out {shlex.quote(out)}{storage_flag}"
    again = "" if empty else f" (add --force: --out {out} holds files from this attempt)"
    return f"interrupted before the first trial started; nothing to resume: run the same stune sweep command again{again}"
