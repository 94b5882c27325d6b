"""Param groups that exclude biases, norm gains and (optionally) embeddings from weight decay.

Weight decay on biases, norm gains and scale-invariant weights breaks the quadratic picture
behind CDM (their "flat" direction is not pulled to zero by the loss-free decay alone), so they
usually go in a group with ``weight_decay = 0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["parameter_norm", "split_decay_groups"]

_NORM_TYPES = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def parameter_norm(params: Iterable[Tensor]) -> Tensor:
    """The 2-norm of all ``params`` taken together, in float32 or wider (the pipeline's
    ``weight_norm`` and the one GROKtimizer hands its tuner where a loop gives none)."""
    return torch.sqrt(sum((p.detach().float() ** 2).sum() for p in params))


def split_decay_groups(
    model: nn.Module,
    weight_decay: float,
    exclude: Sequence[str] = ("bias", "norm"),
    exclude_1d: bool = True,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a decayed and a non-decayed group.

    A parameter gets ``weight_decay = 0`` when any of these holds:
      - ``exclude_1d`` and it has fewer than 2 dimensions (biases, norm gains, scalars);
      - ``'bias'`` in ``exclude`` and its own name is ``bias``;
      - ``'norm'`` in ``exclude`` and it belongs to a normalisation layer;
      - ``'embed'`` in ``exclude`` and it belongs to an ``nn.Embedding`` (embeddings are decayed
        unless asked: the grokking references decay them);
      - its qualified name contains one of the ``exclude`` strings (case-insensitive).

    Returns ``[{'params': decayed, 'weight_decay': λ}, {'params': rest, 'weight_decay': 0.0}]``,
    leaving out an empty group; each group also lists its ``param_names``.
    """
    if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(
            f"split_decay_groups: weight_decay must be a float >= 0, got {weight_decay!r}"
        )
    if isinstance(exclude, str):
        raise ValueError(
            f"split_decay_groups: exclude must be a sequence of strings, got the string {exclude!r}"
        )
    keys = [k.lower() for k in exclude]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    decay_names: list[str] = []
    no_decay_names: list[str] = []
    # named_parameters lists a shared (tied) parameter once, under its first name.
    for full, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mod_name, _, p_name = full.rpartition(".")
        module = model.get_submodule(mod_name)
        skip = (
            (exclude_1d and p.ndim < 2)
            or ("bias" in keys and p_name == "bias")
            or ("norm" in keys and isinstance(module, _NORM_TYPES))
            or ("embed" in keys and isinstance(module, nn.Embedding))
            or any(k in full.lower() for k in keys)
        )
        (no_decay if skip else decay).append(p)
        (no_decay_names if skip else decay_names).append(full)
    groups = []
    if decay:
        groups.append(
            {"params": decay, "weight_decay": float(weight_decay), "param_names": decay_names}
        )
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "param_names": no_decay_names})
    return groups
