"""Scoring a model on a split: ``spearman_cosine`` (the objective), ``pearson_cosine``, and
triplet accuracy when the split came as triplets."""

from __future__ import annotations

import math

from trainers.data import Split

OBJECTIVE = "spearman_cosine"


def build_evaluator(split: Split, name: str, batch_size: int = 64):
    from sentence_transformers.sentence_transformer.evaluation import (
        EmbeddingSimilarityEvaluator,
        SequentialEvaluator,
        TripletEvaluator,
    )

    similarity = EmbeddingSimilarityEvaluator(
        split.pairs.sentence1, split.pairs.sentence2, split.pairs.score,
        batch_size=batch_size, name=name, similarity_fn_names=["cosine"], write_csv=False,
    )
    if not split.triplets:
        return similarity
    anchors, positives, negatives = map(list, zip(*split.triplets))
    triplet = TripletEvaluator(anchors, positives, negatives, name=name, batch_size=batch_size, write_csv=False)
    # SequentialEvaluator's primary metric is the first evaluator's: spearman_cosine stays the objective.
    return SequentialEvaluator([similarity, triplet], main_score_function=lambda scores: scores[0])


def short_metrics(raw: dict[str, float]) -> dict[str, float]:
    """``eval_eval_spearman_cosine`` -> ``spearman_cosine`` etc."""
    out = {}
    for key, value in raw.items():
        for metric in (OBJECTIVE, "pearson_cosine", "cosine_accuracy"):
            if key.endswith(metric):
                out["triplet_accuracy" if metric == "cosine_accuracy" else metric] = float(value)
    return out


def evaluate(model, split: Split, name: str) -> dict[str, float]:
    metrics = short_metrics(build_evaluator(split, name)(model))
    if not math.isfinite(metrics.get(OBJECTIVE, float("nan"))):
        # A collapsed model gives constant similarities: spearman is undefined.
        metrics[OBJECTIVE] = float("nan")
    return metrics
