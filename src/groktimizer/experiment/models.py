"""Models for the grokking experiments: MLP, the progress-measures transformer, LSTM, CNN, linear.

Each model class is also its own factory: ``Model(data, **options)`` reads the input and output
sizes from a :class:`~groktimizer.experiment.data.TaskData`, so a config with
``_partial_: true`` gives the
``make(data) -> nn.Module`` the trainer expects. Every module maps a batch of inputs to
``[N, out_dim]``. Forward passes are pure (no in-place updates of parameters, no ``.item()``), so
they run under ``torch.func.functional_call`` and ``vmap``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from groktimizer.experiment.data import TaskData

__all__ = ["ACTIVATIONS", "CNN", "CNN_NORMS", "MLP", "Transformer", "LSTM", "Linear"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def _require_input(data: TaskData, kind: str, model: str) -> None:
    if data.input_kind != kind:
        raise ValueError(
            f"model {model!r} needs {'token' if kind == 'tokens' else 'feature'} inputs; "
            f"dataset {data.name!r} gives {data.input_kind}"
        )


MAX_SIZE = 65_536  # widths, depths: a typo must not ask for more memory than a machine has


def _check_int(name: str, value: Any, low: int, high: int = MAX_SIZE) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"Invalid {name}: {value!r} (accepted: an int >= {low} and <= {high})")


def _check_init_scale(init_scale: Any) -> None:
    ok = isinstance(init_scale, (int, float)) and not isinstance(init_scale, bool)
    if not ok or not 0 <= init_scale < math.inf:
        raise ValueError(f"Invalid init_scale: {init_scale!r} (accepted: a number >= 0)")


def _check_activation(activation: Any) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"Invalid activation: {activation!r} (accepted: {list(ACTIVATIONS)})")


@torch.no_grad()
def _scale_parameters(module: nn.Module, init_scale: float) -> None:
    # Omnigrok's large-init setup multiplies every parameter (weights, biases, embeddings).
    if init_scale != 1.0:
        for p in module.parameters():
            p.mul_(init_scale)


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units with ``activation``, then a linear readout.

    Token inputs ``[N, L]`` are embedded per position with one shared ``nn.Embedding(vocab,
    embed_dim)`` and concatenated to ``[N, L * embed_dim]`` (for a+b mod p: the operand pair as
    two one-hot codes through one shared linear map); feature inputs go in as they are.
    After PyTorch's default init every parameter is multiplied by ``init_scale`` (Omnigrok: x8).
    ``depth=0`` is a linear (or embedding + linear) model.
    """

    def __init__(
        self,
        data: TaskData,
        depth: int = 2,
        width: int = 512,
        activation: str = "relu",
        init_scale: float = 1.0,
        bias: bool = True,
        embed_dim: int = 128,
    ) -> None:
        super().__init__()
        _check_int("depth", depth, 0)
        _check_int("width", width, 1)
        _check_int("embed_dim", embed_dim, 1)
        _check_init_scale(init_scale)
        _check_activation(activation)

        if data.input_kind == "tokens":
            self.embed: nn.Embedding | None = nn.Embedding(data.vocab_size, embed_dim)
            fan_in = data.seq_len * embed_dim
        else:
            self.embed = None
            fan_in = data.in_dim
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width, bias=bias), ACTIVATIONS[activation]()]
            fan_in = width
        layers.append(nn.Linear(fan_in, data.out_dim, bias=bias))
        self.net = nn.Sequential(*layers)
        _scale_parameters(self, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            x = self.embed(x).flatten(start_dim=1)
        return self.net(x)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention without biases: ``softmax(QK^T / sqrt(d_head)) V W_O``."""

    def __init__(self, d_model: int, n_heads: int, max_len: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        mask = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool))
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # [N, L, D] -> [N, heads, L, d_head]
        q, k, v = (t.view(n, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        att = att.masked_fill(~self.mask[:length, :length], float("-inf"))
        y = att.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(n, length, d))


class Block(nn.Module):
    """Residual attention block then residual ReLU MLP (optional pre-LayerNorm)."""

    def __init__(
        self, d_model: int, n_heads: int, d_mlp: int, max_len: int, layer_norm: bool
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.attn = CausalSelfAttention(d_model, n_heads, max_len)
        self.ln2 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.mlp_in = nn.Linear(d_model, d_mlp)
        self.mlp_out = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp_out(F.relu(self.mlp_in(self.ln2(x))))


class Transformer(nn.Module):
    """The grokking transformer of the progress-measures reference (Nanda et al. 2023).

    Token embedding + learned positional embedding, ``n_layers`` blocks of causal attention and
    a ReLU MLP on the residual stream, no LayerNorm by default, unembedding without bias; the
    output is the logits ``[N, out_dim]`` at the last position (the '=' token). Init as in the
    reference: every matrix and embedding ``N(0, 1/d_model)``, the unembedding
    ``N(0, 1/out_dim)``, MLP biases zero, LayerNorm (when on) gain 1 and bias 0; then every
    parameter times ``init_scale``.
    """

    def __init__(
        self,
        data: TaskData,
        n_layers: int = 1,
        d_model: int = 128,
        n_heads: int = 4,
        d_mlp: int = 512,
        layer_norm: bool = False,
        max_len: int | None = None,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        _require_input(data, "tokens", "transformer")
        _check_int("n_layers", n_layers, 1)
        _check_int("d_model", d_model, 1)
        _check_int("n_heads", n_heads, 1)
        if d_model % n_heads:
            raise ValueError(f"Invalid n_heads: {n_heads} (must divide d_model = {d_model})")
        _check_int("d_mlp", d_mlp, 1)
        max_len = data.seq_len if max_len is None else max_len
        _check_int("max_len", max_len, data.seq_len)
        _check_init_scale(init_scale)

        self.embed = nn.Embedding(data.vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_mlp, max_len, layer_norm) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.unembed = nn.Linear(d_model, data.out_dim, bias=False)
        self.register_buffer("positions", torch.arange(max_len), persistent=False)
        self._init_weights(d_model, data.out_dim)
        _scale_parameters(self, init_scale)

    @torch.no_grad()
    def _init_weights(self, d_model: int, out_dim: int) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, 1.0 / math.sqrt(d_model))
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
        self.unembed.weight.normal_(0.0, 1.0 / math.sqrt(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos(self.positions[: x.shape[1]])
        for block in self.blocks:
            h = block(h)
        return self.unembed(self.ln_f(h[:, -1]))


class LSTM(nn.Module):
    """An LSTM over the token sequence, read out by a linear map at the last position
    (Omnigrok's IMDb model is an LSTM): embedding, ``n_layers`` LSTM layers of ``hidden`` units,
    readout. The gates are ``nn.LSTM``'s (i, f, g, o; zero initial state) and so is the init,
    uniform in ±1/√hidden; one ``nn.Linear`` per layer takes ``[x_t, h_{t-1}]`` to the four gates
    (its weight is ``nn.LSTM``'s ``[weight_ih, weight_hh]``, its bias ``bias_ih + bias_hh``).
    Written out rather than ``nn.LSTM`` so that the forward pass runs under ``vmap`` (seed
    ensembles, batched sweeps: ``nn.LSTM`` has no batching rule) and has a double backward on
    every device (cuDNN's LSTM has none, so the curvature probe would take differences).
    The embedding is N(0, 1), as ``nn.Embedding``'s; then every parameter times ``init_scale``.
    """

    def __init__(
        self,
        data: TaskData,
        hidden: int = 128,
        embed_dim: int = 64,
        n_layers: int = 1,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        _require_input(data, "tokens", "lstm")
        _check_int("hidden", hidden, 1)
        _check_int("embed_dim", embed_dim, 1)
        _check_int("n_layers", n_layers, 1)
        _check_init_scale(init_scale)
        self.hidden = hidden
        self.embed = nn.Embedding(data.vocab_size, embed_dim)
        sizes = [embed_dim] + [hidden] * (n_layers - 1)
        self.cells = nn.ModuleList(nn.Linear(n + hidden, 4 * hidden) for n in sizes)
        self.readout = nn.Linear(hidden, data.out_dim)
        bound = 1.0 / math.sqrt(hidden)
        with torch.no_grad():
            for cell in self.cells:
                cell.weight.uniform_(-bound, bound)
                # nn.LSTM has two biases (input and hidden), each uniform: their sum here
                cell.bias.uniform_(-bound, bound).add_(
                    torch.empty_like(cell.bias).uniform_(-bound, bound)
                )
        _scale_parameters(self, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.embed(x)  # [N, L, E]
        for cell in self.cells:
            h = c = seq.new_zeros(seq.shape[0], self.hidden)
            outs = []
            for t in range(seq.shape[1]):
                i, f, g, o = cell(torch.cat([seq[:, t], h], dim=1)).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            seq = torch.stack(outs, dim=1)
        return self.readout(seq[:, -1])


CNN_NORMS = ("none", "batch", "group")


class CNN(nn.Module):
    """A small convolutional net for square one-channel images given as flat features (digits
    8x8, MNIST 28x28): one 3x3 convolution (padding 1) per entry of ``channels``, stride 1 for
    the first and 2 after, each followed by ``norm`` and ``activation``; then a hidden layer of
    ``width`` units and a linear readout.

    ``norm="batch"`` is batch normalisation (learned gain and shift) with the statistics of the
    batch being evaluated, in training and in evaluation alike (``track_running_stats=False``):
    running averages would be an in-place update in the forward pass, which ``vmap`` (seed
    ensembles, batched sweeps) and the curvature probe's repeated forwards cannot have. The
    weights of a convolution followed by a norm are scale-invariant: decay on them shrinks their
    norm without changing the function, and raises the effective step (GROKtimizer decays them
    as any other weight: leaving them out was measured and dropped, see docs/default.md).
    ``norm="group"``: gcd(8, channels) groups (8 for multiples of 8). After PyTorch's default
    init every parameter is multiplied by ``init_scale``.
    """

    def __init__(
        self,
        data: TaskData,
        channels: tuple[int, ...] | list[int] = (32, 64),
        width: int = 128,
        norm: str = "none",
        activation: str = "relu",
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        _require_input(data, "features", "cnn")
        side = math.isqrt(int(data.in_dim or 0))
        if side * side != data.in_dim:
            raise ValueError(
                f"model 'cnn' needs square images as flat features; dataset {data.name!r} gives "
                f"{data.in_dim} features (accepted: a square number, e.g. 64 for 8x8)"
            )
        channels = list(channels)
        if not channels:
            raise ValueError("Invalid channels: [] (accepted: a non-empty list of ints >= 1)")
        for c in channels:
            _check_int("channels", c, 1)
        _check_int("width", width, 1)
        _check_init_scale(init_scale)
        if norm not in CNN_NORMS:
            raise ValueError(f"Invalid norm: {norm!r} (accepted: {list(CNN_NORMS)})")
        _check_activation(activation)
        self.side = side
        layers: list[nn.Module] = []
        c_in = 1
        for k, c in enumerate(channels):
            stride = 1 if k == 0 else 2
            layers.append(nn.Conv2d(c_in, c, 3, stride=stride, padding=1))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(c, track_running_stats=False))
            elif norm == "group":
                layers.append(nn.GroupNorm(math.gcd(8, c), c))
            layers.append(ACTIVATIONS[activation]())
            side = (side - 1) // stride + 1
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * side * side, width),
            ACTIVATIONS[activation](),
            nn.Linear(width, data.out_dim),
        )
        _scale_parameters(self, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(-1, 1, self.side, self.side)))


class Linear(nn.Module):
    """``y = x W^T (+ b)`` on feature inputs; ``init_scale=0`` starts at zero (the usual start
    for least squares, from which gradient descent converges to the min-norm interpolant)."""

    def __init__(self, data: TaskData, bias: bool = False, init_scale: float = 1.0) -> None:
        super().__init__()
        _require_input(data, "features", "linear")
        _check_init_scale(init_scale)
        self.linear = nn.Linear(data.in_dim, data.out_dim, bias=bias)
        _scale_parameters(self, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
