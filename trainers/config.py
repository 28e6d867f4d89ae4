"""The config of one fine-tune, validated before torch or sentence-transformers are imported.

Keys are named as in Hugging Face ``TrainingArguments``; ``loss`` names a registered loss and
its own parameters, ``data`` the splits. The sweep config (``tune.config``) extends this one.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from trainers.errors import ConfigError
from trainers.losses import get_loss

DEFAULT_DATA_DIR = Path(__file__).parent / "default_data"
DEFAULT_LOSS = "CosineSimilarityLoss"
COLUMN_ROLES = ("sentence1", "sentence2", "score", "anchor", "positive", "negative")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LossConfig(BaseModel):
    """``{name: TripletLoss, margin: 0.3, distance: euclidean}``: the name plus that loss's params."""

    model_config = ConfigDict(extra="allow")
    name: str = DEFAULT_LOSS

    @model_validator(mode="after")
    def _known_loss_and_params(self) -> "LossConfig":
        spec = get_loss(self.name)
        spec.check_params(self.params)
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def resolved_params(self) -> dict[str, Any]:
        """User params with the registry's defaults filled in."""
        return get_loss(self.name).check_params(self.params)


class DataConfig(_Strict):
    """The splits; with no ``train`` and no ``eval`` given, the embedded HR data set (with its test split).

    ``eval`` and ``test`` are files, or a share of ``train`` to hold out (``eval: 0.1``): rows are
    grouped by their first text (sentence1 or anchor), so one text's pairs never sit on both sides,
    and the groups are drawn by a hash of that text, so the split is the same whatever the seed,
    the row order or the machine."""

    train: str | None = None
    eval: str | float | None = None
    test: str | float | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    positive_threshold: float = Field(0.75, gt=0, le=1)
    max_rows: int | None = Field(None, ge=2)

    @field_validator("eval", "test")
    @classmethod
    def _file_or_share(cls, value: str | float | None) -> str | float | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 < value < 1:
            raise ValueError(f"a share of data.train to hold out must lie between 0 and 1, e.g. 0.1 (got {value:g}); "
                             "or give a file")
        return value

    @model_validator(mode="after")
    def _default_or_both(self) -> "DataConfig":
        if self.train is None and self.eval is None:
            if isinstance(self.test, float):
                raise ValueError("data.test is a share of data.train, which is not set; give data.train (and data.eval)")
            self.__dict__.update(
                train=str(DEFAULT_DATA_DIR / "train.csv"),
                eval=str(DEFAULT_DATA_DIR / "eval.csv"),
                test=self.test or str(DEFAULT_DATA_DIR / "test.csv"),
            )
        elif self.train is None or self.eval is None:
            missing = "train" if self.train is None else "eval"
            fix = "" if missing == "train" else " (a file, or a share of data.train to hold out, e.g. 0.1)"
            raise ValueError(f"data.{missing} is required when data.{'eval' if missing == 'train' else 'train'} is set{fix}")
        if sum(self.held_out().values()) > 0.5:
            raise ValueError(f"data.eval and data.test hold out {sum(self.held_out().values()):g} of data.train; "
                             "keep at least half of it for training (e.g. eval: 0.1, test: 0.1)")
        return self

    def held_out(self) -> dict[str, float]:
        """The splits given as a share of ``train``: ``{"eval": 0.1, "test": 0.1}``."""
        return {name: share for name, share in (("eval", self.eval), ("test", self.test)) if isinstance(share, float)}

    @field_validator("columns")
    @classmethod
    def _known_roles(cls, columns: dict[str, str]) -> dict[str, str]:
        for role in columns:
            if role not in COLUMN_ROLES:
                raise ValueError(f"unknown column role {role!r}; use one of {', '.join(COLUMN_ROLES)}")
        by_column: dict[str, list[str]] = {}
        for role, column in columns.items():
            by_column.setdefault(column, []).append(role)
        for column, roles in by_column.items():
            if len(roles) > 1:
                raise ValueError(f"{' and '.join(roles)} both name column {column!r}; give each role its own column")
        return columns


