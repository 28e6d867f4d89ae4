"""The sweep config: a ``stune train`` config plus what to search and how.

```yaml
search:
  losses: [CosineSimilarityLoss, MultipleNegativesRankingLoss, TripletLoss]   # omitted: every loss
  learning_rate: {low: 1.0e-6, high: 1.0e-4, log: true}
  per_device_train_batch_size: [16, 32, 64]
  MultipleNegativesRankingLoss: {scale: {low: 5, high: 50}}
  TripletLoss: {margin: {low: 0.1, high: 1.0}}
trials: 24
```
A range is ``{low, high, log}``, a list is a categorical choice, a scalar fixes the value.
Everything is checked here, before Ray or torch is imported.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainers.config import TrainConfig, eval_interval, format_validation_error, parse_config, read_yaml, with_overrides
from trainers.errors import ConfigError
from trainers.losses import LOSSES, ChoiceParam, FloatParam, IntParam, get_loss


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is greater than high ({self.high:g}); swap them")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low:g})")
        return self


Choice = list[Union[float, int, str]]
Dimension = Union[Range, Choice, float, int, str]

# Training hyperparameters the search may vary, with the default space of a sweep.
TRAINING_DIMENSIONS: dict[str, Dimension] = {
    "learning_rate": Range(low=5e-6, high=2e-4, log=True),
    "per_device_train_batch_size": [16, 32],
    "warmup_ratio": Range(low=0.0, high=0.2),
}
OPTIONAL_DIMENSIONS = ("num_train_epochs", "max_steps", "weight_decay", "lr_scheduler_type", "max_seq_length")
TRAINING_LIMITS = {  # what TrainConfig accepts, checked on ranges and choices alike
    "learning_rate": (1e-12, 1.0), "per_device_train_batch_size": (1, None), "warmup_ratio": (0.0, 0.999),
    "num_train_epochs": (1e-6, None), "max_steps": (1, None), "weight_decay": (0.0, None), "max_seq_length": (8, None),
}


class SearchConfig(BaseModel):
    """``search:`` — which losses, and per-dimension overrides of the default space."""

    model_config = ConfigDict(extra="allow")
    losses: list[str] | None = None

    @field_validator("losses")
    @classmethod
    def _registered(cls, losses: list[str] | None) -> list[str] | None:
        if losses is not None:
            if not losses:
                raise ValueError("is empty; list at least one loss or omit it to search every loss")
            for name in losses:
                get_loss(name)
        return losses

    @model_validator(mode="after")
    def _known_dimensions(self) -> "SearchConfig":
        for key, value in (self.model_extra or {}).items():
            if key in LOSSES:
                _check_loss_dims(key, value)
            elif key in TRAINING_DIMENSIONS or key in OPTIONAL_DIMENSIONS:
                _check_dimension(key, _as_dimension(key, value))
            else:
                known = [*TRAINING_DIMENSIONS, *OPTIONAL_DIMENSIONS, *LOSSES, "losses"]
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "use a training key, a loss name or 'losses'"
                raise ValueError(f"unknown search key {key!r}; {hint}")
        return self

    def training_dimensions(self) -> dict[str, Dimension]:
        dims = dict(TRAINING_DIMENSIONS)
        for key, value in (self.model_extra or {}).items():
            if key not in LOSSES:
                dims[key] = _as_dimension(key, value)
        return dims

    def loss_dimensions(self, loss: str, given: dict[str, Any] | None = None) -> dict[str, Dimension]:
        """The loss's own params: the registry's ranges, overridden by the config. A param the
        registry does not search (memory or speed only) stays fixed at ``given`` (the config's
        own loss params) or its default, unless ``search:`` gives it a range."""
        spec = get_loss(loss)
        dims: dict[str, Dimension] = {}
        for name, param in spec.params.items():
            if name in spec.unsearched:
                dims[name] = (given or {}).get(name, param.default)
            elif isinstance(param, ChoiceParam):
                dims[name] = list(param.choices)
            elif isinstance(param, IntParam):
                dims[name] = Range(low=param.low, high=param.high, log=param.log)
            elif isinstance(param, FloatParam):
                dims[name] = Range(low=param.low, high=param.high, log=param.log)
        for name, value in ((self.model_extra or {}).get(loss) or {}).items():
            dims[name] = _as_dimension(f"{loss}.{name}", value)
        return dims


def _as_dimension(key: str, value: Any) -> Dimension:
    if isinstance(value, dict):
        try:
            return Range.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise ValueError(f"{key}: {where + ': ' if where else ''}{msg}") from None
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{key}: empty list; give at least one choice")
        return value
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    raise ValueError(f"{key}: use {{low, high, log}}, a list of choices, or one fixed value")


def _check_dimension(key: str, dim: Dimension) -> None:
    low, high = TRAINING_LIMITS.get(key, (None, None))
    values = [dim.low, dim.high] if isinstance(dim, Range) else dim if isinstance(dim, list) else [dim]
    for value in values:
        if low is not None and isinstance(value, (int, float)) and (value < low or (high is not None and value > high)):
            bound = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
            raise ValueError(f"{key}: {value!r} is out of range; values must be {bound}")
        if isinstance(dim, Range):
            continue  # a range's ends are numbers: the limits above are what a trial's config checks
        try:  # what a trial's own config would refuse (an unknown lr_scheduler_type...)
            TrainConfig.model_validate({key: value})
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"{key}: {value!r} cannot be used ({msg})") from None


def _check_loss_dims(loss: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{loss}: map its parameters, e.g. {{margin: {{low: 0.1, high: 1.0}}}}")
    spec = get_loss(loss)
    for name, dim in value.items():
        if name not in spec.params:
            takes = ", ".join(spec.params) or "no parameters"
            raise ValueError(f"{loss}: {loss} does not take {name!r} (it takes: {takes})")
        dim = _as_dimension(f"{loss}.{name}", dim)
        param = spec.params[name]
        ends = [int(e) if isinstance(param, IntParam) and float(e).is_integer() else e for e in (dim.low, dim.high)] \
            if isinstance(dim, Range) else []
        for v in (dim if isinstance(dim, list) else ends if isinstance(dim, Range) else [dim]):
            try:
                param.check(v)
            except ValueError as exc:
                raise ValueError(f"{loss}.{name} {exc}") from None


class AshaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # None: half the trial's evaluations (at least 1). Stopping after the first of 4 evaluations cut,
    # on one seed of 3, the configuration random search rode to the best score (0.670 at step 3,
    # 0.7425 at step 6); with 2 of 4, TPE + ASHA reached random's best in 0.65-0.73 of the
    # trial-steps in 3 runs, against 0.83 in 1 (bench/search_efficiency.py, BENCHMARKS.md).
    grace_period: int | None = Field(None, ge=1, description="evaluations before a trial can be stopped [half of evaluations_per_trial]")
    # 3: a trial goes on past a rung only in the top third of the trials that reached it. Against 2,
    # TPE + ASHA reached random search's best in 0.552 of the trial-steps (was 0.589) and ended
    # higher (0.7425 vs 0.7382), mean of 3 seeds at 192 trial-steps; 4 gave 0.568 and 0.7416.
    # Replaying 3000 orderings of random search's 48 recorded trials through ASHA agreed
    # (BENCHMARKS.md, section 2).
    reduction_factor: float = Field(3.0, gt=1, description="ASHA keeps the top 1/reduction_factor at each rung [3]")


DEFAULT_TRIAL_STEPS = 30  # per trial, when the config sets neither max_steps nor num_train_epochs


class SweepConfig(TrainConfig):
    """A train config plus the sweep. Defaults fit the no-config run in about 10 minutes on 2 CPU cores."""

    search: SearchConfig = Field(default_factory=SearchConfig)
    trials: int = Field(10, ge=1)
    searcher: Literal["tpe", "random", "cmaes", "gp"] = "tpe"
    scheduler: Literal["asha", "none"] = "asha"
    asha: AshaConfig = Field(default_factory=AshaConfig)
    max_concurrent_trials: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float | None = Field(None, ge=0, description="None: 1 when the cluster has GPUs, else 0")
    evaluations_per_trial: int = Field(3, ge=1, description="eval_steps = steps / this, unless eval_steps is set")
    # None: the config's own recipe (its loss and hyperparameters, where the space holds them)
    # is the first trial, so a sweep starts from what `stune train` would do; []: no warm start.
    initial_points: list[dict[str, Any]] | None = None
    max_failures: int = Field(2, ge=0)
    time_budget: str | None = None
    startup_trials: int | None = Field(None, ge=1, description="random trials before TPE models the space")

    @property
    def random_startup_trials(self) -> int:
        """Random trials before TPE (CMA-ES, GP) models the space: the config's, or a quarter of the trials in [2, 10]."""
        return self.startup_trials or max(2, min(10, self.trials // 4))

    @property
    def evaluations(self) -> int | None:
        """How many times a trial is evaluated (ASHA's rungs count these): ``evaluations_per_trial``,
        fewer if the trial has fewer steps; with ``eval_steps``, steps / eval_steps, or None where the
        steps depend on the trial (epochs, or a searched length)."""
        searched = set(self.search.model_extra or {})
        steps = self.max_steps if self.max_steps and not {"max_steps", "num_train_epochs"} & searched else None
        if not steps:
            return self.evaluations_per_trial if self.eval_steps is None else None
        return math.ceil(steps / eval_interval(steps, self.evaluations_per_trial, self.eval_steps))

    @property
    def grace_period(self) -> int:
        """ASHA's grace period in evaluations: the config's, or half the trial's evaluations."""
        evaluations = self.evaluations or self.evaluations_per_trial
        return min(self.asha.grace_period or max(1, evaluations // 2), evaluations)

    @model_validator(mode="before")
    @classmethod
    def _trial_length(cls, raw: Any) -> Any:
        # A trial's length must be fixed for the sweep to be comparable and bounded; one epoch of
        # an unknown data set is neither, so a sweep without a length gets DEFAULT_TRIAL_STEPS.
        if not isinstance(raw, dict):
            return raw
        searched = raw.get("search") if isinstance(raw.get("search"), dict) else {}
        if not {"max_steps", "num_train_epochs"} & (set(raw) | set(searched)):
            raw = {**raw, "max_steps": DEFAULT_TRIAL_STEPS}
        return raw

    @field_validator("time_budget")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _initial_points_valid(self) -> "SweepConfig":
        for i, point in enumerate(self.initial_points or []):
            loss = point.get("loss", self.loss.name)
            try:
                spec = get_loss(loss)
            except ValueError as exc:
                raise ValueError(f"initial_points[{i}].loss: {exc}") from None
            for key in point:
                if key != "loss" and key not in TrainConfig.model_fields and key not in spec.params:
                    raise ValueError(f"initial_points[{i}]: unknown key {key!r} for {loss}")
            try:  # the values as a config would take them: a margin the loss accepts, a batch size >= 1
                spec.check_params({k: v for k, v in point.items() if k in spec.params})
                TrainConfig.model_validate({k: v for k, v in point.items() if k in TrainConfig.model_fields and k != "loss"})
            except ValidationError as exc:
                raise ValueError(format_validation_error(exc, TrainConfig, f"initial_points[{i}]")) from None
            except ValueError as exc:
                raise ValueError(f"initial_points[{i}]: {exc}") from None
        return self

    def losses(self) -> list[str]:
        return self.search.losses or list(LOSSES)


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1.5h``, ``2d``, ``1h30m`` -> seconds."""
    units = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
    compact = re.sub(r"\s+", "", str(text))
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", compact)
    if not compact or "".join(n + u for n, u in parts) != compact or (len(parts) > 1 and not all(u for _, u in parts)):
        raise ValueError(f"time budget {text!r} is not a duration; write e.g. 90s, 10m, 2h, 1h30m")
    seconds = sum(float(number) * units[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"time budget {text!r} is no time at all; give a positive duration, e.g. 10m")
    return seconds


def load_sweep_config(path: str | None = None, **overrides: Any) -> SweepConfig:
    raw = with_overrides(read_yaml(path), overrides)
    return parse_config(SweepConfig, raw, str(path) if path else "config")


__all__ = ["SweepConfig", "SearchConfig", "Range", "ConfigError", "load_sweep_config", "parse_duration"]
