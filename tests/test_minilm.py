"""End to end with the real bundled all-MiniLM-L6-v2 on the embedded HR data (small slices)."""

import json

import pytest
import yaml

from cli import run_stune

pytestmark = pytest.mark.slow


def test_stune_train_on_bundled_minilm_and_embedded_data(tmp_path):
    from sentence_transformers import SentenceTransformer

    cfg = tmp_path / "c.yaml"
    # No model and no data: the bundled model and the embedded data set, sliced for time.
    cfg.write_text(yaml.safe_dump({"data": {"max_rows": 120}, "loss": "CoSENTLoss", "max_steps": 6,
                                   "per_device_train_batch_size": 16, "learning_rate": 5e-5}))
    proc = run_stune("train", cfg, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["model"].startswith("all-MiniLM-L6-v2")
    # The bundled model is a real one: its untuned eval score on the HR pairs is far from random.
    assert metrics["base"]["eval"]["spearman_cosine"] > 0.3
    assert set(metrics["test"]) >= {"spearman_cosine", "pearson_cosine"}
    model = SentenceTransformer(str(tmp_path / "out" / "model"))
    assert model.get_embedding_dimension() == 384
