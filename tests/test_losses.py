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


def _batch(model, shape, rows=8):
    """One batch of ``rows`` examples for a loss of ``shape``: its columns' features and labels."""
    import torch

    from tiny import FAMILIES

    titles = [title for family in FAMILIES.values() for title in family]
    columns = [c for c in SHAPE_COLUMNS[shape] if c not in ("score", "label")]
    texts = [[f"{titles[(3 * i + 7 * c) % len(titles)]} role {i}" for i in range(rows)] for c in range(len(columns))]
    labels = {"scored_pairs": torch.linspace(0, 1, rows), "labeled_pairs": torch.tensor([i % 3 == 0 for i in range(rows)]).long()}
    return [model.tokenize(column) for column in texts], labels.get(shape, torch.zeros(rows))


@pytest.mark.parametrize("loss", sorted(set(LOSSES) - {"CachedMultipleNegativesRankingLoss"}))
def test_gradient_caching_gives_every_loss_the_same_value_and_gradients(loss, tiny_model):
    """Gradient caching embeds a few texts at a time; with dropout off the loss and every weight's
    gradient are the plain loss's (an uneven split: 8 rows in mini-batches of 3)."""
    import torch

    from trainers.losses.gradient_cache import GradientCached
    from trainers.model import load_model

    model = load_model(tiny_model)
    model.eval()  # no dropout: both passes see the same network
    spec = get_loss(loss)
    features, labels = _batch(model, spec.shape)
    params = spec.check_params({})

    texts_per_forward = []
    model.register_forward_pre_hook(lambda module, args: texts_per_forward.append(len(args[0]["input_ids"])))

    def value_and_gradients(loss_module):
        model.zero_grad()
        texts_per_forward.clear()
        value = loss_module([dict(f) for f in features], labels)
        value.backward()
        return value.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain_value, plain_grads = value_and_gradients(spec.build(model, **params))
    assert sum(texts_per_forward) == 8 * len(features) and min(texts_per_forward) >= 8  # whole columns at once
    cached_value, cached_grads = value_and_gradients(GradientCached(spec.build(model, **params), mini_batch_size=3))
    # each column in mini-batches of 3, 3 and 2 texts, twice (without, then with activations)
    assert sorted(texts_per_forward) == sorted([3, 3, 2] * 2 * len(features)), texts_per_forward
    assert plain_value > 0
    assert cached_value == pytest.approx(plain_value, rel=1e-5)
    assert len(cached_grads) == len(plain_grads) > 0
    cached, plain = torch.cat([g.flatten() for g in cached_grads]), torch.cat([g.flatten() for g in plain_grads])
    assert plain.norm() > 0
    assert (cached - plain).norm() <= 1e-4 * plain.norm()  # float sums in another order: equal up to rounding


def test_gradient_cache_mini_batch_size_trains_with_cached_gradients_and_caps_a_cached_losss_own(tiny_model, scored_data, tmp_path):
    from trainers.losses.gradient_cache import GradientCached
    from trainers.model import load_model
    from trainers.train import build_loss

    config = TrainConfig.model_validate(
        {"model": tiny_model, "loss": "TripletLoss", "data": scored_data, "max_steps": 3, "eval_steps": 3,
         "per_device_train_batch_size": 8, "learning_rate": 1e-3, "gradient_cache_mini_batch_size": 2}
    )
    model = load_model(tiny_model)
    assert isinstance(build_loss(config, model), GradientCached)
    assert type(build_loss(config.model_copy(update={"gradient_cache_mini_batch_size": None}), model)).__name__ == "TripletLoss"
    for own, cap, used in ((4, 2, 2), (4, 8, 4), (4, None, 4)):  # a cached loss's mini_batch_size, capped
        cached_mnrl = TrainConfig.model_validate({**config.model_dump(), "gradient_cache_mini_batch_size": cap,
                                                  "loss": {"name": "CachedMultipleNegativesRankingLoss", "mini_batch_size": own}})
        loss = build_loss(cached_mnrl, model)
        assert type(loss).__name__ == "CachedMultipleNegativesRankingLoss" and loss.mini_batch_size == used

    sentences = ["senior software engineer", "registered nurse", "plumber"]
    trained, result = fine_tune(config, tmp_path, score_base=False)
    assert abs(trained.encode(sentences) - model.encode(sentences)).max() > 1e-4
    assert result.steps == 3
    trained.save(str(tmp_path / "saved"))  # its model card names the loss that was computed, and how
    card = (tmp_path / "saved" / "README.md").read_text()
    assert '"loss": "TripletLoss"' in card and '"triplet_margin": 0.5' in card and '"mini_batch_size": 2' in card


def test_gradient_cache_mini_batch_size_must_be_a_whole_number_of_texts():
    from trainers.config import parse_config
    from trainers.errors import ConfigError

    with pytest.raises(ConfigError, match="gradient_cache_mini_batch_size: Input should be greater than or equal to 1"):
        parse_config(TrainConfig, {"gradient_cache_mini_batch_size": 0})


def test_gradient_caching_refuses_a_loss_that_caches_itself_or_is_not_computed_from_embeddings(tiny_model):
    from torch import nn

    from trainers.losses.gradient_cache import GradientCached
    from trainers.model import load_model

    model = load_model(tiny_model)
    cached_mnrl = get_loss("CachedMultipleNegativesRankingLoss").build(model, scale=20.0, mini_batch_size=4)
    with pytest.raises(ValueError, match="CachedMultipleNegativesRankingLoss caches its gradients itself; set its own mini_batch_size"):
        GradientCached(cached_mnrl, mini_batch_size=2)

    class EmbeddingsUnseen(nn.Module):  # a loss that reads features, not embeddings
        def __init__(self):
            super().__init__()
            self.model = model

    with pytest.raises(ValueError, match="EmbeddingsUnseen cannot be computed from embeddings, so it cannot cache gradients"):
        GradientCached(EmbeddingsUnseen(), mini_batch_size=2)
