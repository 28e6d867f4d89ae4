"""Scoring a model on a split: ``spearman_cosine`` (the objective), ``pearson_cosine``, and
triplet accuracy when the split came as triplets."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from trainers.data import Split, Splits
from trainers.errors import ModelError

OBJECTIVE = "spearman_cosine"
# Below this many eval pairs one pair moves spearman by hundredths, and the best of many trials
# on them often is not the best on new data (bench/quality.py: seed 001, 14 eval pairs).
FEW_EVAL_PAIRS = 100


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


def evaluate_untuned(model, split: Split, name: str, label: str) -> dict[str, float]:
    """``evaluate`` for a model before any training: constant similarities there are the model's
    own (its output does not depend on the text), and no training setting can help."""
    metrics = evaluate(model, split, name)
    if math.isnan(metrics[OBJECTIVE]):
        raise ModelError(
            f"model: {label} gives every {name} pair the same similarity (its embeddings do not depend on the text), "
            f"so {OBJECTIVE} is undefined; check the model folder (its Pooling or Dense modules)"
        )
    return metrics


def selection_key(scores: dict[str, Any]) -> tuple[float, float]:
    """How checkpoints are ranked, by ``stune train`` and by a sweep's ``best/``: spearman_cosine,
    then pearson_cosine on the same eval pairs. On a small eval split two models that order the
    pairs alike tie exactly on spearman (it reads ranks only); pearson tells apart the one whose
    similarities follow the gold scores more closely. Rank with ``>`` so that an earlier
    checkpoint keeps its place on a full tie."""
    pearson = scores.get("pearson_cosine")
    return scores[OBJECTIVE], pearson if isinstance(pearson, (int, float)) and math.isfinite(pearson) else -math.inf


def spearman_interval(rho: float, n_pairs: int, level: float = 0.95) -> tuple[float, float] | None:
    """Confidence interval of a spearman correlation measured on ``n_pairs`` pairs: Fisher's z
    with Fieller, Hartley and Pearson's variance 1.06 / (n - 3); None below 4 pairs or for NaN."""
    if n_pairs < 4 or not math.isfinite(rho):
        return None
    z = math.atanh(max(-0.999999, min(0.999999, rho)))
    half = NormalDist().inv_cdf(0.5 + level / 2) * math.sqrt(1.06 / (n_pairs - 3))
    return math.tanh(z - half), math.tanh(z + half)


def selection_warnings(splits: Splits, chosen: str) -> list[str]:
    """What makes the eval split a poor judge of which ``chosen`` (trial, checkpoint) is best, or
    the test split a poor measure of it: too few pairs, or pairs training has already seen."""
    warnings = [few_eval_pairs_warning(len(splits.eval.pairs), chosen)]
    seen = set(_pair_keys(splits.train))
    for key, split, consequence in (
        ("data.eval", splits.eval, f"its {OBJECTIVE} rewards memorising them and favours the {chosen} that overfits most"),
        ("data.test", splits.test, f"its {OBJECTIVE} overstates how the model does on new pairs"),
    ):
        if split is not None and (shared := sum(pair in seen for pair in _pair_keys(split))):
            warnings.append(f"warning: {shared} of {len(split.pairs)} {key} pairs are also in data.train: {consequence}; "
                            f"drop them from one of the two files")
    return [warning for warning in warnings if warning]


def _pair_keys(split: Split) -> list[frozenset[str]]:
    """A split's pairs as unordered text pairs: cosine similarity does not care which comes first."""
    return [frozenset(pair) for pair in zip(split.pairs.sentence1, split.pairs.sentence2)]


def few_eval_pairs_warning(n_pairs: int, chosen: str) -> str | None:
    """The warning for an eval split too small to choose ``chosen`` (a trial, a checkpoint) on."""
    if n_pairs >= FEW_EVAL_PAIRS:
        return None
    return (
        f"warning: data.eval has {n_pairs} pairs (under {FEW_EVAL_PAIRS}): one pair moves {OBJECTIVE} by hundredths, "
        f"so the {chosen} that tops them may not be the best on new data; give data.eval more pairs"
    )
