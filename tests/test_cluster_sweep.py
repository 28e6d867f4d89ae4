"""Sweeps where users run them: across a real two-node Ray cluster, and into real S3 storage.

Both run the ``stune`` console script as a user would. The cluster is two `ray start`
processes on this machine (head on all interfaces with token auth, a worker joined as
127.0.0.2), each with one CPU, so two concurrent one-CPU trials must land on both nodes.
The S3 endpoint is moto's server on 127.0.0.1. Everything started here is stopped by
finalizers, also when a test fails.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cli import STUNE, assert_user_error
from cluster_helpers import Sandbox, free_port, start_moto_s3
from tune.trainable import OBJECTIVE

pytestmark = pytest.mark.slow


def sweep_yaml(path: Path, model: str, data: dict, **extra) -> Path:
    raw = {
        "model": model, "data": data, "max_steps": 20, "evaluations_per_trial": 2, "trials": 4,
        "max_concurrent_trials": 2, "cpus_per_trial": 1, "scheduler": "none", "seed": 5,
        "search": {"losses": ["CosineSimilarityLoss", "CoSENTLoss"],
                   "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "per_device_train_batch_size": [8]},
    }
    raw.update(extra)
    path.write_text(yaml.safe_dump(raw))
    return path


def stune(*args, env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([STUNE, *map(str, args)], env={**env, "HF_HUB_OFFLINE": "1"}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def assert_exported(model_dir: Path, summary: dict) -> None:
    """A folder SentenceTransformer loads, with a card, scoring what the sweep said it scored."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir))
    assert model.encode(["a nurse", "a welder"]).shape[0] == 2
    assert f"{summary['best'][OBJECTIVE]:.4f}" in (model_dir / "README.md").read_text()


# --------------------------------------------------------------------------- two nodes


@pytest.fixture
def sandbox(request):
    sb = Sandbox.create()
    request.addfinalizer(sb.cleanup)
    return sb


