"""CosineSimilarityLoss: regress cos(u, v) onto a gold score.

Input: scored pairs ``(sentence1, sentence2, score)`` with score in [0, 1].
"""

from trainers.losses._spec import LossSpec


def _build(model):
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

    return CosineSimilarityLoss(model)


COSINE_SIMILARITY = LossSpec(
    name="CosineSimilarityLoss",
    shape="scored_pairs",
    build=_build,
    doc="MSE between cosine similarity and the gold score.",
)
