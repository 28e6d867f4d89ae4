"""CoSENTLoss and AnglELoss: rank pairs so that higher-scored pairs get higher similarity.

Input: scored pairs ``(sentence1, sentence2, score)``; only the order of scores matters.
``scale`` sharpens the ranking objective (the inverse temperature).
"""

from trainers.losses._spec import SCALE, LossSpec


def _build_cosent(model, scale):
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    return CoSENTLoss(model, scale=scale)


def _build_angle(model, scale):
    from sentence_transformers.sentence_transformer.losses import AnglELoss

    return AnglELoss(model, scale=scale)


COSENT = LossSpec(
    name="CoSENTLoss",
    shape="scored_pairs",
    build=_build_cosent,
    params={"scale": SCALE},
    doc="Pairwise ranking on cosine similarity.",
)

ANGLE = LossSpec(
    name="AnglELoss",
    shape="scored_pairs",
    build=_build_angle,
    params={"scale": SCALE},
    doc="CoSENT on angle differences in complex space.",
)
