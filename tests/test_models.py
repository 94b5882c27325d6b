"""Models: output shapes for every sensible dataset/model pair, init scale, vmap, bad pairs."""

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from groktimizer.experiment.data import digits, linear_regression, modular_arithmetic, sparse_parity
from groktimizer.experiment.models import MLP, Linear, Transformer

CLASSES = {"mlp": MLP, "transformer": Transformer, "linear": Linear}

DATA = {
    "modular_tokens": lambda: modular_arithmetic(p=11, form="tokens", seed=0),
    "modular_onehot": lambda: modular_arithmetic(p=11, form="onehot", seed=0),
    "sparse_parity": lambda: sparse_parity(n_bits=10, k=3, n_train=20, n_val=10),
    "linear_regression": lambda: linear_regression(n=10, d=30, n_val=5),
    "digits": lambda: digits(n_train=50, n_val=20),
}
PAIRS = [
    ("mlp", "modular_tokens"),
    ("mlp", "modular_onehot"),
    ("mlp", "sparse_parity"),
    ("mlp", "linear_regression"),
    ("mlp", "digits"),
    ("transformer", "modular_tokens"),
    ("transformer", "modular_onehot"),
    ("linear", "sparse_parity"),
    ("linear", "linear_regression"),
    ("linear", "digits"),
]
SMALL = {
    "mlp": {"depth": 2, "width": 32, "embed_dim": 8},
    "transformer": {"d_model": 32, "n_heads": 4, "d_mlp": 64},
    "linear": {},
}


@pytest.mark.parametrize(("model", "dataset"), PAIRS)
def test_output_shapes_and_gradients(model: str, dataset: str) -> None:
    data = DATA[dataset]()
    torch.manual_seed(0)
    net = CLASSES[model](data, **SMALL[model])
    out = net(data.x_train)
    assert out.shape == (data.n_train, data.out_dim)
    assert net(data.x_val).shape == (data.n_val, data.out_dim)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_incompatible_pairs() -> None:
    data = DATA["digits"]()
    with pytest.raises(
        ValueError, match="model 'transformer' needs token inputs; dataset 'digits' gives features"
    ):
        Transformer(data)
    modular = DATA["modular_tokens"]()
    with pytest.raises(ValueError, match="model 'linear' needs feature inputs"):
        Linear(modular)


def test_mlp_init_scale_multiplies_every_parameter() -> None:
    data = DATA["modular_onehot"]()
    torch.manual_seed(1)
    base = MLP(data, depth=3, width=16, embed_dim=4)
    torch.manual_seed(1)
    big = MLP(data, depth=3, width=16, embed_dim=4, init_scale=8.0)
    for p, q in zip(base.parameters(), big.parameters(), strict=True):
        torch.testing.assert_close(q, 8.0 * p)
    norm = torch.cat([p.flatten() for p in big.parameters()]).norm()
    torch.testing.assert_close(
        norm, 8.0 * torch.cat([p.flatten() for p in base.parameters()]).norm()
    )
    # depth counts hidden layers; the embedding is shared across the two operands
    linears = [m for m in big.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 and linears[0].in_features == 2 * 4
    assert big.embed.num_embeddings == data.vocab_size


def test_mlp_options() -> None:
    data = DATA["digits"]()
    net = MLP(data, depth=1, width=8, activation="tanh", bias=False)
    assert all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Linear))
    with pytest.raises(ValueError, match="Invalid activation: 'swish'"):
        MLP(data, activation="swish")
    with pytest.raises(ValueError, match="Invalid init_scale: -1"):
        MLP(data, init_scale=-1)
    assert MLP(data, depth=0)(data.x_train).shape == (50, 10)


def test_linear_zero_init() -> None:
    data = DATA["linear_regression"]()
    net = Linear(data, init_scale=0.0)
    assert net.linear.weight.shape == (1, 30) and net.linear.bias is None
    assert torch.count_nonzero(net(data.x_train)) == 0


def test_transformer_reference_shape_and_causality() -> None:
    data = modular_arithmetic(p=113, train_fraction=0.3, seed=0)
    torch.manual_seed(0)
    net = Transformer(data)  # the reference sizes: d 128, 4 heads, d_mlp 512, 1 layer
    n_params = sum(p.numel() for p in net.parameters())
    # embed 114*128 + pos 3*128 + attn 4*128^2 + mlp 2*128*512 + 512 + 128 + unembed 128*113
    assert n_params == 114 * 128 + 3 * 128 + 4 * 128**2 + 2 * 128 * 512 + 512 + 128 + 128 * 113
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in net.modules())
    x = data.x_val[:5]
    out = net(x)
    assert out.shape == (5, 113)
    # the output at the last ('=') position reads the operands
    swapped = x.clone()
    swapped[:, 0] = (x[:, 0] + 1) % 113
    assert not torch.allclose(net(swapped), out)
    # causal attention: position 0 does not see later positions
    attn = net.blocks[0].attn
    h = torch.randn(4, 3, 128)
    h2 = h.clone()
    h2[:, 1:] += 1.0
    torch.testing.assert_close(attn(h)[:, 0], attn(h2)[:, 0])
    assert not torch.allclose(attn(h)[:, 2], attn(h2)[:, 2])
    with_ln = Transformer(data, d_model=32, n_heads=2, d_mlp=64, n_layers=2, layer_norm=True)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in with_ln.modules()) == 5
    with pytest.raises(ValueError, match="Invalid n_heads: 3"):
        Transformer(data, d_model=32, n_heads=3)


def test_transformer_under_functional_call_and_vmap() -> None:
    data = modular_arithmetic(p=13, seed=0)
    torch.manual_seed(0)
    copies = [Transformer(data, d_model=32, n_heads=4, d_mlp=64, n_layers=2) for _ in range(2)]
    params, buffers = stack_module_state(copies)
    base = copies[0]

    def forward(p, b, x):
        return functional_call(base, (p, b), (x,))

    x = data.x_train[:17]
    batched = vmap(forward, in_dims=(0, 0, None))(params, buffers, x)
    separate = torch.stack([m(x) for m in copies])
    assert batched.shape == (2, 17, 13)
    torch.testing.assert_close(batched, separate, atol=1e-6, rtol=0)
    assert not torch.allclose(separate[0], separate[1])
