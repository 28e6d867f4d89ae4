"""``stune export``: the best checkpoint of a sweep -> a ready SentenceTransformer folder with a
model card. The held-out test split is scored here, never during selection."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trainers.errors import StuneError
from tune.config import SweepConfig
from tune.recorder import BEST_JSON
from tune.rundir import BEST, SUMMARY, SWEEP, TRIALS, RunDir
from tune.trainable import OBJECTIVE


class ExportError(StuneError):
    pass


def load_run(uri: str) -> tuple[RunDir, SweepConfig, dict[str, Any], dict[str, Any]]:
    """(run dir, its config, sweep.json, best.json); errors say what is missing."""
    run_dir = RunDir.open(uri)
    if not run_dir.exists(SWEEP):
        raise ExportError(f"{uri} is not a stune sweep (no {SWEEP}); pass the RUN_DIR a 'stune sweep' wrote")
    sweep = run_dir.read_json(SWEEP)
    if not run_dir.exists(BEST_JSON) or not run_dir.exists(BEST):
        raise ExportError(f"{uri}: no trial has completed an evaluation yet, so there is nothing to export")
    return run_dir, SweepConfig.model_validate(sweep["config"]), sweep, run_dir.read_json(BEST_JSON)


def export_best(uri: str, out: str | Path, *, force: bool = False) -> dict[str, Any]:
    run_dir, config, sweep, best = load_run(uri)
    baseline = sweep["baseline"]
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"--out {out} already exists; pass --force to replace it or choose another --out")
    if best[OBJECTIVE] <= baseline[OBJECTIVE] and not force:
        raise ExportError(
            f"no trial beat the untuned base model (best eval {OBJECTIVE} {best[OBJECTIVE]:.4f} <= "
            f"baseline {baseline[OBJECTIVE]:.4f}); the base model is better: pass --force to export anyway"
        )

    from trainers.data import read_split
    from trainers.evaluation import evaluate
    from trainers.model import load_model

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        local_best = run_dir.download_dir(BEST, str(staging / "checkpoint")) if not run_dir.is_local else run_dir.join(BEST)
        model = load_model(local_best, max_seq_length=config.max_seq_length, trust_remote_code=config.trust_remote_code)
        data = config.data
        scores = {"eval": evaluate(model, read_split(data.eval, data.columns, seed=config.seed), "eval")}
        if data.test:
            test_split = read_split(data.test, data.columns, seed=config.seed)
            scores["test"] = evaluate(model, test_split, "test")
            scores["base_test"] = evaluate(load_model(config.model, max_seq_length=config.max_seq_length), test_split, "test")
        model_dir = staging / "model"
        model.save(str(model_dir))
        trials = run_dir.read_csv(TRIALS) if run_dir.exists(TRIALS) else []
        summary = run_dir.read_json(SUMMARY) if run_dir.exists(SUMMARY) else {}
        (model_dir / "README.md").write_text(model_card(config, sweep, best, scores, trials, summary))
        _swap_into_place(model_dir, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"out": str(out), "best": best, "baseline": baseline, "scores": scores}


def _swap_into_place(src: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(src, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, out)


def top_trials(trials: list[dict[str, str]], n: int = 10) -> list[dict[str, str]]:
    scored = [t for t in trials if t.get(OBJECTIVE)]
    return sorted(scored, key=lambda t: float(t[OBJECTIVE]), reverse=True)[:n]


def model_card(config: SweepConfig, sweep: dict, best: dict, scores: dict, trials: list[dict], summary: dict) -> str:
    from trainers.model import model_label

    params = best["config"]
    loss = params["loss"]
    loss_params = {k: v for k, v in params.items() if k not in config.model_fields and k != "loss"}
    hyper = {k: v for k, v in params.items() if k in config.model_fields and k != "loss"}
    fixed = {k: getattr(config, k) for k in ("max_steps", "num_train_epochs", "max_seq_length", "seed") if getattr(config, k) is not None}
    base = model_label(config.model)
    test = scores.get("test", {}).get(OBJECTIVE)
    base_test = scores.get("base_test", {}).get(OBJECTIVE)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("–" if v is None else str(v))  # noqa: E731
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, sentence-similarity, stune, loss:" + loss + "]",
        "model-index:",
        "- name: stune sweep winner",
        "  results:",
        "  - task: {type: semantic-similarity}",
        "    dataset: {name: eval, type: eval}",
        f"    metrics: [{{type: spearman_cosine, value: {best[OBJECTIVE]:.6f}}}]",
        *(
            ["  - task: {type: semantic-similarity}", "    dataset: {name: test, type: test}",
             f"    metrics: [{{type: spearman_cosine, value: {test:.6f}}}]"]
            if test is not None else []
        ),
        "---",
        "",
        f"# {loss} fine-tune of {base}, chosen by a stune sweep",
        "",
        f"The best of {len(trials)} trials of a Ray Tune + Optuna sweep over losses and hyperparameters, "
        f"selected by eval `{OBJECTIVE}` at any evaluation step (trial `{best['trial_id']}`, step {best['step']}).",
        "",
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "model = SentenceTransformer('path/to/this/folder')",
        "embeddings = model.encode(['Senior Python developer', 'Backend software engineer'])",
        "```",
        "",
        "## Scores",
        "",
        "| split | base model | this model |",
        "|---|---|---|",
        f"| eval (used for selection) | {fmt(sweep['baseline'][OBJECTIVE])} | {fmt(best[OBJECTIVE])} |",
        f"| test (held out, scored at export) | {fmt(base_test)} | {fmt(test)} |",
        "",
        "## Training",
        "",
        f"- Base model: {base}",
        f"- Data: train `{config.data.train}`, eval `{config.data.eval}`, test `{config.data.test}`",
        f"- Loss: `{loss}` " + (", ".join(f"{k}={fmt(v)}" for k, v in loss_params.items()) or "(no parameters)"),
        "- Hyperparameters: " + ", ".join(f"{k}={fmt(v)}" for k, v in {**hyper, **fixed}.items()),
        f"- Searcher: {config.searcher}, scheduler: {config.scheduler}, trials: {len(trials)}"
        + (f", wall time {summary['wall_seconds']:.0f} s" if summary.get("wall_seconds") else ""),
        "",
        "## Top trials",
        "",
        "| trial | status | loss | spearman_cosine | best step | learning_rate | batch size |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in top_trials(trials):
        lr = t.get("learning_rate")
        lines.append(
            f"| {t['trial_id']} | {t['status']} | {t['loss']} | {float(t[OBJECTIVE]):.4f} | {t.get('best_step', '')} | "
            f"{float(lr):.2e} | {t.get('per_device_train_batch_size', '')} |" if lr else
            f"| {t['trial_id']} | {t['status']} | {t['loss']} | {float(t[OBJECTIVE]):.4f} | {t.get('best_step', '')} | | |"
        )
    lines += ["", "Made with stune: Ray Tune + Optuna + sentence-transformers.", ""]
    return "\n".join(lines)
