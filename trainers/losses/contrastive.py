"""ContrastiveLoss and OnlineContrastiveLoss: pull labelled-similar pairs together, push the
others beyond ``margin``. The online variant only uses the hard positives and negatives of
each batch.

Input: labelled pairs ``(sentence1, sentence2, label)`` with label 1 (similar) or 0.
"""

from trainers.losses._spec import ChoiceParam, FloatParam, LossSpec

DISTANCES = ("cosine", "euclidean", "manhattan")
PARAMS = {
    "margin": FloatParam(low=0.1, high=1.0, default=0.5, doc="distance negatives are pushed beyond"),
    "distance": ChoiceParam(choices=DISTANCES, default="cosine", doc="distance function"),
}


def _metric(distance):
    from sentence_transformers.sentence_transformer.losses import SiameseDistanceMetric

    return {
        "cosine": SiameseDistanceMetric.COSINE_DISTANCE,
        "euclidean": SiameseDistanceMetric.EUCLIDEAN,
        "manhattan": SiameseDistanceMetric.MANHATTAN,
    }[distance]


def _build_contrastive(model, margin, distance):
    from sentence_transformers.sentence_transformer.losses import ContrastiveLoss

    return ContrastiveLoss(model, distance_metric=_metric(distance), margin=margin)


def _build_online(model, margin, distance):
    from sentence_transformers.sentence_transformer.losses import OnlineContrastiveLoss

    return OnlineContrastiveLoss(model, distance_metric=_metric(distance), margin=margin)


CONTRASTIVE = LossSpec(
    name="ContrastiveLoss", shape="labeled_pairs", build=_build_contrastive, params=PARAMS,
    doc="Hadsell et al. contrastive loss on labelled pairs.",
)
ONLINE_CONTRASTIVE = LossSpec(
    name="OnlineContrastiveLoss", shape="labeled_pairs", build=_build_online, params=PARAMS,
    doc="Contrastive loss on the hard pairs of each batch only.",
)
