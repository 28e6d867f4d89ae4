"""Loss registry. Adding a loss = one module declaring a ``LossSpec`` + one entry below.

The registry name is the sentence-transformers class name, as users write it in configs.
"""

from __future__ import annotations

import difflib

from trainers.losses._spec import SHAPE_COLUMNS, ChoiceParam, FloatParam, IntParam, LossSpec, Param, Shape
from trainers.losses.contrastive import CONTRASTIVE, ONLINE_CONTRASTIVE
from trainers.losses.cosent import ANGLE, COSENT
from trainers.losses.cosine_similarity import COSINE_SIMILARITY
from trainers.losses.multiple_negatives import CACHED_MULTIPLE_NEGATIVES_RANKING, MULTIPLE_NEGATIVES_RANKING
from trainers.losses.triplet import TRIPLET

LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        COSINE_SIMILARITY,
        COSENT,
        ANGLE,
        MULTIPLE_NEGATIVES_RANKING,
        CACHED_MULTIPLE_NEGATIVES_RANKING,
        TRIPLET,
        CONTRASTIVE,
        ONLINE_CONTRASTIVE,
    )
}


def get_loss(name: str) -> LossSpec:
    """The registered loss called ``name``; ValueError with a did-you-mean otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        close = difflib.get_close_matches(name, LOSSES, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValueError(f"unknown loss {name!r}; {hint}known: {', '.join(LOSSES)}") from None


__all__ = [
    "LOSSES", "SHAPE_COLUMNS", "ChoiceParam", "FloatParam", "IntParam", "LossSpec", "Param", "Shape", "get_loss",
]
