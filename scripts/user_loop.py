"""The default GROKtimizer in a user's own training loop, outside the pipeline and its suite.

A plain PyTorch loop as the README's (no Trainer, no Hydra): modular arithmetic on an MLP
(embedding 128, width, depth and activation as given) or on a transformer built from
``torch.nn.TransformerEncoderLayer`` (pre-LN by default, GELU, readout at an extra token),
full batch or minibatches drawn with replacement, evaluation every 10 steps on the whole
training and validation sets; stops at 99% validation accuracy.

    python scripts/user_loop.py VARIANT METHOD SEED [MAX_STEPS]

VARIANT is comma-separated key=value (empty: a+b mod 97, 40% train, MLP 2x512, full batch):
p, frac, op (add sub mul sq cube; perm: composition in the symmetric group S_n, n default 5),
w, d (hidden layers), act (relu gelu tanh silu), arch (mlp tf), layers, post (post-LN), bs, ls
(label smoothing), loss (ce mse), init (weights x init),
and how the loop itself is written: dtype (f64), amp (bf16: the forward, the closure's too,
under CPU autocast), clip (``clip_grad_norm_`` to that norm before each step), accum (that many
minibatches of bs per step), unused (1: a head the forward never uses, its grad stays None),
frozen (1: the first layer's bias frozen), groups (1: the embedding in its own param group at
3x the learning rate), every (evaluate and observe every that many steps; default 10).
METHOD: grok (GROKtimizer(params)), wd<λ> (λ fixed, η automatic), adamw (wd 1), ema (Adam +
Grokfast EMA, l2 0.005). Prints the events, a line every 200 steps (step, train accuracy,
validation accuracy, weight norm) and ``end ...`` (``reached <step>`` first when it gets there).
"""

import itertools
import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from groktimizer import GROKtimizer, observe
from groktimizer.filters import FilteredOptimizer, GradFilterEMA

variant, method, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
max_steps = int(sys.argv[4]) if len(sys.argv) > 4 else 4000
torch.manual_seed(seed)
torch.set_num_threads(1)
V = dict(kv.split("=") for kv in variant.split(",") if "=" in kv)
p, frac, op = int(V.get("p", 97)), float(V.get("frac", 0.4)), V.get("op", "add")
width, depth, arch = int(V.get("w", 512)), int(V.get("d", 1)), V.get("arch", "mlp")
bs = int(V["bs"]) if "bs" in V else None
smoothing, loss_kind, init = float(V.get("ls", 0.0)), V.get("loss", "ce"), float(V.get("init", 1))
Act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}[V.get("act", "relu")]

if op == "perm":  # composition in the symmetric group S_n (n = 5: 120 elements)
    group = list(itertools.permutations(range(int(V.get("n", 5)))))
    index = {g: i for i, g in enumerate(group)}
    p = len(group)
pairs = torch.cartesian_prod(torch.arange(p), torch.arange(p))
a, b = pairs[:, 0], pairs[:, 1]
if op == "perm":
    labels = torch.tensor([index[tuple(group[i][k] for k in group[j])] for i, j in pairs.tolist()])
else:
    labels = {
        "add": a + b,
        "sub": a - b,
        "mul": a * b,
        "sq": a * a + b * b,
        "cube": a**3 + a * b,
    }[op] % p
perm = torch.randperm(len(pairs))
n_train = int(frac * len(pairs))
x_train, y_train = pairs[perm[:n_train]], labels[perm[:n_train]]
x_val, y_val = pairs[perm[n_train:]], labels[perm[n_train:]]


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(p, 128)
        layers = [nn.Linear(256, width), Act()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), Act()]
        self.body = nn.Sequential(*layers, nn.Linear(width, p))

    def forward(self, x):
        return self.body(self.emb(x).flatten(1))


