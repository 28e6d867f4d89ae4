"""One real tiny sweep run through the ``stune`` CLI (stderr captured, so not a terminal),
shared by test_report.py and test_progress.py: whichever module asks first runs it."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from cli import run_stune

TRIALS = 6
LOSSES = ["CosineSimilarityLoss", "TripletLoss", "MultipleNegativesRankingLoss"]

_runs: dict[str, tuple[Path, object]] = {}


def sweep_config(model: str, data: dict, **extra) -> dict:
    raw = {
        "model": model, "data": data, "max_steps": 12, "trials": TRIALS, "max_concurrent_trials": 2, "seed": 3,
        "search": {"losses": LOSSES, "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
                   "per_device_train_batch_size": [8, 16]},
    }
    raw.update(extra)
    return raw


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def shared_cli_sweep(tmp_path_factory, model: str, data: dict):
    """(run_dir, CompletedProcess) of ``stune sweep sweep.yaml --data 'my data' --model M --out 'my run'``
    (6 trials, 12 steps), typed as a user would: in the sweep's folder, with paths relative to it (and
    spaces in them, which every command and every command stune prints must take)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _runs:
        root = tmp_path_factory.mktemp("shared-sweep")
        (root / "my data").mkdir()
        for split, path in data.items():
            shutil.copy(path, root / "my data" / f"{split}.csv")
        write_config(root / "sweep.yaml", {k: v for k, v in sweep_config(model, data).items() if k not in ("model", "data")})
        run_dir = root / "my run"
        ray_tmp = Path(tempfile.mkdtemp(prefix="ssw-", dir="/tmp"))  # short: Ray's sockets live there
        try:
            proc = run_stune("sweep", "sweep.yaml", "--data", "my data", "--model", os.path.relpath(model, root), "--out", "my run",
                             cwd=root, timeout=900, env={"RAY_TMPDIR": str(ray_tmp)})
            assert proc.returncode == 0, proc.stderr[-4000:]
            # the sweep's private Ray took its session folder (logs, sockets) with it
            assert (ray_tmp / "ray").is_dir() and not list(ray_tmp.glob("ray/session_2*")), list(ray_tmp.rglob("*"))[:20]
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        _runs[key] = (run_dir, proc)
    return _runs[key]


def read_trials(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "trials.csv") as fh:
        return list(csv.DictReader(fh))