def test_sweep_runs_trials_on_both_nodes_of_a_real_cluster_and_exports(sandbox, tiny_model, scored_data, tmp_path):
    # Nodes reachable over the network need not share the driver's disk: the model reaches each
    # one through Ray's object store and is unpacked once per node, here into one shared cache.
    sandbox.env["STUNE_CACHE"] = str(tmp_path / "model-cache")
    port = free_port()
    up = sandbox.cli("up", "--multi-node", "--port", str(port), "--num-cpus", "1")
    assert up.returncode == 0, up.stderr
    address = up.stdout.split("Ray head started at ", 1)[1].split(",", 1)[0]
    join = sandbox.cli("join", address, "--num-cpus", "1")
    assert join.returncode == 0, join.stderr
    status = json.loads(sandbox.cli("status", "--json").stdout)
    node_ips = {n["ip"] for n in status["nodes"] if n["alive"]}
    assert len(node_ips) == 2, status

    # Two trials, each long enough for the worker node's actor to start (a process importing torch:
    # ~10 s on a busy 2-core machine, over 26 s seen under heavier load) before the head's actor ends its
    # trial: a free actor takes over a trial whose own actor has not started yet (reuse_actors), so
    # with short trials the head's actor ran all four of them under load.
    cfg = sweep_yaml(tmp_path / "sweep.yaml", tiny_model, scored_data, max_steps=1500, trials=2)
    sweep = stune("sweep", cfg, "--address", address, "--out", tmp_path / "run", env=sandbox.env, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-4000:]

    rows = rows_of((tmp_path / "run" / "trials.csv").read_text())
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows), rows
    nodes = {r["node"] for r in rows}
    assert nodes == node_ips, f"trials ran on {nodes}, expected both nodes {node_ips}: {rows}\n{sweep.stderr[-2000:]}"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best"][OBJECTIVE] == pytest.approx(max(float(r[OBJECTIVE]) for r in rows), abs=1e-6)
    unpacked = list((tmp_path / "model-cache").iterdir())  # one copy, no staging folder left over
    assert len(unpacked) == 1 and (unpacked[0] / "model" / "config.json").is_file(), unpacked

    export = stune("export", tmp_path / "run", "--out", tmp_path / "model", env=sandbox.env, cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    assert_exported(tmp_path / "model", summary)

    # A trial no node can hold waits on a cluster (an autoscaler may add a node) until the time
    # budget ends the sweep: the summary says why nothing ran, and the sweep fails.
    cfg = sweep_yaml(tmp_path / "gpu.yaml", tiny_model, scored_data, trials=2, gpus_per_trial=1)
    waited = stune("sweep", cfg, "--address", address, "--out", tmp_path / "gpu-run", "--time-budget", "5s",
                   env=sandbox.env, cwd=tmp_path)
    assert waited.returncode == 1, waited.stdout + waited.stderr[-3000:]
    assert "but the largest node has 0 GPU" in waited.stderr
    assert "2 never started" in waited.stdout and "no trial started before the time budget ran out" in waited.stdout
    assert "Failed to fetch metrics" not in waited.stderr  # Ray's noise about the same trials
    assert json.loads((tmp_path / "gpu-run" / "summary.json").read_text())["counts"]["pending"] == 2


# --------------------------------------------------------------------------- S3


@pytest.fixture
def s3(request):
    proc, env, fs = start_moto_s3("stune-test")
    request.addfinalizer(lambda: (proc.kill(), proc.wait()))
    return {**os.environ, **env}, fs


def _read(fs, path: str) -> str | None:
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read().decode()
    except (FileNotFoundError, OSError):
        return None


def test_sweep_into_s3_interrupt_resume_and_export_from_it(s3, tiny_model, scored_data, tmp_path):
    env, fs = s3
    storage, run_key = "s3://stune-test/runs", "stune-test/runs/run"
    cfg = sweep_yaml(tmp_path / "sweep.yaml", tiny_model, scored_data, trials=3, max_concurrent_trials=1)

    # 1. A sweep whose run directory is in S3; Ctrl-C (SIGINT to its process group) after the first trial.
    first = subprocess.Popen([STUNE, "sweep", str(cfg), "--storage", storage, "--out", "run"],
                             env={**env, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while first.poll() is None and time.time() < deadline and _read(fs, f"{run_key}/.stune-running") is None:
            time.sleep(0.2)
        # A bucket has no locks: the running sweep's lease keeps a second one (here one that would
        # empty the run dir) out.
        forced = stune("sweep", str(cfg), "--storage", storage, "--out", "run", "--force", env=env, cwd=tmp_path)
        assert_user_error(forced, "a sweep is running there", f"pid {first.pid} on ")
        while first.poll() is None and time.time() < deadline:
            text = _read(fs, f"{run_key}/trials.csv")
            if text and any(r["status"] == "completed" for r in rows_of(text)):
                break
            time.sleep(0.3)
        assert first.poll() is None, f"the sweep ended before it could be interrupted: {first.communicate()[1][-3000:]}"
        os.killpg(first.pid, signal.SIGINT)
        _, stderr = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 130, stderr[-3000:]
    hint = [line for line in stderr.splitlines() if line.strip()][-1]
    assert hint.endswith(f"stune sweep --resume --out run --storage {storage}"), hint
    assert _read(fs, f"{run_key}/summary.json") is None, "an interrupted sweep has no summary"
    assert _read(fs, f"{run_key}/.stune-running") is None, "a sweep that ended gives its lease up"
    kept = {r["trial_id"]: r for r in rows_of(_read(fs, f"{run_key}/trials.csv")) if r["status"] == "completed"}
    assert kept
    assert not (tmp_path / "run").exists(), "with --storage nothing of the run is written locally"
    # As if Ctrl-C had come before the untuned model was scored (it is scored beside the first
    # trial; on a slow machine a short trial finishes first): --resume must score it then.
    sweep_doc = json.loads(_read(fs, f"{run_key}/sweep.json"))
    with fs.open_output_stream(f"{run_key}/sweep.json") as fh:
        fh.write(json.dumps({**sweep_doc, "baseline": None}).encode())

    # 2. --resume reads Ray's state, the trials and the study back from S3 and finishes the sweep.
    resumed = stune("sweep", "--resume", "--storage", storage, "--out", "run", env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    rows = rows_of(_read(fs, f"{run_key}/trials.csv"))
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows), rows
    for trial_id, before in kept.items():  # finished trials are kept, not re-run
        (after,) = [r for r in rows if r["trial_id"] == trial_id]
        assert after[OBJECTIVE] == before[OBJECTIVE]
    summary = json.loads(_read(fs, f"{run_key}/summary.json"))
    assert summary["best"][OBJECTIVE] == pytest.approx(max(float(r[OBJECTIVE]) for r in rows), abs=1e-6)
    assert fs.get_file_info(f"{run_key}/study.db").size > 0
    # What the resumed sweep wrote is what stays: Ray's copies from before the resume do not come back.
    assert json.loads(_read(fs, f"{run_key}/sweep.json"))["baseline"] == summary["baseline"]
    assert json.loads(_read(fs, f"{run_key}/best.json")) == summary["best"]

    # 3. Export straight from the S3 run directory.
    export = stune("export", f"{storage}/run", "--out", tmp_path / "model", env=env, cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    assert_exported(tmp_path / "model", summary)
    assert not (tmp_path / "run").exists()
