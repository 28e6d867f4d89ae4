"""The search space a sweep's searcher samples: which parameters it varies and how."""

import optuna
import pytest

from trainers.config import parse_config
from trainers.errors import ConfigError
from tune.config import SweepConfig
from tune.space import SearchSpace

CACHED = "CachedMultipleNegativesRankingLoss"


def sample(raw: dict, n: int = 8) -> list[tuple[dict, dict]]:
    """(the params the searcher chose, the values fixed by the space) of n trials."""
    space = SearchSpace(parse_config(SweepConfig, raw))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        fixed = space(trial)
        study.tell(trial, 0.0)
        out.append((trial.params, fixed))
    return out


def test_a_memory_only_setting_is_not_searched_by_default():
    # mini_batch_size changes memory and speed, not the gradients: searching it would only add noise to TPE.
    for params, fixed in sample({"search": {"losses": [CACHED]}}):
        assert f"{CACHED}.mini_batch_size" not in params
        assert fixed[f"{CACHED}.mini_batch_size"] == 32
        assert 5 <= params[f"{CACHED}.scale"] <= 50


def test_the_configs_own_memory_setting_is_kept():
    raw = {"loss": {"name": CACHED, "mini_batch_size": 8}, "search": {"losses": [CACHED, "CoSENTLoss"]}}
    cached = [fixed for params, fixed in sample(raw, 12) if params.get("loss") == CACHED]
    assert cached and all(fixed[f"{CACHED}.mini_batch_size"] == 8 for fixed in cached)


def test_search_can_still_vary_a_memory_setting_as_whole_numbers():
    raw = {"search": {"losses": [CACHED], CACHED: {"mini_batch_size": {"low": 8, "high": 16}}}}
    chosen = [params[f"{CACHED}.mini_batch_size"] for params, _ in sample(raw)]
    assert all(isinstance(v, int) and 8 <= v <= 16 for v in chosen)
    assert len(set(chosen)) > 1


def test_the_default_space_is_widened_to_hold_the_configs_own_recipe():
    from tune.space import recipe_point

    raw = {"loss": {"name": "TripletLoss", "margin": 8.0}, "per_device_train_batch_size": 64, "learning_rate": 1e-3,
           "search": {"losses": ["TripletLoss", "CoSENTLoss"]}}
    config = parse_config(SweepConfig, raw)
    space = SearchSpace(config)
    assert space.training_dims["per_device_train_batch_size"] == [16, 32, 64]
    assert space.training_dims["learning_rate"].high == 1e-3 and space.training_dims["learning_rate"].log
    assert space.loss_dims["TripletLoss"]["margin"].high == 8.0
    assert len(space.widened) == 3
    # the sweep's first trial is the recipe as written, not the part of it the default space held
    assert recipe_point(config, space) == {"loss": "TripletLoss", "TripletLoss.margin": 8.0,
                                           "learning_rate": 1e-3, "per_device_train_batch_size": 64, "warmup_ratio": 0.1}
    assert 64 in {params.get("per_device_train_batch_size") for params, _ in sample(raw, 12)}


def test_what_search_sets_is_kept_as_written():
    from tune.space import recipe_point

    raw = {"loss": {"name": "TripletLoss", "margin": 8.0}, "per_device_train_batch_size": 64,
           "search": {"losses": ["TripletLoss"], "per_device_train_batch_size": [16, 32], "TripletLoss": {"margin": {"low": 0.1, "high": 1.0}}}}
    config = parse_config(SweepConfig, raw)
    space = SearchSpace(config)
    assert space.training_dims["per_device_train_batch_size"] == [16, 32]
    assert space.loss_dims["TripletLoss"]["margin"].high == 1.0
    assert space.widened == []
    point = recipe_point(config, space)
    assert "per_device_train_batch_size" not in point and "TripletLoss.margin" not in point


def test_warm_start_keeps_old_trials_that_differ_only_in_a_memory_setting(tmp_path):
    # A sweep from before mini_batch_size left the default space searched it: its CachedMNRL
    # trials trained the same models, so they still seed the searcher.
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from tune.study import STUDY_DB, warm_start_trials

    old = tmp_path / "old"
    old.mkdir()
    study = optuna.create_study(study_name="old", storage=f"sqlite:///{old / STUDY_DB}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"loss": CACHED, f"{CACHED}.scale": 20.0, f"{CACHED}.mini_batch_size": 49,
                "learning_rate": 1e-4, "per_device_train_batch_size": 16, "warmup_ratio": 0.1},
        distributions={"loss": CategoricalDistribution([CACHED, "CoSENTLoss"]), f"{CACHED}.scale": FloatDistribution(5, 50, log=True),
                       f"{CACHED}.mini_batch_size": IntDistribution(8, 64, log=True), "learning_rate": FloatDistribution(5e-6, 2e-4, log=True),
                       "per_device_train_batch_size": CategoricalDistribution([16, 32]), "warmup_ratio": FloatDistribution(0, 0.2)},
        value=0.5,
    ))
    config = parse_config(SweepConfig, {"search": {"losses": [CACHED, "CoSENTLoss"]}})
    seeded, skipped = warm_start_trials(str(old), SearchSpace(config), config)
    assert skipped == 0 and len(seeded) == 1
    assert f"{CACHED}.mini_batch_size" not in seeded[0].params and seeded[0].params[f"{CACHED}.scale"] == 20.0


