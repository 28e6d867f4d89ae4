"""Every registered loss fine-tunes the tiny model for a few steps and moves its embeddings."""

import numpy as np
import pytest

from trainers.config import TrainConfig
from trainers.losses import LOSSES, SHAPE_COLUMNS, get_loss
from trainers.train import fine_tune


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains_and_changes_embeddings(loss, tiny_model, scored_data, tmp_path):
    from trainers.model import load_model

    config = TrainConfig.model_validate(
        {"model": tiny_model, "loss": loss, "data": scored_data, "max_steps": 3, "eval_steps": 3,
         "per_device_train_batch_size": 8, "learning_rate": 1e-3}
    )
    sentences = ["senior software engineer", "registered nurse", "plumber"]
    before = load_model(tiny_model).encode(sentences)
    evaluations = []
    model, result = fine_tune(config, tmp_path, on_evaluation=evaluations.append, score_base=False)
    after = model.encode(sentences)
    assert np.abs(after - before).max() > 1e-4, f"{loss} did not change the embeddings"
    assert result.steps == 3
    assert [e.step for e in evaluations] == [3]
    assert (evaluations[0].checkpoint / "modules.json").exists()
    assert -1 <= result.best["metrics"]["spearman_cosine"] <= 1


def test_registry_declares_shape_and_ranges():
    for name, spec in LOSSES.items():
        assert spec.name == name
        assert spec.shape in SHAPE_COLUMNS
        for param in spec.params.values():
            assert param.check(param.default) == param.default
    assert set(get_loss("TripletLoss").params) == {"margin", "distance"}
    assert set(get_loss("CachedMultipleNegativesRankingLoss").params) == {"scale", "mini_batch_size"}
    assert get_loss("CosineSimilarityLoss").params == {}


def test_unknown_loss_suggests_the_close_name():
    with pytest.raises(ValueError, match="did you mean TripletLoss"):
        get_loss("TripletLos")


def test_loss_params_are_validated():
    spec = get_loss("TripletLoss")
    assert spec.check_params({"margin": 0.3}) == {"margin": 0.3, "distance": "euclidean"}
    with pytest.raises(ValueError, match="does not take scale"):
        spec.check_params({"scale": 3})
    with pytest.raises(ValueError, match="TripletLoss.distance must be one of"):
        spec.check_params({"distance": "chebyshev"})


def test_the_token_limit_is_read_from_the_models_position_embeddings(tmp_path):
    """BERT's 512 positions hold 512 tokens; RoBERTa and MPNet number positions after the padding
    index, so 514 hold 512; a model whose config names no positions (rotary) has no limit here."""
    import json

    from trainers.model import model_max_tokens

    for name, config, expected in (
        ("bert", {"model_type": "bert", "max_position_embeddings": 512, "pad_token_id": 0}, 512),
        ("roberta", {"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
        ("mpnet", {"model_type": "mpnet", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
        ("rotary", {"model_type": "modernbert"}, None),
    ):
        folder = tmp_path / name
        (folder / "0_Transformer").mkdir(parents=True)  # the layout older sentence-transformers saved
        (folder / "modules.json").write_text(json.dumps([{"path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]))
        (folder / "0_Transformer" / "config.json").write_text(json.dumps(config))
        assert model_max_tokens(folder) == expected, name


def test_a_hub_id_in_the_cache_is_named_as_it_was_found(tiny_model, tmp_path, monkeypatch):
    """A bare name may be a legacy hub id (no organisation) or a sentence-transformers model's:
    the card's base_model names the one the cache holds."""
    import shutil

    import huggingface_hub.constants

    from trainers.model import hub_id, resolve_model_path

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    for repo in ("models--tiny-legacy", "models--sentence-transformers--tiny-st"):
        shutil.copytree(tiny_model, tmp_path / repo / "snapshots" / ("ab" * 20))
        (tmp_path / repo / "refs").mkdir()
        (tmp_path / repo / "refs" / "main").write_text("ab" * 20)
    assert hub_id("tiny-legacy") == "tiny-legacy" and hub_id("tiny-st") == "sentence-transformers/tiny-st"
    assert resolve_model_path("tiny-legacy").startswith(str(tmp_path / "models--tiny-legacy"))
    assert hub_id("nowhere") is None and hub_id(str(tiny_model)) is None
