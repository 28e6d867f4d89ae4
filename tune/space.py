"""The search space, written once as define-by-run code.

A trial first picks a loss; only that loss's own parameters (from the registry, narrowed by
``search:``) are then sampled, followed by the training hyperparameters. Optuna parameter
names are ``loss``, ``<Loss>.<param>`` and the ``TrainingArguments`` names, so conditional
parameters of different losses never share a distribution.
"""

from __future__ import annotations

from typing import Any

from trainers.errors import ConfigError
from trainers.losses import IntParam, get_loss
from tune.config import TRAINING_DIMENSIONS, Range, SweepConfig

WHOLE_TRAINING_KEYS = ("per_device_train_batch_size", "max_steps", "max_seq_length")


class SearchSpace:
    """Callable ``space(optuna_trial) -> fixed values``; a class (not a closure) so Ray can pickle
    it into the experiment state and ``--resume`` can rebuild the searcher."""

    def __init__(self, config: SweepConfig):
        self.losses = config.losses()
        self.widened: list[str] = []  # "name: old -> new", each default widened to hold the recipe
        searched = config.search.model_extra or {}
        # What the config itself asks for: its own recipe and its initial points, in Optuna names.
        points = [initial_point_params(p, config.loss.name) for p in config.initial_points or []]
        recipe = {f"{config.loss.name}.{k}": v for k, v in config.loss.params.items()}
        recipe.update({name: getattr(config, name) for name in TRAINING_DIMENSIONS if name in config.model_fields_set})
        given: dict[str, list[Any]] = {}
        for named in (recipe, *points):
            for name, value in named.items():
                given.setdefault(name, []).append(value)
        self.loss_dims = {}
        for loss in self.losses:
            dims = config.search.loss_dimensions(loss, config.loss.params if loss == config.loss.name else {})
            self.loss_dims[loss] = self._holding(dims, given, set(searched.get(loss) or {}), prefix=f"{loss}.")
        self.training_dims = self._holding(config.search.training_dimensions(), given, set(searched))
        for i, point in enumerate(points):
            self._check_point(point, config, f"initial_points[{i}]")

    def _holding(self, dims: dict[str, Any], given: dict[str, list[Any]], searched: set[str], prefix: str = "") -> dict[str, Any]:
        """The default ranges and choices, widened to hold the values the config names itself: its
        recipe is the sweep's first trial, and a batch size of 64 outside the default [16, 32] would
        otherwise be silently left out (so would an initial point's). What ``search:`` sets is kept
        as written."""
        out = dict(dims)
        for name, dim in dims.items():
            if name in searched:
                continue
            for value in given.get(f"{prefix}{name}", []):
                if value is None or isinstance(value, bool):
                    continue
                now = out[name]
                if isinstance(now, Range) and isinstance(value, (int, float)) and not now.low <= value <= now.high:
                    if now.log and value <= 0:
                        continue
                    out[name] = Range(low=min(now.low, value), high=max(now.high, value), log=now.log)
                elif isinstance(now, list) and len(now) > 1 and value not in now:
                    grown = [*now, value]
                    out[name] = sorted(grown) if all(isinstance(v, (int, float)) for v in grown) else grown
            if out[name] != dim:
                self.widened.append(f"{prefix}{name}: {describe_dimension(dim)} -> {describe_dimension(out[name])}")
        return out

    def _check_point(self, params: dict[str, Any], config: SweepConfig, where: str) -> None:
        """Optuna silently replaces an enqueued value the space cannot take (a loss that is not
        searched, a choice that is not listed, a value where the space fixes another): refuse it."""
        loss = params["loss"]
        if loss not in self.losses:
            raise ConfigError(f"{where}.loss: {loss} is not searched (search.losses: {', '.join(self.losses)}); add it there or change the point")
        dims = {**{f"{loss}.{k}": d for k, d in self.loss_dims[loss].items()}, **self.training_dims}
        for name, value in params.items():
            key = name.split(".", 1)[1] if name.startswith(f"{loss}.") else name
            if name == "loss" or isinstance(dims.get(name), Range):  # any value of a range is tried as given
                continue
            if name not in dims:
                fixed = getattr(config, key, None)
                raise ConfigError(f"{where}.{key}: not searched, so every trial uses the config's {key} "
                                  f"({'unset' if fixed is None else fixed}); search it under search: or drop it from the point")
            if value not in (dims[name] if isinstance(dims[name], list) else [dims[name]]):
                raise ConfigError(f"{where}.{key}: {value!r} is not in the search space ({describe_dimension(dims[name])}); "
                                  f"widen it under search: or change the point")

    def __call__(self, trial) -> dict[str, Any]:
        fixed: dict[str, Any] = {}
        loss = trial.suggest_categorical("loss", self.losses) if len(self.losses) > 1 else self.losses[0]
        fixed.update({} if len(self.losses) > 1 else {"loss": loss})
        loss_params = get_loss(loss).params
        for name, dim in self.loss_dims[loss].items():
            self._suggest(trial, f"{loss}.{name}", dim, fixed, whole=isinstance(loss_params[name], IntParam))
        for name, dim in self.training_dims.items():
            self._suggest(trial, name, dim, fixed, whole=name in WHOLE_TRAINING_KEYS)
        return fixed

    @staticmethod
    def _suggest(trial, name: str, dim, fixed: dict[str, Any], whole: bool) -> None:
        if isinstance(dim, Range):
            if whole:
                trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
            else:
                trial.suggest_float(name, dim.low, dim.high, log=dim.log)
        elif isinstance(dim, list):
            if len(dim) == 1:
                fixed[name] = dim[0]
            else:
                trial.suggest_categorical(name, dim)
        else:
            fixed[name] = dim

    def describe(self) -> dict[str, Any]:
        """The space as plain data, for summary.json and the model card."""

        def show(dim):
            return dim.model_dump() if isinstance(dim, Range) else dim

        return {
            "loss": self.losses,
            "loss_params": {loss: {k: show(v) for k, v in dims.items()} for loss, dims in self.loss_dims.items()},
            **{k: show(v) for k, v in self.training_dims.items()},
        }