def first_trial(raw: dict) -> dict:
    """What the sweep's first trial runs when the config gives initial points (Ray's OptunaSearch
    enqueues them in the study the same way)."""
    from tune.space import initial_point_params

    config = parse_config(SweepConfig, raw)
    space = SearchSpace(config)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(initial_point_params(config.initial_points[0], config.loss.name))
    trial = study.ask()
    fixed = space(trial)
    return {**trial.params, **fixed}


def test_an_initial_point_runs_as_written():
    # batch 64 and margin 8 lie outside the default space, which widens to hold them (as for the recipe)
    point = {"loss": "TripletLoss", "margin": 8.0, "distance": "cosine", "per_device_train_batch_size": 64}
    first = first_trial({"initial_points": [point], "search": {"losses": ["TripletLoss", "CoSENTLoss"]}})
    assert (first["loss"], first["TripletLoss.margin"], first["TripletLoss.distance"], first["per_device_train_batch_size"]) \
        == ("TripletLoss", 8.0, "cosine", 64)


@pytest.mark.parametrize("point, search, fragment", [
    ({"loss": "TripletLoss"}, {"losses": ["CoSENTLoss"]}, r"initial_points\[0\].loss: TripletLoss is not searched"),
    ({"per_device_train_batch_size": 64}, {"per_device_train_batch_size": [16, 32]}, r"64 is not in the search space \(one of 16, 32\)"),
    ({"weight_decay": 0.1}, {"weight_decay": 0.01}, r"weight_decay: 0.1 is not in the search space \(0.01 \(fixed\)\)"),
    ({"max_steps": 5}, {}, r"max_steps: not searched, so every trial uses the config's max_steps \(30\)"),
])
def test_an_initial_point_the_space_cannot_run_is_refused(point, search, fragment):
    # Optuna would silently run something else in its place.
    with pytest.raises(ConfigError, match=fragment):
        SearchSpace(parse_config(SweepConfig, {"initial_points": [point], "search": search}))


def test_losses_the_train_data_cannot_feed_leave_the_default_search_or_are_refused_when_listed():
    from trainers.data import ScoredPairs
    from tune.space import fit_losses_to_data

    # every score under data.positive_threshold: no positive pairs for MNRL or Triplet, one label for Contrastive
    low = ScoredPairs([f"title {i}" for i in range(20)], [f"role {i}" for i in range(20)], [i / 40 for i in range(20)])
    config, unfit = fit_losses_to_data(parse_config(SweepConfig, {}), low)
    assert config.losses() == ["CosineSimilarityLoss", "CoSENTLoss", "AnglELoss"]
    assert "fewer than 2 pairs have score >= data.positive_threshold=0.75" in unfit["MultipleNegativesRankingLoss"]
    assert "one side of data.positive_threshold" in unfit["ContrastiveLoss"]
    listed = parse_config(SweepConfig, {"search": {"losses": ["CoSENTLoss", "TripletLoss"]}})
    with pytest.raises(ConfigError, match="search.losses: TripletLoss cannot train on data.train: fewer than 2 pairs"):
        fit_losses_to_data(listed, low)
    mixed = ScoredPairs(low.sentence1, low.sentence2, [i / 19 for i in range(20)])
    assert fit_losses_to_data(listed, mixed) == (listed, {})


def test_time_budgets_read_as_people_write_them():
    from tune.config import parse_duration

    assert [parse_duration(t) for t in ("90", "90s", "10m", "1.5h", "2d", "1h30m", "1h 30m")] == \
        [90, 90, 600, 5400, 172800, 5400, 5400]
    for text, why in (("0s", "no time at all"), ("-5m", "not a duration"), ("1h30", "not a duration"), ("soon", "not a duration")):
        with pytest.raises(ValueError, match=why):
            parse_duration(text)


def test_gradient_caching_reaches_every_trial_and_the_winners_recipe_apart_from_a_losss_own_mini_batch_size():
    """The sweep's gradient_cache_mini_batch_size is a setting of every trial (not searched) and of
    the exported recipe; CachedMNRL's own mini_batch_size stays that loss's parameter."""
    from trainers.config import TrainConfig
    from tune.engine import config_for_trials
    from tune.exporter import winner_recipe
    from tune.space import param_columns, trial_overrides

    config = parse_config(SweepConfig, {"gradient_cache_mini_batch_size": 4, "max_steps": 8,
                                        "search": {"losses": [CACHED, "TripletLoss"]}})
    for params, fixed in sample({"gradient_cache_mini_batch_size": 4, "search": {"losses": [CACHED, "TripletLoss"]}}, 6):
        assert not any("gradient_cache" in key for key in [*params, *fixed])
    chosen = {"loss": CACHED, f"{CACHED}.scale": 20.0, f"{CACHED}.mini_batch_size": 16, "learning_rate": 1e-4}
    trial = TrainConfig.model_validate({**config_for_trials(config), **trial_overrides(chosen)})
    assert trial.gradient_cache_mini_batch_size == 4
    assert trial.loss.resolved_params()["mini_batch_size"] == 16
    recipe = winner_recipe(config, {"config": param_columns(chosen), "trial_id": "t1", "step": 8}, [])
    assert recipe["gradient_cache_mini_batch_size"] == 4
    assert recipe["loss"] == {"name": CACHED, "scale": 20.0, "mini_batch_size": 16}
