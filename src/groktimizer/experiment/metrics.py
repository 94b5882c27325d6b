"""Loss, correctness and weight norm: the quantities every evaluation row is made of."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from groktimizer.param_groups import parameter_norm


def loss_kind(task: str, cfg_loss: str) -> str:
    if cfg_loss == "auto":
        return "cross_entropy" if task == "classification" else "mse"
    return cfg_loss


def compute_loss(out: torch.Tensor, y: torch.Tensor, kind: str, task: str) -> torch.Tensor:
    if kind == "cross_entropy":
        if task != "classification":
            raise ValueError("trainer.loss='cross_entropy' needs a classification dataset")
        return F.cross_entropy(out.float() if out.dtype == torch.half else out, y)
    if task == "classification":  # MSE on one-hot targets (Omnigrok's MNIST setup)
        target = F.one_hot(y, out.shape[-1]).to(out.dtype)
        return F.mse_loss(out, target)
    return F.mse_loss(out, y.reshape(out.shape))


def correct(out: torch.Tensor, y: torch.Tensor, task: str, tol: float) -> torch.Tensor:
    """Per-example correctness: argmax for classes, |residual| <= tol for regression."""
    if task == "classification":
        return (out.argmax(-1) == y).float()
    return ((out - y.reshape(out.shape)).abs().reshape(out.shape[0], -1).amax(-1) <= tol).float()


def weight_norm(model: nn.Module) -> torch.Tensor:
    return parameter_norm(model.parameters())
