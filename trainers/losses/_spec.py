"""What every loss module declares: its data shape, its tunable hyperparameters, how to build it.

Nothing here imports torch or sentence-transformers, so configs can be validated (and search
spaces built) before anything heavy is loaded. Each loss module imports its class lazily in
``build``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

#: The data shapes a loss can ask for. Every data set is first read as scored pairs
#: (``sentence1, sentence2, score`` in [0, 1]); ``trainers.data.adapt`` derives the others.
Shape = Literal["scored_pairs", "positive_pairs", "triplets", "labeled_pairs"]

SHAPE_COLUMNS: dict[str, tuple[str, ...]] = {
    "scored_pairs": ("sentence1", "sentence2", "score"),
    "positive_pairs": ("anchor", "positive"),
    "triplets": ("anchor", "positive", "negative"),
    "labeled_pairs": ("sentence1", "sentence2", "label"),
}


@dataclass(frozen=True)
class FloatParam:
    low: float
    high: float
    default: float
    log: bool = False
    doc: str = ""

    def check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number between {self.low} and {self.high}, got {value!r}")
        if not value > 0 and self.log:
            raise ValueError(f"must be > 0, got {value!r}")
        return float(value)


@dataclass(frozen=True)
class IntParam:
    low: int
    high: int
    default: int
    log: bool = False
    doc: str = ""
    #: False for a setting that changes memory or speed but not the model a trial trains: a sweep
    #: keeps it at the config's value (or ``default``) unless ``search:`` gives it a range.
    searched: bool = True

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"must be a whole number >= 1, got {value!r}")
        return value


@dataclass(frozen=True)
class ChoiceParam:
    choices: tuple[str, ...]
    default: str
    doc: str = ""

    def check(self, value: Any) -> str:
        if value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}, got {value!r}")
        return value


Param = FloatParam | IntParam | ChoiceParam

#: The inverse temperature of the ranking losses (CoSENT, AnglE, MNRL): one range for all of them.
SCALE = FloatParam(low=5.0, high=50.0, default=20.0, log=True, doc="inverse temperature")


@dataclass(frozen=True)
class LossSpec:
    """One registered loss: the single place its shape and tunable ranges are written."""

    name: str
    shape: Shape
    build: Callable[..., Any]  # build(model, **params) -> torch.nn.Module
    params: dict[str, Param] = field(default_factory=dict)
    doc: str = ""

    @property
    def unsearched(self) -> set[str]:
        """Params a sweep keeps fixed unless ``search:`` varies them: they change memory or speed,
        not the model a trial trains."""
        return {name for name, param in self.params.items() if isinstance(param, IntParam) and not param.searched}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate user-given params; fill defaults. Raises ValueError naming the bad key."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            takes = ", ".join(self.params) or "no parameters"
            raise ValueError(f"{self.name} does not take {', '.join(unknown)} (it takes: {takes})")
        checked = {}
        for key, spec in self.params.items():
            try:
                checked[key] = spec.check(params.get(key, spec.default))
            except ValueError as exc:
                raise ValueError(f"{self.name}.{key} {exc}") from None
        return checked
