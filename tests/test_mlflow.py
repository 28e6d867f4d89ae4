"""`--mlflow`: a sweep logs one MLflow run per trial, and `stune export` logs the exported model,
into a real MLflow store (SQLite, the local store MLflow 3 writes to)."""

from __future__ import annotations

import json

import pytest

from cli import run_stune
from sweep_runs import write_config

mlflow = pytest.importorskip("mlflow")  # a dev dependency: installed by the README's test command


def test_sweep_and_export_log_to_mlflow(tiny_model, scored_data, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the sweep is given it relative to its folder, as the docs show
    cfg = write_config(tmp_path / "sweep.yaml", {"model": tiny_model, "data": scored_data, "trials": 2, "max_steps": 4,
                                                  "evaluations_per_trial": 2, "scheduler": "none", "seed": 1})
    # cwd: MLflow puts a SQLite store's artifacts in ./mlruns of the process that makes the experiment
    proc = run_stune("sweep", cfg, "--out", tmp_path / "run", "--mlflow", "sqlite:///mlflow.db", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("run")
    trials = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    rows = {f"run_trial_{t['trial_id']}": t for t in _trials(tmp_path / "run")}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["counts"]["completed"] == 2
    assert set(trials) == set(rows), (trials, rows)
    for name, run in trials.items():
        assert run.info.status == "FINISHED"
        assert run.data.metrics["best_spearman_cosine"] == pytest.approx(float(rows[name]["spearman_cosine"]), abs=1e-6)
        # the trial's params as trials.csv has them, nothing else (the first trial's note to score the base model)
        assert {k: v for k, v in rows[name].items() if k in run.data.params} == run.data.params, (run.data.params, rows[name])
        assert {"loss", "learning_rate"} <= set(run.data.params)

    # export logs the model folder (card included) as a run of the same experiment: the sweep's --mlflow,
    # also when it runs in another folder
    (tmp_path / "elsewhere").mkdir()
    export = run_stune("export", tmp_path / "run", "--out", tmp_path / "model", cwd=tmp_path / "elsewhere", timeout=300)
    assert export.returncode == 0 and "logged to MLflow run" in export.stdout, export.stderr[-3000:]
    run_id = export.stdout.split("logged to MLflow run ")[1].split()[0]
    logged = client.get_run(run_id)
    assert logged.info.experiment_id == experiment.experiment_id and logged.info.status == "FINISHED"
    files = {a.path for a in client.list_artifacts(run_id, "model")}
    assert {"model/README.md", "model/model.safetensors", "model/stune_train.yaml"} <= files, files


def _trials(run_dir):
    import csv

    with open(run_dir / "trials.csv") as fh:
        return list(csv.DictReader(fh))