class Transformer(nn.Module):
    def __init__(self, d=128):
        super().__init__()
        self.emb = nn.Embedding(p + 1, d)
        self.pos = nn.Parameter(torch.randn(3, d) * 0.02)
        pre_ln = "post" not in V
        layer = nn.TransformerEncoderLayer(
            d, 4, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=pre_ln
        )
        n_layers = int(V.get("layers", 2))
        self.enc = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm, self.out = nn.LayerNorm(d), nn.Linear(d, p)

    def forward(self, x):
        x = torch.cat([x, torch.full_like(x[:, :1], p)], 1)  # a readout token
        return self.out(self.norm(self.enc(self.emb(x) + self.pos)[:, -1]))


model = MLP() if arch == "mlp" else Transformer()
with torch.no_grad():
    for q in model.parameters():
        q.mul_(init)
if V.get("unused") == "1":
    model.unused = nn.Linear(width, p)  # never called: its parameters get no gradient
if V.get("frozen") == "1":
    next(q for n, q in model.named_parameters() if n.endswith("bias")).requires_grad_(False)
dtype = torch.float64 if V.get("dtype") == "f64" else torch.float32
model.to(dtype)
amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=V.get("amp") == "bf16")
clip, accum, every = float(V.get("clip", 0)), int(V.get("accum", 1)), int(V.get("every", 10))
if accum > 1 and not bs:
    sys.exit("user_loop.py: accum needs bs (minibatches)")
params = model.parameters()
if V.get("groups") == "1":
    emb = [q for n, q in model.named_parameters() if n.startswith("emb")]
    rest = [q for n, q in model.named_parameters() if not n.startswith("emb")]
    params = [{"params": emb, "lr": 3e-3}, {"params": rest}]


def loss_fn(out, y):
    out = out.to(dtype)
    if loss_kind == "mse":
        return F.mse_loss(out, F.one_hot(y, p).to(dtype))
    return F.cross_entropy(out, y, label_smoothing=smoothing)


if method == "grok":
    opt = GROKtimizer(params)
elif method.startswith("wd"):
    opt = GROKtimizer(params, weight_decay=float(method[2:]))
elif method == "adamw":
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
elif method == "ema":
    adam = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.98), weight_decay=0.005)
    opt = FilteredOptimizer(adam, GradFilterEMA(0.98, 2.0))
else:
    sys.exit(f"user_loop.py: method must be grok, wd<float>, adamw or ema, got {method!r}")


def closure():
    with amp:
        return loss_fn(model(x_train), y_train)


@torch.no_grad()
def accuracy(x, y):
    model.eval()
    with amp:
        out = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return out


gen = torch.Generator().manual_seed(seed)
for step in range(1, max_steps + 1):
    opt.zero_grad()
    for _ in range(accum):
        if bs:
            idx = torch.randint(len(x_train), (bs,), generator=gen)
            xb, yb = x_train[idx], y_train[idx]
        else:
            xb, yb = x_train, y_train
        with amp:
            loss = loss_fn(model(xb), yb) / accum
        loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    if not math.isfinite(loss.item()):
        print("diverged", step)
        break
    if step % every == 0:
        train_acc, val_acc = accuracy(x_train, y_train), accuracy(x_val, y_val)
        if isinstance(opt, GROKtimizer):
            with torch.no_grad():
                train_loss = closure().item()
            metrics = dict(train_acc=train_acc, train_loss=train_loss, closure=closure)
            for ev in observe(opt, step, **metrics):
                keys = ("lr", "weight_decay", "cause", "train_acc")
                print(step, ev["event"], {k: ev[k] for k in keys if ev.get(k) is not None})
        if step % 200 == 0:
            norm = torch.sqrt(sum((q.detach() ** 2).sum() for q in model.parameters())).item()
            print(step, round(train_acc, 3), round(val_acc, 4), round(norm, 1), flush=True)
        if val_acc >= 0.99:
            print("reached", step)
            break
print(f"end {variant} {method} {seed} step {step} train {train_acc:.3f} val {val_acc:.4f}")
