"""The one piece of glue between Ray Tune and ``trainers``: a function trainable that runs
``trainers.train.fine_tune`` and turns each evaluation into ``ray.tune.report`` with a
checkpoint, and a Ray checkpoint back into ``resume_from``."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import socket
import tarfile
import tempfile
from pathlib import Path
from typing import Any

# reuse_actors: before a trial's actor takes the next trial, Ray waits this long for the old
# trial's training thread to stop, which happens at its next report. Ray's 2 s default is shorter
# than one CPU training step or evaluation under load; when it runs out, Ray errors the *new*
# trial ("Could not re-use actor ... reset_config()", seen in bench/quality.py on a loaded
# machine). Set here, in the module every trial actor imports, so it holds on remote nodes too.
os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "600")


def _import_training_libraries_in_trial_worker() -> None:
    """In a Ray worker, import torch and sentence-transformers (~5 s) as soon as Ray loads this
    module to create the trial's actor, while the driver still sets the trial up, not once the
    trial runs: the first training step came ~1.5 s sooner in 3 A/B pairs (bench/overhead.py,
    1 trial). Not in a thread: transformers' lazy modules broke when imported from two threads
    at once ("cannot import name 'TrainerCallback'"). Not in the driver, which never needs them:
    the first trial scores the untuned model (tune.space.SCORE_BASE)."""
    try:
        import ray

        if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
            return
        import gc

        import torch  # noqa: F401
        from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer  # noqa: F401

        # The ~550k objects these imports made live as long as the worker: moved out of the
        # collector's reach, the full collection that ends every trial (_release_memory) takes
        # 10-20 ms instead of ~0.3 s, paid at each trial hand-over (bench/overhead.py).
        gc.freeze()
    except Exception:  # noqa: BLE001 - an optimisation only: run_trial's own imports report the error
        pass


_import_training_libraries_in_trial_worker()

OBJECTIVE = "spearman_cosine"
BEST_OBJECTIVE = "best_spearman_cosine"  # the trial's best so far: what ASHA and Optuna rank by
BEST_NOTE = "stune_best.txt"
EVAL_NOTE = "stune_eval.json"  # the evaluation a checkpoint belongs to, read by the driver's recorder
# A trial that cannot go on reports {ERROR_KEY: reason} once, as its last result (tune.faults).
ERROR_KEY = "stune_error"
# The untuned model's eval scores, in every result of the trial that scored them (tune.space.SCORE_BASE).
BASE_PREFIX = "base_"
# Written by the recorder into the last checkpoint of a trial that had finished when the driver
# was killed but that Ray's saved state still lists as running: the resumed trial ends at once.
FINISHED_NOTE = "stune_finished.txt"


def pack_model(path: str):
    """A model folder as (content hash, tar archive), to ship through Ray's object store to
    nodes that do not share the driver's filesystem. The archive is a numpy byte array, which a
    trial gets without a copy (Ray maps it from the node's object store): as ``bytes``, every
    trial held its own 90 MB copy of MiniLM's archive for its whole run (bench/resources.py)."""
    import numpy as np

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname="model")
    data = buffer.getbuffer()
    return hashlib.sha256(data).hexdigest()[:16], np.frombuffer(data, dtype=np.uint8)


def unpack_model(digest: str, data) -> str:
    """Extract once per node into a cache folder named by content hash (atomic rename); ``data``
    is read only by the first trial on a node."""
    cache = Path(os.environ.get("STUNE_CACHE", Path(tempfile.gettempdir()) / "stune-models"))
    target = cache / digest
    if not (target / "model").is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache, prefix=f".{digest}-"))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(staging, filter="data")
        try:
            os.replace(staging, target)
        except OSError:  # another trial on this node won the race
            shutil.rmtree(staging, ignore_errors=True)
    return str(target / "model")


def tensorboard_dir() -> str:
    """``tensorboard/`` in the trial's working directory: a local folder on the trial's node that
    Ray copies to ``RUN_DIR/trial_<id>/tensorboard`` at each checkpoint and when the trial ends
    (``SyncConfig(sync_artifacts=True)``), for local and remote (s3://) run dirs alike."""
    import ray.tune

    return str(Path(ray.tune.get_context().get_trial_dir()) / "tensorboard")


