"""``stune export``: the best checkpoint of a sweep -> a ready SentenceTransformer folder with a
model card. The held-out test split is scored here, never during selection."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trainers.config import DEFAULT_DATA_DIR, input_paths, move_into_place, refuse_out_holding_inputs
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
        raise ExportError(f"{uri} {run_dir.why_not_a_sweep()}; pass the RUN_DIR a 'stune sweep' wrote")
    sweep = run_dir.read_json(SWEEP)
    if not run_dir.exists(BEST_JSON) or not run_dir.exists(BEST):
        if run_dir.exists(SUMMARY):  # the sweep is over: nothing will come
            errored = run_dir.read_json(SUMMARY).get("counts", {}).get("errored", 0)
            raise ExportError(f"{uri}: the sweep ended with no trial evaluated ({errored} errored), so there is nothing to export; "
                              f"`stune report {shlex.quote(uri)}` says why each trial failed")
        raise ExportError(f"{uri}: no trial has completed an evaluation yet, so there is nothing to export")
    return run_dir, SweepConfig.model_validate(sweep["config"]), sweep, run_dir.read_json(BEST_JSON)


def export_best(uri: str, out: str | Path, *, force: bool = False, mlflow: str | None = None) -> dict[str, Any]:
    """``mlflow``: tracking URI to log the exported model to (default: the sweep's ``--mlflow``)."""
    run_dir, config, sweep, best = load_run(uri)
    mlflow = absolute_mlflow_uri(mlflow) if mlflow else sweep.get("mlflow")
    if mlflow:
        _require_mlflow(mlflow)
    out = Path(out).absolute()  # `--out .` has no name to put a sibling staging folder beside
    refuse_out_holding_inputs(out, {"the sweep": run_dir.path if run_dir.is_local else None, **input_paths(config)})
    if run_dir.is_local and Path(run_dir.path).resolve() in out.resolve().parents:
        raise ExportError(f"--out {out} is inside the sweep's run dir {run_dir.path}, which stune manages; choose another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"--out {out} already exists; pass --force to replace it or choose another --out")
    from trainers.data import config_split
    from trainers.evaluation import evaluate
    from trainers.model import load_model

    data = config.data
    eval_split = config_split(config, "eval")
    test_split = config_split(config, "test") if data.test else None
    base_scores = {}
    if sweep.get("baseline") is None:  # interrupted before the untuned model was scored, and not resumed
        base_scores = score_base_model(config, {"eval": eval_split, "test": test_split})
        sweep = {**sweep, "baseline": base_scores["eval"]}
    baseline = sweep["baseline"]
    if best[OBJECTIVE] <= baseline[OBJECTIVE] and not force:
        raise ExportError(
            f"no trial beat the untuned base model (best eval {OBJECTIVE} {best[OBJECTIVE]:.4f} <= "
            f"baseline {baseline[OBJECTIVE]:.4f}); the base model is better: pass --force to export anyway"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        for attempt in range(3):
            local_best = (run_dir.download_dir(BEST, str(staging / f"checkpoint-{attempt}")) if not run_dir.is_local
                          else run_dir.join(BEST))
            model = load_model(local_best, max_seq_length=config.max_seq_length, trust_remote_code=config.trust_remote_code)
            scores = {"eval": evaluate(model, eval_split, "eval")}
            # A running sweep swaps in a better best/ (then best.json) whenever one comes: what was
            # read may be that newer model, or a mix of both. Read again until best.json stays put.
            latest = run_dir.read_json(BEST_JSON)
            if (latest.get("trial_id"), latest.get("step")) == (best.get("trial_id"), best.get("step")) or attempt == 2:
                break  # (a third new best in a row: this export keeps the one it named when it began reading)
            best = latest
        if test_split is not None:
            scores["test"] = evaluate(model, test_split, "test")
            scores["base_test"] = base_scores.get("test") or score_base_model(config, {"test": test_split})["test"]
        pairs = {"eval": len(eval_split.pairs), "test": len(test_split.pairs) if test_split is not None else None}
        model_dir = staging / "model"
        model.save(str(model_dir))
        trials = run_dir.read_csv(TRIALS) if run_dir.exists(TRIALS) else []
        summary = run_dir.read_json(SUMMARY) if run_dir.exists(SUMMARY) else {}
        plots = card_plots(uri, model_dir)
        (model_dir / "README.md").write_text(model_card(config, sweep, best, scores, trials, summary, plots=plots, pairs=pairs))
        (model_dir / RECIPE).write_text(recipe_yaml(winner_recipe(config, best, trials), uri, best))
        move_into_place(model_dir, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = {"out": str(out), "best": best, "baseline": baseline, "scores": scores}
    if mlflow:
        result["mlflow_run_id"] = log_to_mlflow(mlflow, run_dir, out, best, scores)
    return result


def score_base_model(config: SweepConfig, splits: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The untuned model's scores on each of ``splits`` (name -> Split; None is left out), loading
    it once: its eval score is the baseline a sweep's trials must beat."""
    from trainers.evaluation import evaluate_untuned
    from trainers.model import load_model, model_label

    model = load_model(config.model, max_seq_length=config.max_seq_length, trust_remote_code=config.trust_remote_code)
    return {name: evaluate_untuned(model, split, name, model_label(config.model)) for name, split in splits.items() if split is not None}


def _require_mlflow(uri: str) -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ExportError("logging the export to MLflow needs MLflow: pip install 'stune[mlflow]'") from None
    if problem := mlflow_problem(uri):
        raise ExportError(problem)


def absolute_mlflow_uri(uri: str) -> str:
    """``sqlite:///mlflow.db`` names a file in the working directory: made absolute, so that the
    sweep's trials and a later ``stune export`` from elsewhere log to the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/") and uri[len(prefix):] not in ("", ":memory:"):
        return prefix + os.path.abspath(uri[len(prefix):])
    return uri


def mlflow_problem(uri: str) -> str | None:
    """Why MLflow cannot log to ``uri`` (one line), or None: asked before anything is run or written,
    one request without retries (MLflow's client retries an unreachable server for minutes)."""
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure means the sweep could not log there
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        first = first.split(". ")[0] if len(first) > 200 else first
        return (f"--mlflow {uri}: MLflow cannot log there ({first}); give a tracking server's http(s) URL "
                f"or a local database such as sqlite:///mlflow.db")
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return None


def log_to_mlflow(uri: str, run_dir: RunDir, model_dir: Path, best: dict, scores: dict) -> str:
    """The exported model folder (model card and plots included) as the artifacts of an
    ``export`` run in the sweep's MLflow experiment (named after the run dir, like its trials)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(run_dir.name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(run_dir.name)
    run = client.create_run(experiment_id, run_name="export", tags={"stune_run_dir": run_dir.uri, "stune_trial_id": best["trial_id"]})
    run_id = run.info.run_id
    try:
        for key, value in best["config"].items():
            client.log_param(run_id, key, value)
        for split in ("eval", "test", "base_test"):
            if split in scores:
                client.log_metric(run_id, f"{split}_{OBJECTIVE}", scores[split][OBJECTIVE])
        client.log_artifacts(run_id, str(model_dir), artifact_path="model")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return run_id


def top_trials(trials: list[dict[str, str]], n: int = 10) -> list[dict[str, str]]:
    scored = [t for t in trials if t.get(OBJECTIVE)]
    return sorted(scored, key=lambda t: float(t[OBJECTIVE]), reverse=True)[:n]


CARD_PLOTS_DIR = "stune_report"


def card_plots(uri: str, model_dir: Path) -> list[tuple[str, str]]:
    """The report's key plots as PNG files in ``model_dir/stune_report/``, for the model card:
    (title, relative path) each. A plot that fails costs the card its picture, not the export."""
    import logging

    from tune.report import KEY_PLOTS, PLOTS, load, render_plots

    try:
        pngs, notes = render_plots(load(uri), KEY_PLOTS)
    except Exception as exc:
        logging.getLogger("stune.export").warning("model card without plots: %s: %s", type(exc).__name__, exc)
        return []
    folder = model_dir / CARD_PLOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    plots = []
    for name in KEY_PLOTS:
        if name in pngs and name not in notes:
            (folder / f"{name}.png").write_bytes(pngs[name])
            plots.append((PLOTS[name], f"{CARD_PLOTS_DIR}/{name}.png"))
    return plots


RECIPE = "stune_train.yaml"


def winner_recipe(config: SweepConfig, best: dict, trials: list[dict]) -> dict[str, Any]:
    """A ``stune train`` config that trains the winning trial again: the sweep's own settings with
    the trial's loss and hyperparameters, and the evaluation cadence the trial had (the trainer
    keeps the checkpoint with the best eval score, as the sweep did)."""
    from trainers.config import TrainConfig, eval_interval
    from trainers.losses import get_loss
    from trainers.model import resolve_model_path

    chosen = best["config"]
    spec = get_loss(chosen["loss"])
    recipe = {k: v for k, v in config.model_dump(mode="json").items() if k in TrainConfig.model_fields}
    recipe.pop("checkpoint_optimizer_state", None)  # a sweep trial's crash-resume setting
    recipe["loss"] = {"name": chosen["loss"], **{k: v for k, v in chosen.items() if k in spec.params}}
    recipe.update({k: v for k, v in chosen.items() if k in TrainConfig.model_fields and k != "loss"})
    if not recipe.get("eval_steps"):
        row = next((t for t in trials if t.get("trial_id") == best.get("trial_id")), {})
        total = row.get("total_steps") or recipe.get("max_steps")
        if total:
            recipe["eval_steps"] = eval_interval(int(float(total)), config.evaluations_per_trial)
    # a path as typed for the sweep, relative to where it ran: made absolute where it exists; a hub
    # id found in the Hugging Face cache stays an id, which finds the model in any machine's cache
    if recipe.get("model") and Path(recipe["model"]).expanduser().exists():
        with contextlib.suppress(StuneError):
            recipe["model"] = str(Path(resolve_model_path(recipe["model"])).resolve())
    # Settings left at stune train's defaults are left out; the trial's own choices always show.
    shown = TrainConfig.model_validate(recipe).model_dump(mode="json", exclude_defaults=True)
    always = ["loss", "learning_rate", "per_device_train_batch_size", "warmup_ratio", "seed"]
    return {**shown, **{k: recipe[k] for k in always if k in recipe}}


def recipe_yaml(recipe: dict[str, Any], run: str, best: dict) -> str:
    import yaml

    head = (f"# Trains the winner of the stune sweep {run} again (trial {best.get('trial_id')}, best at step "
            f"{best.get('step')}): stune train {RECIPE} --out DIR\n"
            "# The same loss, hyperparameters, data, seed and steps; raise max_steps or point data: at more data to scale it up.\n")
    left_out = [(key, what) for key, what in (("model", "stune's bundled all-MiniLM-L6-v2"), ("data", "stune's embedded data set"))
                if key not in recipe]
    if left_out:
        head += (f"# No {' and no '.join(key for key, _ in left_out)}: {' and '.join(what for _, what in left_out)}, "
                 "as in the sweep.\n")
    return head + yaml.safe_dump(recipe, sort_keys=False)


def data_line(config: SweepConfig) -> str:
    """The card's data line: the files, or for stune's embedded set its name and licence (the card
    travels with the model; a path on the machine that exported it says nothing to its readers)."""
    splits = {"train": config.data.train, "eval": config.data.eval, "test": config.data.test}
    shares = config.data.held_out()
    held_out = (", ".join(f"{split} {share:.0%}" for split, share in shares.items())
                + " of train, held out (rows grouped by their first text)") if shares else ""
    splits = {split: path for split, path in splits.items() if isinstance(path, str)}
    files = ", ".join(f"{split} `{path}`" for split, path in splits.items()) + (f"; {held_out}" if held_out else "")
    embedded = all(Path(p).resolve().parent == DEFAULT_DATA_DIR.resolve() for p in splits.values())
    if not embedded:
        return f"- Data: {files}"
    names = ", ".join(f"{split} `{Path(path).name}`" for split, path in splits.items()) + (f"; {held_out}" if held_out else "")
    return (f"- Data: stune's embedded graded job-title / job-description pairs ({names}), derived from the "
            "O*NET 29.2 Database by the U.S. Department of Labor, Employment and Training Administration "
            "(USDOL/ETA) and from ESCO, © European Union, both under "
            "[CC BY 4.0](https://creativecommons.org/licenses/by/4.0/). O*NET® is a trademark of USDOL/ETA; "
            "neither USDOL/ETA nor the European Commission has approved or endorsed these modifications "
            "(details: stune's `trainers/default_data/README.md`).")


def model_card(config: SweepConfig, sweep: dict, best: dict, scores: dict, trials: list[dict], summary: dict,
               plots: list[tuple[str, str]] = (), pairs: dict[str, int | None] | None = None) -> str:
    from trainers.evaluation import spearman_interval
    from trainers.model import hub_id, model_label

    params = best["config"]
    loss = params["loss"]
    loss_params = {k: v for k, v in params.items() if k not in config.model_fields and k != "loss"}
    hyper = {k: v for k, v in params.items() if k in config.model_fields and k != "loss"}
    fixed = {k: getattr(config, k) for k in ("max_steps", "num_train_epochs", "max_seq_length", "seed") if getattr(config, k) is not None}
    base = model_label(config.model)
    test = scores.get("test", {}).get(OBJECTIVE)
    base_test = scores.get("base_test", {}).get(OBJECTIVE)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("–" if v is None else str(v))  # noqa: E731
    setting = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731  (a learning rate of 6.8e-05 is not 0.0001)
    below_base = best[OBJECTIVE] <= sweep["baseline"][OBJECTIVE]
    pairs = pairs or {}

    def interval(score: float | None, n: int | None) -> str:
        bounds = spearman_interval(score, n) if score is not None and n else None
        return f"{bounds[0]:.2f} – {bounds[1]:.2f}" if bounds else "–"

    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        *([f"base_model: {base_id}"] if (base_id := hub_id(config.model)) else []),
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
        *(
            ["", f"**No trial beat the untuned base model on eval** ({best[OBJECTIVE]:.4f} against "
                 f"{sweep['baseline'][OBJECTIVE]:.4f}); this model was exported with `--force`."]
            if below_base else []
        ),
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
        "| split | pairs | base model | this model | 95 % interval of this model |",
        "|---|---|---|---|---|",
        f"| eval (used for selection) | {fmt(pairs.get('eval'))} | {fmt(sweep['baseline'][OBJECTIVE])} | {fmt(best[OBJECTIVE])}"
        f" | {interval(best[OBJECTIVE], pairs.get('eval'))} |",
        *(
            [f"| test (held out, scored at export) | {fmt(pairs.get('test'))} | {fmt(base_test)} | {fmt(test)}"
             f" | {interval(test, pairs.get('test'))} |"]
            if test is not None else []
        ),
        "",
        *(
            ["No held-out test split was given (`data.test`), so the only score is the eval score this model was "
             "selected on, which flatters it.", ""]
            if test is None else []
        ),
        "The interval is how far a spearman correlation measured on that many pairs can be from the one on "
        "all such data (Fisher's z); an eval score with a wide interval can make the sweep pick a trial that "
        "only looks best on those pairs.",
        "",
        "## Training",
        "",
        f"- Base model: {base}",
        data_line(config),
        f"- Loss: `{loss}` " + (", ".join(f"{k}={setting(v)}" for k, v in loss_params.items()) or "(no parameters)"),
        "- Hyperparameters: " + ", ".join(f"{k}={setting(v)}" for k, v in {**hyper, **fixed}.items()),
        f"- Searcher: {config.searcher}, scheduler: {config.scheduler}, trials: {len(trials)}"
        + (f", wall time {summary['wall_seconds']:.0f} s" if summary.get("wall_seconds") else ""),
        f"- To train it again (same loss, hyperparameters, data, seed and steps): `stune train {RECIPE} --out DIR` "
        f"with the `{RECIPE}` in this folder",
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
    if plots:  # PNG files shipped beside this card (stune_report/), as `stune report` draws them
        lines += ["", "## Sweep report", ""]
        for title, path in plots:
            lines += [f"![{title}]({path})", "", f"*{title}*", ""]
    lines += ["", "Made with stune: Ray Tune + Optuna + sentence-transformers.", ""]
    return "\n".join(lines)
