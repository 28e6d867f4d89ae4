"""MultipleNegativesRankingLoss and its cached (large-batch, low-memory) variant.

Input: positive pairs ``(anchor, positive)``, optionally with a hard ``negative`` column;
every other positive in the batch serves as a negative, so larger batches make it harder.
"""

from trainers.losses._spec import SCALE, IntParam, LossSpec


def _build_mnrl(model, scale):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    return MultipleNegativesRankingLoss(model, scale=scale)


def _build_cached_mnrl(model, scale, mini_batch_size):
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    return CachedMultipleNegativesRankingLoss(model, scale=scale, mini_batch_size=mini_batch_size)


MULTIPLE_NEGATIVES_RANKING = LossSpec(
    name="MultipleNegativesRankingLoss",
    shape="positive_pairs",
    build=_build_mnrl,
    params={"scale": SCALE},
    doc="In-batch negatives cross-entropy (InfoNCE).",
)

CACHED_MULTIPLE_NEGATIVES_RANKING = LossSpec(
    name="CachedMultipleNegativesRankingLoss",
    shape="positive_pairs",
    build=_build_cached_mnrl,
    params={
        "scale": SCALE,
        "mini_batch_size": IntParam(
            low=8, high=64, default=32, log=True, searched=False,
            doc="forward chunk size: memory and speed only, the gradients are the same",
        ),
    },
    doc="GradCache version of MNRL: batch size limited by time, not memory.",
)
