"""The search space, written once as define-by-run code.

A trial first picks a loss; only that loss's own parameters (from the registry, narrowed by
``search:``) are then sampled, followed by the training hyperparameters. Optuna parameter
names are ``loss``, ``<Loss>.<param>`` and the ``TrainingArguments`` names, so conditional
parameters of different losses never share a distribution.
"""

from __future__ import annotations

from typing import Any

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
        self.loss_dims = {}
        for loss in self.losses:
            own = config.loss.params if loss == config.loss.name else {}
            dims = config.search.loss_dimensions(loss, own)
            self.loss_dims[loss] = self._holding(dims, own, set(searched.get(loss) or {}), prefix=f"{loss}.")
        given = {name: getattr(config, name) for name in TRAINING_DIMENSIONS if name in config.model_fields_set}
        self.training_dims = self._holding(config.search.training_dimensions(), given, set(searched))

    def _holding(self, dims: dict[str, Any], given: dict[str, Any], searched: set[str], prefix: str = "") -> dict[str, Any]:
        """The default ranges and choices, widened to hold the config's own values: its recipe is
        the sweep's first trial, and a batch size of 64 outside the default [16, 32] would
        otherwise be silently left out. What ``search:`` sets is kept as written."""
        out = dict(dims)
        for name, dim in dims.items():
            value = given.get(name)
            if name in searched or value is None or isinstance(value, bool):
                continue
            if isinstance(dim, Range) and isinstance(value, (int, float)) and not dim.low <= value <= dim.high:
                if dim.log and value <= 0:
                    continue
                out[name] = Range(low=min(dim.low, value), high=max(dim.high, value), log=dim.log)
            elif isinstance(dim, list) and len(dim) > 1 and value not in dim:
                grown = [*dim, value]
                out[name] = sorted(grown) if all(isinstance(v, (int, float)) for v in grown) else grown
            else:
                continue
            self.widened.append(f"{prefix}{name}: {describe_dimension(dim)} -> {describe_dimension(out[name])}")
        return out

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


def trial_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Flat trial params (``loss``, ``TripletLoss.margin``, ``learning_rate``...) -> config keys.

    Parameters of a loss other than the chosen one are dropped: a searcher's warm-start point
    may carry them, a trial never uses them.
    """
    loss = params["loss"]
    overrides: dict[str, Any] = {"loss": {"name": loss}}
    for key, value in params.items():
        if key == "loss":
            continue
        if "." in key:
            owner, name = key.split(".", 1)
            if owner == loss:
                overrides["loss"][name] = value
        else:
            overrides[key] = value
    return overrides


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