class TrainConfig(_Strict):
    model: str | None = None
    # Runs code shipped with the model: only when a config says `trust_remote_code: true` (a YAML boolean, not a string).
    trust_remote_code: StrictBool = False
    loss: LossConfig = Field(default_factory=LossConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    learning_rate: float = Field(5.0e-5, gt=0, le=1)
    per_device_train_batch_size: int = Field(32, ge=1)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    eval_steps: int | None = Field(None, ge=1)
    seed: int = 42
    fp16: bool = False
    bf16: bool = False
    max_seq_length: int | None = Field(128, ge=8)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    # Sweep trials' checkpoints: with the optimizer state (AdamW's moments, 2x the weights) a trial
    # resumed after a crash goes on exactly; without it (the default: a third of the disk and of
    # the upload) it goes on from the same weights, step and learning rate with fresh moments.
    checkpoint_optimizer_state: StrictBool = False
    # Gradient caching: at most this many texts are embedded with their activations at once, whatever
    # the loss and batch (TripletLoss at batch 32 embeds 96 texts a step; a cached loss's own
    # mini_batch_size is capped at it). The gradients are the plain loss's, for a second forward
    # pass per step; unset, every text of a step is embedded at once.
    gradient_cache_mini_batch_size: int | None = Field(None, ge=1)

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


def eval_interval(steps: int, evaluations: int, eval_steps: int | None = None) -> int:
    """Steps between evaluations: ``eval_steps`` where set, else ``evaluations`` spread over ``steps``.
    The trainer evaluates at this interval; a sweep's ASHA counts its rungs by it."""
    return eval_steps or max(1, math.ceil(steps / evaluations))


def input_paths(config: TrainConfig) -> dict[str, str]:
    """The files and folders a run reads, by the config key that names them."""
    named = {"model": config.model, "data.train": config.data.train, "data.eval": config.data.eval, "data.test": config.data.test}
    return {key: path for key, path in named.items() if isinstance(path, str) and path}


def refuse_out_holding_inputs(out: str | Path, inputs: dict[str, str | Path | None], flag: str = "--out") -> None:
    """An output folder that is, or holds, one of the run's inputs is refused even with --force:
    replacing it would delete what the run reads (and what the user made). So is a file: --out is a folder."""
    if Path(out).is_file():
        raise ConfigError(f"{flag} {out} is a file; {flag} names a folder, so choose another {flag}")
    target = Path(out).resolve()
    for what, path in inputs.items():
        if path and "://" not in str(path) and (target == Path(path).resolve() or target in Path(path).resolve().parents):
            raise ConfigError(f"{flag} {out} holds {what} ({path}); writing there would delete it, so choose another {flag}")


def move_into_place(work: Path, out: Path) -> None:
    """Put the finished folder ``work`` at ``out`` (absolute), replacing what was there: a rename
    of the old folder aside and the new one in, or, where ``out`` is the working directory
    (``--out .``), emptied and filled, so that the user's shell stays in a folder that exists."""
    import shutil

    if not out.exists():
        os.replace(work, out)
    elif out.resolve() == Path.cwd().resolve():
        for old in out.iterdir():
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        for new in work.iterdir():
            os.replace(new, out / new.name)
        work.rmdir()
    else:
        aside = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, aside)
        os.replace(work, out)
        shutil.rmtree(aside, ignore_errors=True)


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line naming the first bad field and the fix, with a did-you-mean for typos."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        parent = model
        for part in err["loc"][:-1]:
            field = parent.model_fields.get(str(part)) if isinstance(parent, type) else None
            annotation = getattr(field, "annotation", None)
            parent = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        known = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        return f"{source}: unknown key {loc!r}; {hint}"
    if err["type"] == "missing":
        return f"{source}: {loc} is required"
    got = err.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) and repr(got) not in msg else ""
    return f"{source}: {loc + ': ' if loc else ''}{msg}{shown}"


def read_yaml(path: str | Path | None) -> dict[str, Any]:
    """Safe-load a YAML mapping; relative data/model paths are resolved against its folder."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({first}); fix the syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys (e.g. 'loss: CoSENTLoss')")
    return _resolve_paths(raw, path.parent.resolve())


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    def resolve(value: Any) -> Any:
        # Relative paths mean "next to the config file", like a Makefile's; names that do not
        # exist there (e.g. a hub id) are left for the loader to report.
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
            candidate = base / value
            return str(candidate.resolve()) if candidate.exists() else value  # resolved: "../data" reads as where it is
        return value

    raw = dict(raw)
    if isinstance(raw.get("data"), dict):
        raw["data"] = {k: resolve(v) if k in ("train", "eval", "test") else v for k, v in raw["data"].items()}
    if isinstance(raw.get("model"), str):
        raw["model"] = resolve(raw["model"])
    return raw


def parse_config(model: type[BaseModel], raw: dict[str, Any], source: str = "config"):
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, source)) from None


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The config file's keys with the command line's on top: ``train``/``eval``/``test`` go under
    ``data:``, a None (flag not given) changes nothing. Paths still relative (typed on the command
    line, or not next to the config) that exist in the working directory are made absolute: a run
    dir records them, and ``export`` or ``--resume`` from another directory must find the same files."""
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("train", "eval", "test"):
            raw.setdefault("data", {})[key] = value
        else:
            raw[key] = value
    return _resolve_paths(raw, Path.cwd())


def load_train_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    raw = with_overrides(read_yaml(path), overrides)
    return parse_config(TrainConfig, raw, str(path) if path else "config")
