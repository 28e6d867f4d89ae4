"""Gradient caching (GradCache) for any loss: the same gradients with a bounded working set.

A loss step embeds every text of the batch with its activations kept for the backward pass:
TripletLoss at batch 32 holds 96 texts' activations at once. Wrapped here, each column is
embedded in mini-batches without activations, the loss is computed and back-propagated to the
embeddings, then each mini-batch is embedded again with activations and given its cached
gradient. Only one mini-batch's activations are alive at a time, at the price of a second
forward pass (a third to a half more time per step on one CPU thread, BENCHMARKS.md §4). The
second pass replays the first's dropout masks, so with dropout off the gradients are the plain
loss's up to float rounding; with it on, each mini-batch draws its own masks.

sentence-transformers ships this for a few losses (``CachedMultipleNegativesRankingLoss``);
``CachedLossMixin`` is its shared machinery, and every loss of the registry computes its value
from embeddings (``compute_loss_from_embeddings``), which is all the wrapper needs.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from sentence_transformers.base.losses.gradcache import CachedLossMixin, uses_gradient_cache
from torch import Tensor, nn


class GradientCached(CachedLossMixin, nn.Module):
    """``loss`` computed from embeddings of at most ``mini_batch_size`` texts per forward pass."""

    def __init__(self, loss: nn.Module, mini_batch_size: int):
        super().__init__()
        if uses_gradient_cache(loss):
            raise ValueError(f"{type(loss).__name__} caches its gradients itself; set its own mini_batch_size instead")
        if not hasattr(loss, "compute_loss_from_embeddings"):
            raise ValueError(f"{type(loss).__name__} cannot be computed from embeddings, so it cannot cache gradients")
        self.loss = loss
        self.model = loss.model
        self.mini_batch_size = mini_batch_size

    def calculate_loss(self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False) -> Tensor:
        embeddings = [torch.cat(mini_batches) for mini_batches in reps]
        value = self.loss.compute_loss_from_embeddings(embeddings, labels)
        if with_backward:
            value.backward()
            value = value.detach()
        return value

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        return self.forward_cached(sentence_features, labels)

    # What sentence-transformers' model card prints for this loss, as for its own wrappers (MatryoshkaLoss):
    # the wrapped loss by name with its parameters, and the mini-batch size.
    def get_config_dict(self) -> dict[str, Any]:
        inner = self.loss.get_config_dict() if hasattr(self.loss, "get_config_dict") else {}
        return {"loss": type(self.loss).__name__, "loss_parameters": inner, "mini_batch_size": self.mini_batch_size}

    @property
    def citation(self) -> str | None:
        return getattr(self.loss, "citation", None)
