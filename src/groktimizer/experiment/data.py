"""Datasets for the grokking experiments, each returned as a :class:`TaskData`.

Every factory has the shape ``factory(..., seed: int) -> TaskData``: the split (and any sampled
data) depends only on ``seed`` through a private ``torch.Generator``, never on the global RNG.
All tensors are built on the CPU; the trainer moves them with :meth:`TaskData.to`.

Input conventions shared with ``groktimizer.experiment.models``:

- ``input_kind="tokens"``: ``x`` is a LongTensor ``[N, seq_len]`` of ids in ``[0, vocab_size)``.
  Both the transformer and the MLP (through a per-position embedding) take this form.
- ``input_kind="features"``: ``x`` is a FloatTensor ``[N, in_dim]``.

Targets: class ids (LongTensor ``[N]``) for ``task="classification"``; a FloatTensor
``[N, out_dim]`` for ``task="regression"``. A trainer using MSE on a classification task one-hots
``y`` itself (Omnigrok's MNIST setup).

Arguments are checked before any work; ``datasets`` and ``sklearn`` are imported lazily, inside
the factories that need them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "TaskData",
    "MODULAR_OPS",
    "canonical_op",
    "is_prime",
    "modular_arithmetic",
    "sparse_parity",
    "linear_regression",
    "digits",
    "mnist",
]

INPUT_KINDS = ("tokens", "features")
TASKS = ("classification", "regression")


@dataclass
class TaskData:
    """A whole dataset held as tensors, plus what a model needs to know to fit it.

    ``vocab_size``/``seq_len`` are set for token inputs, ``in_dim`` for feature inputs.
    ``extras`` holds task-specific facts (e.g. ``"min_norm_solution"`` for linear regression).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    input_kind: str
    out_dim: int
    task: str
    name: str
    vocab_size: int | None = None
    seq_len: int | None = None
    in_dim: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"Invalid input_kind: {self.input_kind!r} (accepted: {INPUT_KINDS})")
        if self.task not in TASKS:
            raise ValueError(f"Invalid task: {self.task!r} (accepted: {TASKS})")
        if self.input_kind == "tokens" and (self.vocab_size is None or self.seq_len is None):
            raise ValueError("token inputs need vocab_size and seq_len")
        if self.input_kind == "features" and self.in_dim is None:
            raise ValueError("feature inputs need in_dim")

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def n_val(self) -> int:
        """Number of validation examples."""
        return int(self.x_val.shape[0])

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TaskData:
        """A copy on ``device`` with float tensors cast to ``dtype``.

        Token ids and class labels keep their integer dtype; float features, regression targets
        and tensors in ``extras`` (e.g. the min-norm solution) are cast.
        """

        def move(t: Any) -> Any:
            if not isinstance(t, torch.Tensor):
                return t
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return dataclasses.replace(
            self,
            x_train=move(self.x_train),
            y_train=move(self.y_train),
            x_val=move(self.x_val),
            y_val=move(self.y_val),
            extras={k: move(v) for k, v in self.extras.items()},
        )


def _generator(seed: int) -> torch.Generator:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"Invalid seed: {seed!r} (accepted: an int)")
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# upper bounds keep a typo from asking for more memory than any machine has (p^2 pairs, n x d)
MAX_P = 2000
MAX_COUNT = 10**6
MAX_ELEMENTS = 10**8


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        upper = f" and <= {high}" if high is not None else ""
        raise ValueError(f"Invalid {name}: {value!r} (accepted: an int >= {low}{upper})")


def _check_size(what: str, elements: int) -> None:
    if elements > MAX_ELEMENTS:
        raise ValueError(
            f"Invalid size: {what} is {elements:,} numbers (accepted: at most {MAX_ELEMENTS:,})"
        )


