"""Timestamps for the benchmarks, in every Python process started with this folder on PYTHONPATH
and ``STUNE_BENCH_MARKS=<file>`` set (the benchmark's own subprocesses and the Ray workers they
start, which inherit both). Without the variable this file does nothing.

Each line of the marks file is ``<unix time> <pid> <event>``:
``python_start`` (this process began), ``train_begin`` / ``train_end`` (``Trainer.train``),
``first_step`` (the first optimizer step of a ``train`` call begins), ``step_end`` (each step
ends), ``eval_begin`` / ``eval_end`` (``Trainer.evaluate``), ``save_begin`` / ``save_end``
(``Trainer._save_checkpoint``), ``report_begin`` / ``report_end`` (``ray.tune.report``: a trial's
result and checkpoint handed to Ray), ``keepbest_begin`` / ``keepbest_end``
(``trainers.train._keep_best``: the best model copied aside inside a fine-tune), ``trial_begin`` /
``trial_end`` (``tune.trainable.run_trial``: one trial inside a Ray worker). Nothing in stune
is changed: the hooks wrap these functions when their module is first imported.
"""

import os
import sys
import time

_MARKS = os.environ.get("STUNE_BENCH_MARKS")


def _mark(event: str) -> None:
    with open(_MARKS, "a") as fh:
        fh.write(f"{time.time():.6f} {os.getpid()} {event}\n")


def _wrap(cls, name: str, before: str, after: str, first: str | None = None) -> None:
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        if first and not getattr(self, "_bench_first_done", False):
            self._bench_first_done = True
            _mark(first)
        elif before:
            _mark(before)
        try:
            return original(self, *args, **kwargs)
        finally:
            if after:
                _mark(after)

    wrapper.__wrapped__ = original
    setattr(cls, name, wrapper)


def _wrap_function(module, name: str, before: str, after: str) -> None:
    original = getattr(module, name, None)
    if original is None:
        return

    def wrapper(*args, **kwargs):
        _mark(before)
        try:
            return original(*args, **kwargs)
        finally:
            _mark(after)

    wrapper.__wrapped__ = original
    setattr(module, name, wrapper)


def _patch_trainer(module) -> None:
    trainer = module.Trainer
    _wrap(trainer, "train", "train_begin", "train_end")
    _wrap(trainer, "training_step", "", "step_end", first="first_step")
    _wrap(trainer, "evaluate", "eval_begin", "eval_end")
    if hasattr(trainer, "_save_checkpoint"):
        _wrap(trainer, "_save_checkpoint", "save_begin", "save_end")


_PATCHES = {
    "transformers.trainer": _patch_trainer,
    "ray.tune": lambda module: _wrap_function(module, "report", "report_begin", "report_end"),
    "trainers.train": lambda module: _wrap_function(module, "_keep_best", "keepbest_begin", "keepbest_end"),
    "tune.trainable": lambda module: _wrap_function(module, "run_trial", "trial_begin", "trial_end"),
}


if _MARKS:
    import importlib.abc
    import importlib.util

    _mark("python_start")

    class _TrainerHook(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname not in _PATCHES:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(fullname)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _PATCHES[fullname](module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, _TrainerHook())