def fit_losses_to_data(config: SweepConfig, train_pairs) -> tuple[SweepConfig, dict[str, str]]:
    """The config with only the searched losses that the train split can feed (MultipleNegatives-
    RankingLoss needs pairs above ``data.positive_threshold``...), and why each other one cannot.
    Losses the user listed under ``search.losses`` are not dropped: one that cannot train is an error."""
    from trainers.data import adapt
    from trainers.errors import DataError

    unfit: dict[str, str] = {}
    by_shape: dict[str, str | None] = {}
    for loss in config.losses():
        shape = get_loss(loss).shape
        if shape not in by_shape:
            try:
                adapt(train_pairs, shape, positive_threshold=config.data.positive_threshold, seed=config.seed)
                by_shape[shape] = None
            except DataError as exc:
                by_shape[shape] = str(exc)
        if by_shape[shape]:
            unfit[loss] = by_shape[shape]
    if not unfit:
        return config, {}
    kept = [loss for loss in config.losses() if loss not in unfit]
    if config.search.losses is not None or not kept:
        loss, why = next(iter(unfit.items()))
        raise ConfigError(f"search.losses: {loss} cannot train on data.train: {why}, or leave {loss} out of search.losses")
    return config.model_copy(update={"search": config.search.model_copy(update={"losses": kept})}), unfit


def describe_dimension(dim: Any) -> str:
    """``5e-06 .. 0.0002 (log)``, ``one of 16, 32``, ``32 (fixed)``: one dimension, for people."""
    if isinstance(dim, Range):
        return f"{dim.low:g} .. {dim.high:g}" + (" (log)" if dim.log else "")
    if isinstance(dim, list):
        return "one of " + ", ".join(str(v) for v in dim) if len(dim) > 1 else f"{dim[0]} (fixed)"
    return f"{dim} (fixed)"


def recipe_point(config: SweepConfig, space: SearchSpace) -> dict[str, Any] | None:
    """The config's own recipe as a first point, in Optuna parameter names: its loss, that loss's
    params and the training hyperparameters, each only where the space searches it and holds the
    value (the default space is widened to hold them; a value outside a range that `search:` set is
    left to the searcher). None when the loss is not searched."""
    loss = config.loss.name
    if loss not in space.losses:
        return None
    point: dict[str, Any] = {"loss": loss}
    given = {f"{loss}.{k}": v for k, v in config.loss.params.items()}
    given.update({name: getattr(config, name) for name in space.training_dims if hasattr(config, name)})
    dims = {**{f"{loss}.{k}": d for k, d in space.loss_dims[loss].items()}, **space.training_dims}
    for name, value in given.items():
        dim = dims.get(name)
        if isinstance(dim, Range) and value is not None and dim.low <= value <= dim.high:
            point[name] = value
        elif isinstance(dim, list) and len(dim) > 1 and value in dim:
            point[name] = value
    return point


# Put by the searcher into the first trial's params (tune.faults.ResumableOptunaSearch): that
# trial scores the untuned model before it trains. A note to the trial, not a training parameter.
SCORE_BASE = "stune_score_base"


def trial_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Flat trial params (``loss``, ``TripletLoss.margin``, ``learning_rate``...) -> config keys.

    Parameters of a loss other than the chosen one are dropped: a searcher's warm-start point
    may carry them, a trial never uses them. So is ``SCORE_BASE``.
    """
    loss = params["loss"]
    overrides: dict[str, Any] = {"loss": {"name": loss}}
    for key, value in params.items():
        if key in ("loss", SCORE_BASE):
            continue
        if "." in key:
            owner, name = key.split(".", 1)
            if owner == loss:
                overrides["loss"][name] = value
        else:
            overrides[key] = value
    return overrides


def param_columns(params: dict[str, Any]) -> dict[str, Any]:
    """Trial params as trials.csv and MLflow show them: ``TripletLoss.margin`` -> ``margin`` of the chosen loss."""
    overrides = trial_overrides(params)
    loss = overrides.pop("loss")
    return {"loss": loss["name"], **{k: v for k, v in loss.items() if k != "name"}, **overrides}


def initial_point_params(point: dict[str, Any], default_loss: str) -> dict[str, Any]:
    """``{loss: TripletLoss, margin: 0.3, learning_rate: 2e-5}`` -> Optuna parameter names."""
    from trainers.config import TrainConfig

    loss = point.get("loss", default_loss)
    params: dict[str, Any] = {"loss": loss}
    for key, value in point.items():
        if key == "loss":
            continue
        params[key if key in TrainConfig.model_fields else f"{loss}.{key}"] = value
    return params