def _check_fraction(name: str, value: Any, zero_ok: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (0.0 <= value if zero_ok else 0.0 < value) or not value < 1.0:
        accepted = "[0, 1)" if zero_ok else "(0, 1)"
        raise ValueError(f"Invalid {name}: {value!r} (accepted: a number in {accepted})")


# --------------------------------------------------------------------------- modular arithmetic


def is_prime(n: int) -> bool:
    """True when ``n`` is a prime (trial division; p is small here)."""
    if n < 2:
        return False
    return all(n % k for k in range(2, math.isqrt(n) + 1))


def _cube(a: torch.Tensor, p: int) -> torch.Tensor:
    return (a * a % p) * a


# Each op maps int64 tensors a, b (and p) to the label (not yet reduced mod p). Products are
# reduced as they go so that p up to ~1e6 stays inside int64.
MODULAR_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "add": lambda a, b, p: a + b,
    "sub": lambda a, b, p: a - b,
    "mul": lambda a, b, p: a * b,
    "div": lambda a, b, p: a * _modular_inverse(b, p),
    "sq_sum": lambda a, b, p: a * a + b * b,
    "quad1": lambda a, b, p: a * a + a * b + b * b,
    "quad2": lambda a, b, p: a * a + a * b + b * b + a,
    "cube1": lambda a, b, p: _cube(a, p) + a * b,
    "cube2": lambda a, b, p: _cube(a, p) + (a * b % p) * b + b,
}

_OP_ALIASES = {
    "a+b": "add",
    "+": "add",
    "a-b": "sub",
    "-": "sub",
    "ab": "mul",  # 'a*b' once '*' is stripped
    "a/b": "div",
    "/": "div",
    "a^2+b^2": "sq_sum",
    "a^2+ab+b^2": "quad1",
    "a^2+ab+b^2+a": "quad2",
    "a^3+ab": "cube1",
    "a^3+ab^2+b": "cube2",
}


def _modular_inverse(b: torch.Tensor, p: int) -> torch.Tensor:
    """b^(p-2) mod p (Fermat), looked up from a table of the p-1 nonzero residues."""
    table = torch.tensor([0] + [pow(k, p - 2, p) for k in range(1, p)], dtype=torch.int64)
    return table[b]


def canonical_op(op: str) -> str:
    """The canonical op name for ``op`` ('a*b', 'x*y', 'a^2+b^2', 'mul', ... accepted)."""
    if not isinstance(op, str):
        raise ValueError(f"Invalid op: {op!r} (accepted: {sorted(MODULAR_OPS)} or a formula)")
    key = op.strip().lower()
    if key in MODULAR_OPS:
        return key
    for old, new in (
        (" ", ""),
        ("**", "^"),
        ("·", ""),
        ("×", ""),
        ("*", ""),
        ("−", "-"),
        ("²", "^2"),
        ("³", "^3"),
        ("x", "a"),
        ("y", "b"),
        ("modp", ""),
        ("%p", ""),
    ):
        key = key.replace(old, new)
    if key in _OP_ALIASES:
        return _OP_ALIASES[key]
    raise ValueError(
        f"Invalid op: {op!r} (accepted: {sorted(MODULAR_OPS)} or one of {sorted(_OP_ALIASES)})"
    )


_FORMS = {"tokens": "tokens", "onehot": "onehot", "embed": "onehot", "pair": "onehot"}


def modular_arithmetic(
    op: str = "add",
    p: int = 97,
    train_fraction: float = 0.4,
    form: str = "tokens",
    seed: int = 0,
    label_noise: float = 0.0,
) -> TaskData:
    """All pairs ``(a, b)`` with label ``op(a, b) mod p``; a seeded ``train_fraction`` for training.

    ``a`` and ``b`` range over ``[0, p)`` (``b`` over ``[1, p)`` for ``div``, where ``a/b`` is
    ``a * b^(p-2) mod p`` and ``p`` must be prime). Ops: add a+b, sub a-b, mul a*b, div a/b,
    sq_sum a^2+b^2, quad1 a^2+ab+b^2, quad2 a^2+ab+b^2+a, cube1 a^3+ab, cube2 a^3+ab^2+b.

    ``form="tokens"`` (transformers): inputs ``[a, b, p]``, token ``p`` standing for '=', as in
    the progress-measures reference (vocab p+1, seq_len 3). ``form="onehot"`` (alias ``"embed"``;
    MLPs): inputs ``[a, b]`` (vocab p, seq_len 2); the MLP embeds each operand, which is the same
    as a linear layer on the concatenated one-hot codes. Both are token ids; ``out_dim = p``.
    The training set is ``int(train_fraction * n_pairs)`` pairs (at least 1, at most all but 1).
    ``label_noise`` in [0, 1): that fraction of the training pairs (rounded, seeded) gets a wrong
    label drawn uniformly from the other p - 1 classes (corrupted modular arithmetic, as in the
    memorisation-vs-generalisation studies); validation labels stay true. The split is the same
    as without noise; ``extras["corrupted"]`` holds the corrupted training rows.
    """
    op = canonical_op(op)
    _check_int("p", p, 2, MAX_P)
    if op == "div" and not is_prime(p):
        raise ValueError(f"Invalid p: {p} (op 'div' needs a prime p)")
    _check_fraction("train_fraction", train_fraction)
    _check_fraction("label_noise", label_noise, zero_ok=True)
    if form not in _FORMS:
        raise ValueError(f"Invalid form: {form!r} (accepted: {sorted(_FORMS)})")
    form = _FORMS[form]
    g = _generator(seed)

    b_low = 1 if op == "div" else 0
    a, b = torch.meshgrid(
        torch.arange(p, dtype=torch.int64), torch.arange(b_low, p, dtype=torch.int64), indexing="ij"
    )
    a, b = a.reshape(-1), b.reshape(-1)
    y = MODULAR_OPS[op](a, b, p) % p
    if form == "tokens":
        x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
        vocab_size, seq_len = p + 1, 3
    else:
        x = torch.stack([a, b], dim=1)
        vocab_size, seq_len = p, 2

    n = x.shape[0]
    n_train = min(max(int(train_fraction * n), 1), n - 1)
    perm = torch.randperm(n, generator=g)
    tr, va = perm[:n_train], perm[n_train:]
    y_train = y[tr].clone()
    corrupted = torch.zeros(0, dtype=torch.int64)
    if label_noise > 0:
        corrupted = torch.randperm(n_train, generator=g)[: round(label_noise * n_train)]
        shift = torch.randint(1, p, (corrupted.numel(),), generator=g)
        y_train[corrupted] = (y_train[corrupted] + shift) % p  # any class but the true one
    return TaskData(
        x_train=x[tr],
        y_train=y_train,
        x_val=x[va],
        y_val=y[va],
        input_kind="tokens",
        out_dim=p,
        task="classification",
        name=f"modular_{op}_p{p}",
        vocab_size=vocab_size,
        seq_len=seq_len,
        extras={"op": op, "p": p, "form": form, "label_noise": label_noise, "corrupted": corrupted},
    )


# --------------------------------------------------------------------------- sparse parity

_RELEVANT = ("first", "random")
_ENCODINGS = ("pm1", "01")


def sparse_parity(
    n_bits: int = 40,
    k: int = 3,
    n_train: int = 1000,
    n_val: int = 1000,
    relevant: str = "first",
    encoding: str = "pm1",
    seed: int = 0,
) -> TaskData:
    """Uniform random bit strings; label = parity (XOR) of ``k`` relevant bits, 2 classes.

    ``relevant="first"`` uses bits ``0..k-1``; ``"random"`` a seeded choice (kept in
    ``extras["relevant_bits"]``). ``encoding="pm1"``: features in {-1, +1} (bit 1 -> -1, so the
    label is 1 exactly when the product of the relevant features is -1); ``"01"``: features in
    {0, 1}. Train and validation strings are independent draws (they may repeat for small n_bits).
    """
    _check_int("n_bits", n_bits, 1, 100_000)
    _check_int("k", k, 1)
    if k > n_bits:
        raise ValueError(f"Invalid k: {k} (accepted: 1 <= k <= n_bits = {n_bits})")
    _check_int("n_train", n_train, 1, MAX_COUNT)
    _check_int("n_val", n_val, 1, MAX_COUNT)
    _check_size("sparse parity (n_train + n_val) x n_bits", (n_train + n_val) * n_bits)
    if relevant not in _RELEVANT:
        raise ValueError(f"Invalid relevant: {relevant!r} (accepted: {_RELEVANT})")
    if encoding not in _ENCODINGS:
        raise ValueError(f"Invalid encoding: {encoding!r} (accepted: {_ENCODINGS})")
    g = _generator(seed)

    if relevant == "first":
        bits = torch.arange(k)
    else:
        bits = torch.randperm(n_bits, generator=g)[:k].sort().values
    raw = torch.randint(0, 2, (n_train + n_val, n_bits), generator=g)
    y = raw[:, bits].sum(dim=1) % 2
    x = (1.0 - 2.0 * raw.float()) if encoding == "pm1" else raw.float()
    return TaskData(
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_val=x[n_train:],
        y_val=y[n_train:],
        input_kind="features",
        out_dim=2,
        task="classification",
        name=f"sparse_parity_n{n_bits}_k{k}",
        in_dim=n_bits,
        extras={"relevant_bits": bits},
    )


# --------------------------------------------------------------------------- linear regression


def linear_regression(
    n: int = 50,
    d: int = 500,
    noise: float = 0.0,
    seed: int = 0,
    n_val: int = 500,
) -> TaskData:
    """Teacher-student least squares: ``y = X w_teacher + noise * eps``, ``X`` standard Gaussian.

    ``w_teacher ~ N(0, I/d)`` so targets have unit variance (plus noise^2). With ``n < d`` the
    training set is interpolated by a whole affine space of weights;
    ``extras["min_norm_solution"] = pinv(X_train) y_train`` (shape ``[d]``) is the one of least
    norm, the point gradient descent from zero (and weight decay -> 0) converges to; the trainer
    reports the distance to it. ``extras["teacher"]`` is ``w_teacher``. The MSE Hessian
    ``2 X^T X / n`` has its nonzero eigenvalues near ``2 (d/n) (1 +- sqrt(n/d))^2``.
    Targets are ``[N, 1]``; validation points are fresh draws from the same teacher.
    """
    _check_int("n", n, 1, MAX_COUNT)
    _check_int("d", d, 1, MAX_COUNT)
    _check_int("n_val", n_val, 1, MAX_COUNT)
    _check_size("linear regression (n + n_val) x d", (n + n_val) * d)
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not 0 <= noise < math.inf:
        raise ValueError(f"Invalid noise: {noise!r} (accepted: a number >= 0)")
    g = _generator(seed)

    # float64 for the data and the pseudo-inverse: the distance metric goes down to ~1e-6.
    w_teacher = torch.randn(d, generator=g, dtype=torch.float64) / math.sqrt(d)
    x = torch.randn(n + n_val, d, generator=g, dtype=torch.float64)
    y = x @ w_teacher + noise * torch.randn(n + n_val, generator=g, dtype=torch.float64)
    x_train, y_train = x[:n], y[:n]
    w_min_norm = torch.linalg.pinv(x_train) @ y_train
    return TaskData(
        x_train=x_train.float(),
        y_train=y_train[:, None].float(),
        x_val=x[n:].float(),
        y_val=y[n:, None].float(),
        input_kind="features",
        out_dim=1,
        task="regression",
        name=f"linear_regression_n{n}_d{d}",
        in_dim=d,
        extras={"min_norm_solution": w_min_norm.float(), "teacher": w_teacher.float()},
    )


# --------------------------------------------------------------------------- digits (offline)


def digits(
    n_train: int = 1000,
    n_val: int | None = None,
    normalize: bool = True,
    seed: int = 0,
) -> TaskData:
    """scikit-learn's ``load_digits`` (1,797 8x8 images, ships with sklearn; no network).

    A seeded ``n_train`` for training; validation is the next ``n_val`` (default: all the rest).
    ``normalize`` maps the pixel counts 0..16 to [0, 1]. 10 classes, 64 features.
    """
    total = 1797
    _check_int("n_train", n_train, 1)
    if n_train >= total:
        raise ValueError(f"Invalid n_train: {n_train} (accepted: 1 <= n_train < {total})")
    if n_val is None:
        n_val = total - n_train
    _check_int("n_val", n_val, 1)
    if n_train + n_val > total:
        raise ValueError(f"Invalid n_val: {n_val} (accepted: n_train + n_val <= {total})")
    g = _generator(seed)

    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    if normalize:
        x = x / 16.0
    perm = torch.randperm(x.shape[0], generator=g)
    tr, va = perm[:n_train], perm[n_train : n_train + n_val]
    return TaskData(
        x_train=x[tr],
        y_train=y[tr],
        x_val=x[va],
        y_val=y[va],
        input_kind="features",
        out_dim=10,
        task="classification",
        name="digits",
        in_dim=x.shape[1],
    )


# --------------------------------------------------------------------------- MNIST (datasets)


def _looks_like_path(source: str) -> bool:
    # A hub id is 'name' or 'owner/name'; anything else with a path shape is meant as a path.
    return (
        source.startswith(("/", ".", "~"))
        or "\\" in source
        or source.count("/") > 1
        or os.path.exists(source)
    )


class DataLoadError(ValueError):
    """A data set could not be loaded (one line naming the source and what to do)."""


OFFLINE_HINT = (
    "without network, pass a local path (a folder written by Dataset.save_to_disk, or "
    "parquet/arrow files) as dataset.source"
)


def _check_hub_reachable(source: str, cache_dir: str | None) -> None:
    """Fail at once, not after a minute of retries, when the hub cannot be reached and the data
    set is not in the local cache: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, or no connection."""
    import socket

    offline = any(
        os.environ.get(k, "").lower() in ("1", "true", "yes")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    if offline:
        cached = _in_cache(source, cache_dir)
        if not cached:
            raise DataLoadError(
                f"could not load MNIST from hub id {source!r}: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE "
                f"is set and it is not in the local cache; {OFFLINE_HINT}"
            )
        return
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("//")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as err:
        if not _in_cache(source, cache_dir):
            raise DataLoadError(
                f"could not load MNIST from hub id {source!r}: {host} is unreachable "
                f"({type(err).__name__}); {OFFLINE_HINT}, or set HF_DATASETS_OFFLINE=1 to use "
                "the local cache"
            ) from err


def _in_cache(source: str, cache_dir: str | None) -> bool:
    from pathlib import Path

    root = Path(cache_dir or os.environ.get("HF_DATASETS_CACHE", "~/.cache/huggingface/datasets"))
    name = source.replace("/", "___")
    return root.expanduser().exists() and any(root.expanduser().glob(f"{name}*"))


def _load_source(source: str, cache_dir: str | None):
    """A ``Dataset`` or ``DatasetDict`` from a hub id, a ``save_to_disk`` folder or data files."""
    import datasets

    if _looks_like_path(source):
        path = os.path.expanduser(source)
        if not os.path.exists(path):
            raise ValueError(
                f"Invalid source: {source!r} (no such path; give a hub id such as "
                "'ylecun/mnist' or an existing local dataset folder)"
            )
        saved = any(
            os.path.exists(os.path.join(path, f))
            for f in ("state.json", "dataset_info.json", "dataset_dict.json")
        )
        try:
            if saved:
                return datasets.load_from_disk(path)
            return datasets.load_dataset(path, cache_dir=cache_dir)
        except Exception as err:  # noqa: BLE001 - re-raised with the source named
            raise DataLoadError(
                f"could not load MNIST from local path {source!r}: {type(err).__name__}: {err}"
            ) from err
    _check_hub_reachable(source, cache_dir)
    try:
        return datasets.load_dataset(source, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - offline machines land here
        raise DataLoadError(
            f"could not load MNIST from hub id {source!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); without network, pass a local "
            "path (a folder written by Dataset.save_to_disk, or parquet/arrow files) as source"
        ) from err


def _image_column(ds) -> str:
    for name in ("image", "img", "pixels"):
        if name in ds.column_names:
            return name
    others = [c for c in ds.column_names if c != "label"]
    if not others:
        raise ValueError(f"MNIST dataset has no image column (columns: {ds.column_names})")
    return others[0]


def _to_tensors(ds, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of ``ds`` as (flattened float images in [0, 1], int64 labels)."""
    if "label" not in ds.column_names:
        raise ValueError(f"MNIST dataset has no 'label' column (columns: {ds.column_names})")
    import numpy as np

    sub = ds.select(idx.tolist()).with_format("numpy")
    images = torch.as_tensor(np.stack(list(sub[_image_column(ds)])))
    labels = torch.as_tensor(sub["label"]).long()
    x = images.reshape(images.shape[0], -1)
    if not x.is_floating_point() or (x.numel() and x.max() > 1.0):
        x = x.float() / 255.0
    return x.float(), labels


def mnist(
    n_train: int = 1000,
    n_val: int = 10000,
    source: str = "ylecun/mnist",
    cache_dir: str | None = None,
    seed: int = 0,
) -> TaskData:
    """MNIST through ``datasets``: a seeded ``n_train`` subset and ``n_val`` validation images.

    ``source`` is a hub id (needs network or a warm ``cache_dir``) or a local path: a folder
    written by ``Dataset.save_to_disk``/``DatasetDict.save_to_disk`` (read with
    ``load_from_disk``), or a folder of parquet/arrow files (read with ``load_dataset(path)``).
    With 'train' and 'test' splits, training images come from 'train' and validation from
    'test'; a single split is divided into disjoint seeded parts. Images are flattened to floats
    in [0, 1] (784 for 28x28); labels are the 'label' column; 10 classes.
    """
    _check_int("n_train", n_train, 1)
    _check_int("n_val", n_val, 1)
    if not isinstance(source, str) or not source:
        raise ValueError(f"Invalid source: {source!r} (accepted: a hub id or a local path)")
    g = _generator(seed)

    loaded = _load_source(source, cache_dir)
    splits = dict(loaded) if hasattr(loaded, "keys") else {"train": loaded}
    if "train" in splits and "test" in splits:
        train_ds, val_ds = splits["train"], splits["test"]
        if n_train > len(train_ds):
            raise ValueError(f"Invalid n_train: {n_train} (split 'train' has {len(train_ds)})")
        if n_val > len(val_ds):
            raise ValueError(f"Invalid n_val: {n_val} (split 'test' has {len(val_ds)})")
        tr = torch.randperm(len(train_ds), generator=g)[:n_train]
        va = torch.randperm(len(val_ds), generator=g)[:n_val]
    else:
        train_ds = val_ds = splits.get("train", next(iter(splits.values())))
        if n_train + n_val > len(train_ds):
            raise ValueError(
                f"Invalid n_train + n_val: {n_train + n_val} (the single split has "
                f"{len(train_ds)} rows)"
            )
        perm = torch.randperm(len(train_ds), generator=g)
        tr, va = perm[:n_train], perm[n_train : n_train + n_val]
    x_train, y_train = _to_tensors(train_ds, tr)
    x_val, y_val = _to_tensors(val_ds, va)
    return TaskData(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        input_kind="features",
        out_dim=10,
        task="classification",
        name="mnist",
        in_dim=x_train.shape[1],
        extras={"source": source},
    )


# --------------------------------------------------------------------------- dispatch
