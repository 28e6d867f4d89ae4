"""TripletLoss: d(anchor, positive) + margin < d(anchor, negative).

Input: triplets ``(anchor, positive, negative)``. With ``distance: euclidean`` margins are in
embedding-norm units (sentence-transformers' default is 5); with ``cosine`` they lie in [0, 2].
"""

from trainers.losses._spec import ChoiceParam, FloatParam, LossSpec

DISTANCES = ("euclidean", "cosine", "manhattan")


def _build(model, margin, distance):
    from sentence_transformers.sentence_transformer.losses import TripletDistanceMetric, TripletLoss

    metric = {
        "euclidean": TripletDistanceMetric.EUCLIDEAN,
        "cosine": TripletDistanceMetric.COSINE,
        "manhattan": TripletDistanceMetric.MANHATTAN,
    }[distance]
    return TripletLoss(model, distance_metric=metric, triplet_margin=margin)


TRIPLET = LossSpec(
    name="TripletLoss",
    shape="triplets",
    build=_build,
    params={
        "margin": FloatParam(low=0.05, high=5.0, default=0.5, log=True, doc="required distance gap"),
        "distance": ChoiceParam(choices=DISTANCES, default="euclidean", doc="distance function"),
    },
    doc="Margin ranking on (anchor, positive, negative).",
)
