"""One fine-tune, top to bottom: data -> model -> loss -> SentenceTransformerTrainer -> scores.

``fine_tune`` is what both ``stune train`` and every sweep trial run. It knows nothing of Ray:
the sweep plugs in through ``on_evaluation``, called after each evaluation with the scores and
the folder of the checkpoint just written (weights, schedule and RNG state, so a trial can resume).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from transformers import TrainerCallback

from trainers.config import TrainConfig, eval_interval, input_paths, move_into_place, refuse_out_holding_inputs
from trainers.data import Splits, adapt, load_splits
from trainers.errors import Interrupted, StuneError, TrainingError, on_stop_signals
from trainers.evaluation import OBJECTIVE, build_evaluator, evaluate, evaluate_untuned, selection_key, short_metrics
from trainers.losses import get_loss
from trainers.model import load_model, model_label

log = logging.getLogger("stune.train")
# Hugging Face Trainer's names inside a checkpoint folder.
OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE = "optimizer.pt", "scheduler.pt", "rng_state.pth"


@dataclass
class Evaluation:
    step: int
    epoch: float
    metrics: dict[str, float]
    checkpoint: Path  # a SentenceTransformer folder with the trainer state beside it
    total_steps: int


@dataclass
class TrainResult:
    best: dict  # step and metrics of the best evaluation
    final: dict[str, float]
    history: list[dict] = field(default_factory=list)
    base: dict[str, dict[str, float]] = field(default_factory=dict)
    test: dict[str, float] | None = None
    steps: int = 0
    seconds: float = 0.0
    planned_steps: int = 0
    interrupted: str | None = None  # "Ctrl-C"/"SIGTERM" if that stopped it early: the best of the evaluations so far


def total_steps(config: TrainConfig, n_train: int) -> int:
    if config.max_steps:
        return config.max_steps
    return max(1, math.ceil(math.ceil(n_train / config.per_device_train_batch_size) * config.num_train_epochs))


def fine_tune(
    config: TrainConfig,
    work_dir: str | Path,
    *,
    splits: Splits | None = None,
    on_evaluation: Callable[[Evaluation], None] | None = None,
    resume_from: str | Path | None = None,
    score_base: bool = True,
    on_base_scored: Callable[[dict[str, float]], None] | None = None,
    evaluations: int = 5,
    keep_best_model: bool = True,
    resumable: bool = True,
    tensorboard_dir: str | Path | None = None,
    verbose: bool = False,
    stop: GracefulStop | None = None,
) -> tuple[object, TrainResult]:
    """Fine-tune ``config.model`` with ``config.loss``; return the best model and its scores.

    Checkpoints go to ``work_dir/checkpoints`` (only the latest is kept; ``on_evaluation`` may
    move or delete it); ``resume_from`` is a checkpoint folder from an earlier ``on_evaluation``.
    With ``keep_best_model=False`` the returned model is the last one, and no extra copy of the
    best weights is kept on disk (a sweep keeps the best across trials itself). With
    ``resumable=False`` checkpoints hold the weights only. When ``stop`` is requested during
    training, the current step is evaluated and training ends there, as if it had been the last.
    ``on_base_scored`` gets the untuned model's eval scores (``score_base``) before training starts.
    """
    started = time.monotonic()
    splits = splits or load_splits(config)
    spec = get_loss(config.loss.name)
    columns, note = adapt(splits.train.pairs, spec.shape, positive_threshold=config.data.positive_threshold, seed=config.seed)
    log.info("train data: %s: %s for %s", splits.train.path, note, spec.name)

    model = load_model(config.model, max_seq_length=config.max_seq_length, trust_remote_code=config.trust_remote_code)
    base = {}
    if score_base:
        base["eval"] = evaluate_untuned(model, splits.eval, "eval", model_label(config.model))
        if splits.test:
            base["test"] = evaluate_untuned(model, splits.test, "test", model_label(config.model))
        log.info("base model %s: eval %s %.4f", model_label(config.model), OBJECTIVE, base["eval"][OBJECTIVE])
        if on_base_scored is not None:
            on_base_scored(base["eval"])

    from datasets import Dataset
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )

    train_dataset = Dataset.from_dict(columns)
    n_steps = total_steps(config, len(train_dataset))
    eval_steps = eval_interval(n_steps, evaluations, config.eval_steps)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(work_dir) / "checkpoints"),
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=64,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps or -1,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio in sentence-transformers 6
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler_type,
        seed=config.seed,
        data_seed=config.seed,
        **_precision(config),
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=1,
        # The optimizer state (2x the weights) is written only if it is to be kept: writing 182 MB
        # per MiniLM checkpoint to delete it at once cost disk at every report (bench/resources.py).
        # A resumable run without it still gets its schedule and RNG state from _Watcher.on_save.
        save_only_model=not (resumable and config.checkpoint_optimizer_state),
        logging_steps=max(1, min(eval_steps, 10)),
        # Hugging Face leaves NaN/inf losses out of the logged average by default: _Watcher must see them.
        logging_nan_inf_filter=False,
        report_to="none",
        disable_tqdm=not verbose,
        # In-batch-negative losses must not see the same text twice in a batch.
        batch_sampler=BatchSamplers.NO_DUPLICATES if spec.shape in ("positive_pairs", "triplets") else BatchSamplers.BATCH_SAMPLER,
        dataloader_num_workers=0,
        dataloader_pin_memory=_has_cuda(),
    )
    watcher = _Watcher(n_steps, on_evaluation, keep_best_model, save_schedule=resumable and not config.checkpoint_optimizer_state,
                       stop=stop)
    callbacks = [watcher, _ScheduleWithoutOptimizer(resume_from)] if resume_from else [watcher]
    if tensorboard_dir is not None:  # training loss, learning rate and eval scores as TB scalars
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(tensorboard_dir))))
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        loss=build_loss(config, model),
        evaluator=build_evaluator(splits.eval, "eval"),
        callbacks=callbacks,
    )
    if not verbose:  # our own log line per evaluation replaces HF's printed log dicts
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except StuneError:
        raise
    except Exception as exc:
        if _is_out_of_memory(exc):
            raise TrainingError(
                f"out of memory at per_device_train_batch_size={config.per_device_train_batch_size}; "
                "lower it (or max_seq_length), or set gradient_cache_mini_batch_size (e.g. 8) to embed fewer texts at once"
            ) from None
        raise

    best = watcher.best()
    best_model = model
    if best["step"] != watcher.history[-1]["step"] and watcher.best_checkpoint:
        best_model = load_model(str(watcher.best_checkpoint), max_seq_length=config.max_seq_length)
    result = TrainResult(
        best=best,
        final=watcher.history[-1]["metrics"],
        history=watcher.history,
        base=base,
        steps=watcher.history[-1]["step"],
        seconds=time.monotonic() - started,
        planned_steps=n_steps,
        interrupted=stop.signal_name if stop and stop.requested and watcher.history[-1]["step"] < n_steps else None,
    )
    if splits.test:
        result.test = evaluate(best_model, splits.test, "test")
    return best_model, result


def build_loss(config: TrainConfig, model):
    """The config's loss on ``model``; with ``gradient_cache_mini_batch_size``, computed with gradient
    caching, at most that many texts at once (also a cap on a cached loss's own ``mini_batch_size``)."""
    from sentence_transformers.base.losses.gradcache import uses_gradient_cache

    cap = config.gradient_cache_mini_batch_size
    params = config.loss.resolved_params()
    if cap is not None and "mini_batch_size" in params:
        params["mini_batch_size"] = min(params["mini_batch_size"], cap)
    loss = get_loss(config.loss.name).build(model, **params)
    if cap is None or uses_gradient_cache(loss):
        return loss
    from trainers.losses.gradient_cache import GradientCached

    return GradientCached(loss, cap)


def _precision(config: TrainConfig) -> dict[str, bool]:
    import torch

    if config.fp16 or config.bf16:
        asked = {"fp16": config.fp16, "bf16": config.bf16}
        on_accelerator = torch.cuda.is_available() or torch.backends.mps.is_available()
        # Hugging Face refuses bf16 without a GPU unless told the run is on CPU (torch autocasts there).
        return asked if on_accelerator else {**asked, "use_cpu": True}
    if torch.cuda.is_available():  # mixed precision on GPUs that can, fp32 on CPU
        return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    return {}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/MPS out of memory, and on CPU a refused allocation ("DefaultCPUAllocator: can't
    allocate memory: you tried to allocate ... bytes")."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


class _Watcher(TrainerCallback):
    """Stops on a NaN/inf loss, forces a last evaluation, hands each evaluation + checkpoint on."""

    def __init__(self, n_steps: int, on_evaluation, keep_best_model: bool, save_schedule: bool = False,
                 stop: GracefulStop | None = None):
        self.n_steps = n_steps
        self.stop = stop
        self.keep_best_model = keep_best_model
        self.save_schedule = save_schedule
        self.on_evaluation = on_evaluation
        self.history: list[dict] = []
        self.pending: dict | None = None
        self.best_checkpoint: Path | None = None

    def best(self) -> dict:
        """The best evaluation by ``selection_key``; the earliest of equals."""
        return max(self.history, key=lambda h: selection_key(h["metrics"]))

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingError(f"training loss became {loss} at step {state.global_step}; lower learning_rate (or weight_decay)")

    def on_train_begin(self, args, state, control, **kwargs):
        if self.stop:
            self.stop.training = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.stop:  # a Ctrl-C from here on (saving, test scores) abandons the run
            self.stop.training = False

    def on_step_end(self, args, state, control, **kwargs):
        stopping = bool(self.stop and self.stop.requested)
        if state.global_step >= state.max_steps or stopping:
            control.should_evaluate = True
            control.should_save = True
            control.should_training_stop = control.should_training_stop or stopping

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        scores = short_metrics(metrics or {})
        if OBJECTIVE not in scores:
            return
        if not math.isfinite(scores[OBJECTIVE]):
            raise TrainingError(f"eval {OBJECTIVE} is {scores[OBJECTIVE]} at step {state.global_step} (collapsed embeddings); lower learning_rate")
        self.pending = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "metrics": scores}
        self.history.append(self.pending)
        log.info("step %d/%d  %s %.4f", state.global_step, state.max_steps, OBJECTIVE, scores[OBJECTIVE])

    def on_save(self, args, state, control, lr_scheduler=None, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.save_schedule and lr_scheduler is not None:
            _save_schedule_and_rng(checkpoint, lr_scheduler)
        if self.pending is None or self.pending["step"] != state.global_step:
            return
        if self.keep_best_model and self.best() is self.pending:  # better than every earlier evaluation
            self.best_checkpoint = _keep_best(checkpoint)
        if self.on_evaluation:
            self.on_evaluation(Evaluation(checkpoint=checkpoint, total_steps=self.n_steps, **self.pending))
        self.pending = None


class GracefulStop:
    """Ctrl-C (or SIGTERM) during training ends it at the current step, which is evaluated, so the
    run keeps the best model so far; a second one, or one before training began, abandons the run."""

    def __init__(self) -> None:
        self.requested = False
        self.training = False
        self.signal_name = "Ctrl-C"

    @contextlib.contextmanager
    def on_ctrl_c(self) -> Iterator[GracefulStop]:
        with on_stop_signals(self._handle):
            yield self

    def _handle(self, signum, frame) -> None:
        if not self.training or self.requested:
            raise Interrupted(signum)
        self.requested = True
        self.signal_name = Interrupted(signum).signal_name
        log.warning("%s: stopping after this step, which is evaluated; the best model so far is kept "
                    "(Ctrl-C again to abandon the run and write nothing)", self.signal_name)


def _save_schedule_and_rng(checkpoint: Path, lr_scheduler) -> None:
    """What Hugging Face saves beside the optimizer state, in its file names, for a checkpoint
    written with ``save_only_model``: the learning-rate schedule (restored by
    _ScheduleWithoutOptimizer) and the RNG state (restored by the Trainer itself)."""
    import random

    import numpy as np
    import torch

    torch.save(lr_scheduler.state_dict(), checkpoint / SCHEDULER_FILE)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.random.get_rng_state()
    torch.save(rng, checkpoint / RNG_FILE)


class _ScheduleWithoutOptimizer(TrainerCallback):
    """Resuming from a checkpoint saved without the optimizer state, Hugging Face restores neither
    the optimizer nor the learning-rate schedule (it loads them only together): the schedule is
    restored here, so the run goes on at the checkpoint's learning rate, not from warm-up again."""

    def __init__(self, checkpoint: str | Path):
        self.checkpoint = Path(checkpoint)

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        schedule = self.checkpoint / SCHEDULER_FILE
        if (self.checkpoint / OPTIMIZER_FILE).exists() or not schedule.exists() or lr_scheduler is None:
            return
        import torch

        lr_scheduler.load_state_dict(torch.load(schedule, weights_only=True))
        for group, lr in zip(optimizer.param_groups, lr_scheduler.get_last_lr()):
            group["lr"] = lr


def _keep_best(checkpoint: Path) -> Path:
    # save_total_limit=1 deletes older checkpoints; the best model's weights are copied aside
    # (without optimizer state) so the best, not the last, evaluation is what we return.
    best = checkpoint.parent.parent / "best-model"
    tmp = best.with_name("best-model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns(OPTIMIZER_FILE, SCHEDULER_FILE, "rng_state*.pth", "scaler.pt"))
    shutil.rmtree(best, ignore_errors=True)
    os.replace(tmp, best)
    return best


def write_metrics(path: Path, config: TrainConfig, result: TrainResult) -> None:
    payload = {
        "model": model_label(config.model),
        "loss": {"name": config.loss.name, **config.loss.resolved_params()},
        "objective": OBJECTIVE,
        "eval": result.best["metrics"],
        "best_step": result.best["step"],
        "test": result.test,
        "base": result.base,
        "steps": result.steps,
        "planned_steps": result.planned_steps,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 1),
        "history": result.history,
        "config": config.model_dump(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def train_to_dir(config: TrainConfig, out: str | Path, *, splits: Splits | None = None, force: bool = False, verbose: bool = False) -> TrainResult:
    """``stune train``: fine-tune into ``out/`` (model/, metrics.json, train.log), all or nothing.

    Work happens in a sibling temp folder renamed into place at the end, so a failed or
    interrupted run leaves ``out`` as it was.
    """
    out = Path(out).absolute()  # `--out .` has no name to put a sibling temp folder beside
    refuse_out_holding_inputs(out, input_paths(config))
    if out.exists() and any(out.iterdir()) and not force:
        raise StuneError(f"--out {out} already exists and is not empty; pass --force to replace it or choose another --out")
    splits = splits or load_splits(config)  # bad data fails here, before anything is written
    work = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    handler = logging.FileHandler(work / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("stune").addHandler(handler)
    try:
        with GracefulStop().on_ctrl_c() as stop:
            model, result = fine_tune(config, work, splits=splits, tensorboard_dir=work / "tensorboard", resumable=False,
                                      verbose=verbose, stop=stop)
        model.save(str(work / "model"))
        write_metrics(work / "metrics.json", config, result)
        for scratch in ("checkpoints", "best-model"):
            shutil.rmtree(work / scratch, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        logging.getLogger("stune").removeHandler(handler)
        handler.close()
    move_into_place(work, out)
    return result
