"""Models: output shapes for every sensible dataset/model pair, init scale, vmap, bad pairs."""

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from groktimizer import GROKtimizer, StepSwitch
from groktimizer.experiment.data import digits, linear_regression, modular_arithmetic, sparse_parity
from groktimizer.experiment.models import CNN, LSTM, MLP, Linear, Transformer

CLASSES = {"mlp": MLP, "transformer": Transformer, "lstm": LSTM, "cnn": CNN, "linear": Linear}

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
    ("lstm", "modular_tokens"),
    ("cnn", "digits"),
    ("linear", "sparse_parity"),
    ("linear", "linear_regression"),
    ("linear", "digits"),
]
SMALL = {
    "mlp": {"depth": 2, "width": 32, "embed_dim": 8},
    "transformer": {"d_model": 32, "n_heads": 4, "d_mlp": 64},
    "lstm": {"hidden": 16, "embed_dim": 8, "n_layers": 2},
    "cnn": {"channels": [4, 8], "width": 16, "norm": "batch"},
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


def test_lstm_equals_torch_lstm_and_runs_under_vmap() -> None:
    """The written-out LSTM computes nn.LSTM's function (weights copied: gates i, f, g, o, zero
    initial state, two layers), keeps its init scale (uniform in ±1/√hidden, biases the sum of
    two), and batches under vmap, which nn.LSTM cannot (no batching rule)."""
    data = modular_arithmetic(p=13, seed=0)
    torch.manual_seed(0)
    net = LSTM(data, hidden=24, embed_dim=8, n_layers=2)
    ref = torch.nn.LSTM(8, 24, num_layers=2, batch_first=True)
    with torch.no_grad():
        for k, cell in enumerate(net.cells):
            w_ih, w_hh = cell.weight.split([cell.in_features - 24, 24], dim=1)
            getattr(ref, f"weight_ih_l{k}").copy_(w_ih)
            getattr(ref, f"weight_hh_l{k}").copy_(w_hh)
            getattr(ref, f"bias_ih_l{k}").copy_(cell.bias)
            getattr(ref, f"bias_hh_l{k}").zero_()
    x = data.x_train[:17]
    out, _ = ref(net.embed(x))
    torch.testing.assert_close(net(x), net.readout(out[:, -1]), atol=1e-6, rtol=1e-5)
    assert all(float(c.weight.detach().abs().max()) <= 24**-0.5 for c in net.cells)
    assert all(float(c.bias.detach().abs().max()) <= 2 * 24**-0.5 for c in net.cells)
    assert float(net.cells[0].bias.detach().abs().max()) > 24**-0.5 / 2  # not left at zero
    big = LSTM(data, hidden=24, embed_dim=8, init_scale=8.0)
    assert float(big.cells[0].weight.detach().abs().max()) > 24**-0.5  # scaled past the init bound
    copies = [LSTM(data, hidden=16, embed_dim=8) for _ in range(2)]
    params, buffers = stack_module_state(copies)

    def forward(p, b, x):
        return functional_call(copies[0], (p, b), (x,))

    batched = vmap(forward, in_dims=(0, 0, None))(params, buffers, x)
    torch.testing.assert_close(batched, torch.stack([m(x) for m in copies]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="model 'lstm' needs token inputs"):
        LSTM(DATA["digits"]())
    with pytest.raises(ValueError, match="Invalid hidden: 0"):
        LSTM(data, hidden=0)


@pytest.mark.parametrize("norm", ["none", "batch", "group"])
def test_cnn_norms_scale_invariance_and_vmap(norm: str) -> None:
    """A convolution followed by a norm is scale-invariant (3x its weight and bias: the same
    function), without one it is not; batch norm uses the evaluated batch's statistics in
    training and evaluation alike (no running averages: evaluation equals training mode); the
    forward batches under vmap for every norm."""
    data = DATA["digits"]()
    torch.manual_seed(0)
    net = CNN(data, channels=[4, 8], width=16, norm=norm)
    x = data.x_train[:20]
    out = net(x)
    conv = net.features[0]
    with torch.no_grad():
        conv.weight.mul_(3.0)
        conv.bias.mul_(3.0)
    if norm == "none":
        assert not torch.allclose(net(x), out, atol=1e-3)
    else:
        torch.testing.assert_close(net(x), out, atol=1e-4, rtol=1e-4)
    assert all(not b.numel() for b in net.buffers())  # nothing updated in place
    torch.testing.assert_close(net.eval()(x), net.train()(x))
    if norm == "batch":  # per channel: mean 0, variance 1 over the batch before gain and shift
        pre = net.features[:2](x.reshape(-1, 1, 8, 8))
        torch.testing.assert_close(pre.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            pre.var(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3, rtol=0
        )
    copies = [CNN(data, channels=[4, 8], width=16, norm=norm) for _ in range(2)]
    params, buffers = stack_module_state(copies)

    def forward(p, b, inputs):
        return functional_call(copies[0], (p, b), (inputs,))

    batched = vmap(forward, in_dims=(0, 0, None))(params, buffers, x)
    torch.testing.assert_close(batched, torch.stack([m(x) for m in copies]), atol=1e-5, rtol=0)


def test_cnn_shape_init_scale_and_bad_arguments() -> None:
    data = DATA["digits"]()
    torch.manual_seed(3)
    base = CNN(data, channels=[4, 8, 8], width=16)
    torch.manual_seed(3)
    big = CNN(data, channels=[4, 8, 8], width=16, init_scale=8.0)
    for p, q in zip(base.parameters(), big.parameters(), strict=True):
        torch.testing.assert_close(q, 8.0 * p)
    # 8x8 -> 8x8 (stride 1) -> 4x4 -> 2x2 (stride 2): 8 channels x 4 pixels into the hidden layer
    assert base.head[1].in_features == 8 * 2 * 2
    with pytest.raises(
        ValueError,
        match="model 'cnn' needs square images as flat features; "
        "dataset 'linear_regression_n10_d30' gives 30 features",
    ):
        CNN(DATA["linear_regression"]())
    with pytest.raises(ValueError, match="model 'cnn' needs feature inputs"):
        CNN(DATA["modular_tokens"]())
    with pytest.raises(ValueError, match=r"Invalid norm: 'layer' \(accepted: \['none', 'batch', "):
        CNN(data, norm="layer")
    with pytest.raises(ValueError, match="Invalid channels: 0"):
        CNN(data, channels=[4, 0])
    with pytest.raises(ValueError, match="Invalid channels: \\[\\]"):
        CNN(data, channels=[])


def test_cnn_with_batch_norm_goes_through_the_default_switch() -> None:
    """The default GROKtimizer's probe takes double backward through batch norm with batch
    statistics (no fallback to differences) and measures a finite curvature; phase 2 steps."""
    data = digits(n_train=50, n_val=20)
    torch.manual_seed(0)
    net = CNN(data, channels=[4, 8], width=16, norm="batch")

    def closure():
        return torch.nn.functional.cross_entropy(net(data.x_train), data.y_train)

    opt = GROKtimizer(net.parameters(), switch=StepSwitch(10), curvature_closure=closure)
    events = []
    for step in range(1, 21):
        opt.zero_grad()
        closure().backward()
        opt.step()
        events += opt.observe(step, train_loss=float(closure().detach()), train_acc=1.0)
    (switch,) = [e for e in events if e["event"] == "switch"]
    rec = switch["auto_lr"]
    assert rec["hvp"] == "autograd" and 0 < rec["h_max"] < float("inf")
    assert [e["event"] for e in events] == ["switch"]  # no blow-up, no back-off in 10 steps
    assert opt.phase == 2 and opt.param_groups[0]["lr"] == rec["lr"]
