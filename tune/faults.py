"""How a sweep survives what goes wrong (the guarantees are listed in docs/reliability.md).

- A trial that *cannot* go on (NaN/inf loss, collapsed eval, out of memory, bad data for its
  loss: any ``StuneError`` inside the trial) reports the reason once, as a result holding
  ``ERROR_KEY``; ``StopOnTrialError`` ends the trial there. Ray's ``FailureConfig`` retries are
  kept for crashes (a killed worker, a lost node), which resume from the last checkpoint;
  retrying a deterministic error would only fail the same way again, ``max_failures`` times.
- Ctrl-C (``graceful_ctrl_c``): Ray Tune stops the trials and saves its experiment state one last
  time, then ``run_sweep`` raises ``KeyboardInterrupt`` instead of writing a summary, and the CLI
  prints the ``--resume`` command (``resume_hint``). A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Iterator

from ray.tune import Stopper

from tune.trainable import ERROR_KEY

log = logging.getLogger("stune.sweep")


class StopOnTrialError(Stopper):
    """Stops a trial at the result that carries its error (before the scheduler or the searcher
    see it: Optuna records the trial as pruned, at its last good evaluation if it had one)."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return bool(result.get(ERROR_KEY))

    def stop_all(self) -> bool:
        return False


@dataclass
class Interruption:
    interrupted: bool = False


@contextlib.contextmanager
def graceful_ctrl_c() -> Iterator[Interruption]:
    """While ``Tuner.fit`` runs: the first Ctrl-C asks Ray Tune to stop gracefully (it saves the
    experiment state, so the run directory stays resumable) and is remembered; a second one raises
    ``KeyboardInterrupt`` at once.

    Ray's own SIGINT handler stops just as gracefully but lets ``fit`` return as if the sweep had
    finished; here Ray's handler is turned off (``TUNE_DISABLE_SIGINT_HANDLER``) and called by
    ours, through the SIGUSR1 handler Ray Tune registers for the same purpose during ``fit``.
    """
    state = Interruption()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield state
        return
    previous = signal.getsignal(signal.SIGINT)
    previous_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"

    def on_sigint(signum, frame):
        if state.interrupted:
            raise KeyboardInterrupt
        state.interrupted = True
        ray_stop = signal.getsignal(signal.SIGUSR1)
        if not callable(ray_stop):  # fit() has not started yet (or has ended): nothing to save
            raise KeyboardInterrupt
        log.warning("stopping: saving the sweep's state so that it can be resumed (Ctrl-C again to stop at once)")
        ray_stop(signum, frame)
        # Ray ends by suggesting Tuner.restore(...); stune prints its own --resume command instead.
        logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
        if previous_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous_env


@contextlib.contextmanager
def ray_starts_shielded_from_ctrl_c() -> Iterator[None]:
    """Around ``ray.init``: SIGINT is blocked, and the processes Ray starts (GCS, raylet, its
    agents, later the workers) inherit the block. A terminal's Ctrl-C goes to the whole process
    group: without this, it killed the raylet half-way and left its agents running with no parent.
    Now it reaches stune alone, when the block ends (a Ctrl-C meanwhile is kept pending, not lost),
    and stune stops Ray in order."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    # The mask is per thread and another thread may take the signal: a handler that only notes it
    # keeps ray.init from being cut half-way whichever thread does.
    pending: list[int] = []
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)  # runs the handler of a pending SIGINT
        signal.signal(signal.SIGINT, previous_handler)
    if pending:
        raise KeyboardInterrupt


def stop_ray_and_its_agents() -> None:
    """``ray.shutdown`` (it stops the processes of a local Ray even when its start was cut short,
    which ``cluster.connect.disconnect`` skips), then end whatever the local raylet had started
    and left running: stopped while its agents still start up, Ray leaves them behind, parentless."""
    import psutil
    import ray

    started: list = []
    try:  # Ray's own record of the processes it started here (private; best effort)
        from ray._private import ray_constants, worker

        node = worker._global_node
        for info in (node.all_processes if node is not None else {}).get(ray_constants.PROCESS_TYPE_RAYLET, []):
            started += psutil.Process(info.process.pid).children(recursive=True)
    except Exception:  # noqa: BLE001
        log.debug("could not list the raylet's processes", exc_info=True)
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - already failing; the original error is the one to show
        log.debug("ray.shutdown failed", exc_info=True)
    _, alive = psutil.wait_procs(started, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


def resume_hint(out: str, storage: str | None = None) -> str:
    """What to tell a user whose sweep was interrupted: the ``--resume`` command, or, when the
    sweep had not started yet, that there is nothing to resume."""
    storage_flag = f" --storage {storage}" if storage else ""
    try:
        from tune.rundir import RunDir

        uri = out  # resolved as prepare_run_dir does
        if storage:
            from cluster.storage import join, resolve_storage

            uri = join(resolve_storage(storage), os.path.basename(os.path.normpath(out)))
        run_dir = RunDir.open(uri)
        resumable = run_dir.has_sweep()
        empty = run_dir.is_empty()
    except Exception:  # noqa: BLE001 - a hint must never fail; assume the usual case
        resumable, empty = True, False
    if resumable:
        return f"interrupted; the run directory is kept, continue with: stune sweep --resume --out {out}{storage_flag}"
    again = "" if empty else f" (add --force: --out {out} holds files from this attempt)"
    return f"interrupted before the first trial started; nothing to resume: run the same stune sweep command again{again}"
