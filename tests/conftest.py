import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_scored_data, make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bert"))


@pytest.fixture(scope="session")
def scored_data(tmp_path_factory) -> dict[str, str]:
    return make_scored_data(tmp_path_factory.mktemp("data"))


# The slowest files first, so that with two xdist workers (--dist loadfile) no long file starts
# last and runs alone (longest-processing-time-first scheduling).
# Seconds of each in a run on 2026-12-07 (two workers): 210, 203, 194, 147, 124, 88, 70, 62, 54, 47, 32.
SLOWEST_FIRST = ["test_bench_smoke.py", "test_sweep.py", "test_reliability.py", "test_cluster_sweep.py",
                 "test_sweep_ends.py", "test_report.py", "test_train_cli.py", "test_cluster.py", "test_minilm.py",
                 "test_mlflow.py", "test_bad_inputs.py", "test_progress.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
