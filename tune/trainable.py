"""The one piece of glue between Ray Tune and ``trainers``: a function trainable that runs
``trainers.train.fine_tune`` and turns each evaluation into ``ray.tune.report`` with a
checkpoint, and a Ray checkpoint back into ``resume_from``."""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

OBJECTIVE = "spearman_cosine"
BEST_OBJECTIVE = "best_spearman_cosine"  # the trial's best so far: what ASHA and Optuna rank by
BEST_NOTE = "stune_best.txt"


def pack_model(path: str) -> tuple[str, bytes]:
    """A model folder as (content hash, tar bytes), to ship through Ray's object store to
    nodes that do not share the driver's filesystem."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname="model")
    data = buffer.getvalue()
    return hashlib.sha256(data).hexdigest()[:16], data


def unpack_model(digest: str, data: bytes) -> str:
    """Extract once per node into a cache folder named by content hash (atomic rename)."""
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
            pass
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
    from tune.space import trial_overrides

    overrides = trial_overrides(params)
    config = TrainConfig.model_validate({**base_config, **overrides})
    if model_bundle is not None:
        config.model = unpack_model(*model_bundle)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:  # one trial per core must not spawn a thread per core each
        torch.set_num_threads(max(1, int(cpus)))

    node = ray.util.get_node_ip_address()
    best = -math.inf

    def report(evaluation) -> None:
        nonlocal best
        best = max(best, evaluation.metrics[OBJECTIVE])
        # The trial's best-so-far travels inside its checkpoint, so a resumed trial keeps it.
        (Path(evaluation.checkpoint) / BEST_NOTE).write_text(repr(best))
        metrics = {
            **evaluation.metrics,
            BEST_OBJECTIVE: best,
            "step": evaluation.step,
            "epoch": evaluation.epoch,
            "total_steps": evaluation.total_steps,
            "node": node,
        }
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(str(evaluation.checkpoint)))
        # report() has persisted the checkpoint to the run's storage: the local copy is spare.
        shutil.rmtree(evaluation.checkpoint, ignore_errors=True)

    resume_from = None
    checkpoint = ray.tune.get_checkpoint()
    work_dir = Path(tempfile.mkdtemp(prefix="stune-trial-"))
    if checkpoint is not None:
        resume_from = checkpoint.to_directory(str(work_dir / "resume"))
        note = Path(resume_from) / BEST_NOTE
        best = float(note.read_text()) if note.exists() else best
    try:
        fine_tune(
            config, work_dir, splits=splits, on_evaluation=report, resume_from=resume_from, score_base=False,
            evaluations=evaluations, tensorboard_dir=tensorboard_dir(),
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