def run_trial(params: dict[str, Any], *, base_config: dict[str, Any], splits, model_bundle, evaluations: int) -> None:
    import ray.tune
    import torch

    from trainers.config import TrainConfig
    from trainers.train import fine_tune
    from tune.space import SCORE_BASE, trial_overrides

    overrides = trial_overrides(params)
    config = TrainConfig.model_validate({**base_config, **overrides})
    if isinstance(model_bundle, str):  # a folder on this machine: every node of a loopback-only Ray is here
        config.model = model_bundle
    elif model_bundle is not None:
        config.model = unpack_model(*model_bundle)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:  # one trial per core must not spawn a thread per core each
        torch.set_num_threads(max(1, int(cpus)))

    node = ray.util.get_node_ip_address()
    best = -math.inf
    base: dict[str, float] = {}

    def keep_base(scores: dict[str, float]) -> None:
        base.update({BASE_PREFIX + name: value for name, value in scores.items()})

    def report(evaluation) -> None:
        nonlocal best
        best = max(best, evaluation.metrics[OBJECTIVE])
        # The trial's best-so-far travels inside its checkpoint, so a resumed trial keeps it.
        (Path(evaluation.checkpoint) / BEST_NOTE).write_text(repr(best))
        (Path(evaluation.checkpoint) / EVAL_NOTE).write_text(json.dumps({**evaluation.metrics, "step": evaluation.step}))
        metrics = {
            **evaluation.metrics,
            BEST_OBJECTIVE: best,
            "step": evaluation.step,
            "epoch": evaluation.epoch,
            "total_steps": evaluation.total_steps,
            "node": node,
            **base,
        }
        ray.tune.report(metrics, checkpoint=checkpoint_to_report(str(evaluation.checkpoint)))
        # report() has persisted the checkpoint to the run's storage: the local copy is spare.
        shutil.rmtree(evaluation.checkpoint, ignore_errors=True)

    resume_from = None
    checkpoint = ray.tune.get_checkpoint()
    work_dir = trial_work_dir()
    if checkpoint is not None:
        resume_from = checkpoint.to_directory(str(work_dir / "resume"))
        if (Path(resume_from) / FINISHED_NOTE).exists() or _at_last_step(resume_from):
            shutil.rmtree(work_dir, ignore_errors=True)
            return  # nothing left to train: the trial's last result is the checkpoint's
        note = Path(resume_from) / BEST_NOTE
        best = float(note.read_text()) if note.exists() else best
    from trainers.errors import StuneError

    error = None
    stopped = False
    try:
        fine_tune(
            config, work_dir, splits=splits, on_evaluation=report, resume_from=resume_from,
            # A resumed trial's model is trained already: its first run scored the base, or the driver will.
            score_base=bool(params.get(SCORE_BASE)) and resume_from is None, on_base_scored=keep_base,
            evaluations=evaluations, tensorboard_dir=tensorboard_dir(),
            # The recorder keeps the best across trials (best/): a trial needs no copy of its own
            # best model on disk, nor to reload it when training ends (bench/overhead.py).
            keep_best_model=False,
        )
    except StuneError as exc:
        # NaN/inf loss, collapsed eval, out of memory, data this loss cannot use: deterministic,
        # so a retry from the last checkpoint would fail the same way. The trial ends here, as
        # errored, with the reason (tune.faults.StopOnTrialError); crashes still raise and retry.
        error = str(exc)
    except SystemExit:
        # Ray Tune stops a trial (ASHA, the time budget) by raising SystemExit from report().
        # Re-raised as it was, its traceback kept the trial's model, optimizer and batches alive
        # in the reused actor: a worker grew to 5.6 GB over ~15 trials (bench/resources.py).
        stopped = True
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    # The actor runs the next trial (reuse_actors): give back this trial's model, optimizer and
    # batches now. Outside the except block, where the traceback no longer holds tensors.
    _release_memory()
    if stopped:
        raise SystemExit(0)
    if error is not None:
        ray.tune.report({ERROR_KEY: error, "node": node})


WORK_DIR_PREFIX = "stune-trial-"


def trial_work_dir() -> Path:
    """A new scratch folder for one trial (its checkpoints before Ray takes them, a resumed
    checkpoint), named after this process and host. A trial removes its own when it ends; a
    worker killed first (SIGKILL, out of memory, a second Ctrl-C) cannot, and left up to two
    checkpoints in /tmp each time. So the folders of this host's dead processes go first."""
    import psutil

    host, tmp = socket.gethostname(), Path(tempfile.gettempdir())
    for stale in tmp.glob(f"{WORK_DIR_PREFIX}*@{host}-*"):
        owner, _, rest = stale.name.removeprefix(WORK_DIR_PREFIX).partition("@")
        if rest.rpartition("-")[0] == host and _process_ended(owner):
            shutil.rmtree(stale, ignore_errors=True)
    me = psutil.Process()
    return Path(tempfile.mkdtemp(prefix=f"{WORK_DIR_PREFIX}{me.pid}.{me.create_time():.2f}@{host}-", dir=tmp))


def _process_ended(owner: str) -> bool:
    """``owner`` is "PID.START" (the process's start time, as psutil gives it) or, in folders of
    older versions, "PID". The start time tells a new process that got the dead one's PID apart
    from the owner (PIDs wrap at 32768 on many hosts, and a Ray node starts many processes)."""
    import psutil

    pid, _, started = owner.partition(".")
    if not pid.isdigit():
        return False
    try:
        holder = psutil.Process(int(pid))
        return bool(started) and abs(holder.create_time() - float(started)) > 1
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, ValueError):
        return False


def checkpoint_to_report(folder: str):
    """A trial's checkpoint folder as ``ray.tune.report`` takes it. Its file system makes Ray's copy
    into a local run dir on the same disk a hard link (tune.rundir.LinkingLocalFileSystem)."""
    import ray.tune

    from tune.rundir import linking_local_fs

    return ray.tune.Checkpoint(folder, filesystem=linking_local_fs())


def _at_last_step(checkpoint_dir: str) -> bool:
    """A checkpoint of the trial's final step (a worker lost just after its last report)."""
    import json

    try:
        state = json.loads((Path(checkpoint_dir) / "trainer_state.json").read_text())
        return 0 < state["max_steps"] <= state["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _release_memory() -> None:
    """Collect the finished trial's objects, empty the CUDA cache, and ask glibc to return freed
    heap pages to the OS: a process that ran 6 MiniLM trials one after another went back to
    0.65 GB after each instead of growing to 3 GB."""
    import ctypes
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass
