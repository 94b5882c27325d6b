"""Datasets: labels against brute force, seeded disjoint splits, argument checks, local MNIST."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from groktimizer.experiment.data import (  # noqa: E402
    TaskData,
    canonical_op,
    digits,
    linear_regression,
    mnist,
    modular_arithmetic,
    sparse_parity,
)

BRUTE_FORCE = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: next(c for c in range(p) if (c * b) % p == a),
    "sq_sum": lambda a, b, p: (a**2 + b**2) % p,
    "quad1": lambda a, b, p: (a**2 + a * b + b**2) % p,
    "quad2": lambda a, b, p: (a**2 + a * b + b**2 + a) % p,
    "cube1": lambda a, b, p: (a**3 + a * b) % p,
    "cube2": lambda a, b, p: (a**3 + a * b**2 + b) % p,
}


def _pairs(x: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in x[:, :2].tolist()}


@pytest.mark.parametrize("op", sorted(BRUTE_FORCE))
@pytest.mark.parametrize("form", ["tokens", "onehot"])
def test_modular_labels_and_split(op: str, form: str) -> None:
    p = 23
    d = modular_arithmetic(op=op, p=p, train_fraction=0.3, form=form, seed=3)
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val)):
        for (a, b, *rest), label in zip(x.tolist(), y.tolist(), strict=True):
            assert label == BRUTE_FORCE[op](a, b, p), (op, a, b)
            assert rest == ([p] if form == "tokens" else [])
    train, val = _pairs(d.x_train), _pairs(d.x_val)
    b_values = range(1, p) if op == "div" else range(p)
    assert not train & val
    assert train | val == {(a, b) for a in range(p) for b in b_values}
    assert d.n_train == int(0.3 * len(train | val))
    assert d.vocab_size == (p + 1 if form == "tokens" else p)
    assert d.seq_len == (3 if form == "tokens" else 2)
    assert d.out_dim == p and d.input_kind == "tokens" and d.x_train.dtype == torch.int64


def test_modular_seed_decides_split() -> None:
    a = modular_arithmetic(p=31, seed=5)
    b = modular_arithmetic(p=31, seed=5)
    c = modular_arithmetic(p=31, seed=6)
    torch.manual_seed(0)  # the global RNG must not matter
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert _pairs(a.x_train) != _pairs(c.x_train)


@pytest.mark.parametrize("noise", [0.1, 0.25])
def test_modular_label_noise_corrupts_that_share_of_training_labels_only(noise: float) -> None:
    p = 29
    clean = modular_arithmetic(op="mul", p=p, train_fraction=0.5, seed=4)
    d = modular_arithmetic(op="mul", p=p, train_fraction=0.5, seed=4, label_noise=noise)
    assert torch.equal(d.x_train, clean.x_train) and torch.equal(d.x_val, clean.x_val)
    assert torch.equal(d.y_val, clean.y_val)  # validation stays true
    truth = torch.tensor([BRUTE_FORCE["mul"](a, b, p) for a, b, _ in d.x_train.tolist()])
    wrong = (d.y_train != truth).nonzero().flatten()
    assert wrong.numel() == round(noise * d.n_train)  # every corrupted label is a wrong one
    assert set(wrong.tolist()) == set(d.extras["corrupted"].tolist())
    assert int(d.y_train.min()) >= 0 and int(d.y_train.max()) < p
    again = modular_arithmetic(op="mul", p=p, train_fraction=0.5, seed=4, label_noise=noise)
    assert torch.equal(d.y_train, again.y_train)  # seeded
    assert clean.extras["corrupted"].numel() == 0


@pytest.mark.parametrize("bad", [-0.1, 1.0, "0.1", True])
def test_modular_label_noise_is_checked(bad) -> None:
    with pytest.raises(
        ValueError, match=r"Invalid label_noise: .* \(accepted: a number in \[0, 1\)\)"
    ):
        modular_arithmetic(p=11, label_noise=bad)


@pytest.mark.parametrize(
    ("alias", "op"),
    [
        ("a+b", "add"),
        ("x - y", "sub"),
        ("a*b", "mul"),
        ("a/b", "div"),
        ("a^2+b^2", "sq_sum"),
        ("a**2 + a*b + b**2", "quad1"),
        ("a^2+ab+b^2+a", "quad2"),
        ("a^3+ab", "cube1"),
        ("a^3+ab^2+b", "cube2"),
    ],
)
def test_op_aliases(alias: str, op: str) -> None:
    assert canonical_op(alias) == op


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"op": "div", "p": 21}, "Invalid p: 21"),
        ({"op": "pow"}, "Invalid op: 'pow'"),
        ({"train_fraction": 0.0}, "Invalid train_fraction: 0.0"),
        ({"train_fraction": 1.0}, "Invalid train_fraction: 1.0"),
        ({"train_fraction": -0.2}, "Invalid train_fraction"),
        ({"p": 1}, "Invalid p: 1"),
        ({"form": "image"}, "Invalid form: 'image'"),
    ],
)
def test_modular_rejects_bad_arguments(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace("*", r"\*")):
        modular_arithmetic(**kwargs)


def test_sub_and_add_work_for_composite_p() -> None:
    d = modular_arithmetic(op="add", p=12, seed=0)
    assert d.n_train + d.n_val == 144


@pytest.mark.parametrize("relevant", ["first", "random"])
@pytest.mark.parametrize("encoding", ["pm1", "01"])
def test_sparse_parity_labels(relevant: str, encoding: str) -> None:
    d = sparse_parity(n_bits=12, k=3, n_train=200, n_val=100, relevant=relevant, encoding=encoding)
    bits = d.extras["relevant_bits"]
    assert len(set(bits.tolist())) == 3
    if relevant == "first":
        assert bits.tolist() == [0, 1, 2]
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val)):
        values = set(x.unique().tolist())
        assert values == ({-1.0, 1.0} if encoding == "pm1" else {0.0, 1.0})
        ones = (x[:, bits] == (-1.0 if encoding == "pm1" else 1.0)).sum(dim=1)
        assert torch.equal(y, ones % 2)
    assert d.in_dim == 12 and d.out_dim == 2 and d.n_train == 200 and d.n_val == 100
    # balanced labels: parity of random bits is a fair coin
    assert 0.35 < d.y_train.float().mean() < 0.65


def test_sparse_parity_seeded() -> None:
    a, b = sparse_parity(seed=1, relevant="random"), sparse_parity(seed=1, relevant="random")
    c = sparse_parity(seed=2, relevant="random")
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    with pytest.raises(ValueError, match="Invalid k: 5"):
        sparse_parity(n_bits=4, k=5)


def test_linear_regression_min_norm_solution() -> None:
    d = linear_regression(n=30, d=120, noise=0.1, seed=4, n_val=40)
    x, y, w = d.x_train.double(), d.y_train[:, 0].double(), d.extras["min_norm_solution"].double()
    assert w.shape == (120,) and d.y_train.shape == (30, 1) and d.task == "regression"
    assert torch.allclose(x @ w, y, atol=1e-4)  # interpolates
    # orthogonal to null(X): w lies in the row space, so its projection onto null(X) is ~0
    _, s, vh = torch.linalg.svd(x, full_matrices=True)
    null = vh[len(s) :]
    assert null.shape == (90, 120)
    assert (null @ w).abs().max() < 1e-5
    # and any other interpolant (w + null-space move) is longer
    assert torch.linalg.norm(w + null[0]) > torch.linalg.norm(w)
    assert d.extras["teacher"].shape == (120,) and d.n_val == 40


def test_linear_regression_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Invalid noise: -1"):
        linear_regression(noise=-1)
    with pytest.raises(ValueError, match="Invalid d: 0"):
        linear_regression(d=0)


def test_digits_shapes_and_split() -> None:
    d = digits(n_train=300, seed=0)
    assert d.x_train.shape == (300, 64) and d.x_val.shape == (1497, 64)
    assert d.out_dim == 10 and d.in_dim == 64
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    assert set(d.y_train.unique().tolist()) == set(range(10))
    # disjoint: no image row in both halves more often than the data's own duplicates allow
    e = digits(n_train=300, n_val=200, seed=1, normalize=False)
    assert e.x_val.shape == (200, 64) and e.x_train.max() == 16.0
    assert not torch.equal(d.x_train, digits(n_train=300, seed=1).x_train)
    with pytest.raises(ValueError, match="Invalid n_train: 5000"):
        digits(n_train=5000)


def _tiny_mnist(n: int, seed: int = 0):
    import datasets

    rng = np.random.default_rng(seed)
    return datasets.Dataset.from_dict(
        {
            "image": [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(n)],
            "label": [int(v) for v in rng.integers(0, 10, n)],
        }
    )


def test_mnist_from_local_dataset_dict(tmp_path) -> None:
    import datasets

    ds = datasets.DatasetDict({"train": _tiny_mnist(40), "test": _tiny_mnist(20, seed=1)})
    ds.save_to_disk(str(tmp_path / "mnist"))
    d = mnist(n_train=16, n_val=8, source=str(tmp_path / "mnist"), seed=0)
    assert d.x_train.shape == (16, 784) and d.x_val.shape == (8, 784)
    assert d.x_train.dtype == torch.float32 and 0.0 <= d.x_train.min() <= d.x_train.max() <= 1.0
    assert d.y_train.dtype == torch.int64 and d.out_dim == 10 and d.in_dim == 784
    # the pixels are the stored ones, scaled: each training row is some training image / 255
    stored = torch.as_tensor(np.stack(ds["train"].with_format("numpy")["image"])).float() / 255
    stored = stored.reshape(40, -1)
    rows = [(stored == row).all(dim=1).nonzero().flatten().tolist() for row in d.x_train]
    assert all(len(r) == 1 for r in rows)
    labels = torch.as_tensor(ds["train"]["label"])
    assert torch.equal(d.y_train, labels[[r[0] for r in rows]])
    again = mnist(n_train=16, n_val=8, source=str(tmp_path / "mnist"), seed=0)
    assert torch.equal(again.x_train, d.x_train)


def test_mnist_single_split_pil_images(tmp_path) -> None:
    import datasets
    from PIL import Image

    base = _tiny_mnist(30)
    pil = datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(np.asarray(a, dtype=np.uint8)) for a in base["image"]],
            "label": base["label"],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
        ),
    )
    pil.save_to_disk(str(tmp_path / "single"))
    d = mnist(n_train=20, n_val=10, source=str(tmp_path / "single"), seed=2)
    assert d.x_train.shape == (20, 784) and d.x_val.shape == (10, 784)
    # a single split is divided: no image both in train and val
    train = {tuple(r) for r in d.x_train.tolist()}
    assert not any(tuple(r) in train for r in d.x_val.tolist())
    with pytest.raises(ValueError, match="Invalid n_train \\+ n_val: 40"):
        mnist(n_train=30, n_val=10, source=str(tmp_path / "single"))


def test_mnist_parquet_folder(tmp_path) -> None:
    folder = tmp_path / "parquet"
    folder.mkdir()
    _tiny_mnist(12).to_parquet(str(folder / "train.parquet"))
    d = mnist(n_train=8, n_val=4, source=str(folder), cache_dir=str(tmp_path / "cache"))
    assert d.x_train.shape == (8, 784) and d.n_val == 4


def test_mnist_errors(tmp_path, monkeypatch) -> None:
    import datasets.config
    import huggingface_hub.constants

    # offline even if another test module imported `datasets` before the env vars were set
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="no such path"):
        mnist(source=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="pass a local path"):
        mnist(source="nobody/no-such-mnist", cache_dir=str(tmp_path / "cache"))


def test_to_casts_floats_only() -> None:
    d = linear_regression(n=5, d=8, n_val=3).to("cpu", torch.float64)
    assert d.x_train.dtype == torch.float64 and d.y_val.dtype == torch.float64
    assert d.extras["min_norm_solution"].dtype == torch.float64
    m = modular_arithmetic(p=7).to("cpu", torch.float64)
    assert m.x_train.dtype == torch.int64 and m.y_train.dtype == torch.int64
    assert isinstance(m, TaskData) and m.extras["p"] == 7
