"""GROKtimizer under data parallelism: two gloo processes on CPU, each with its own shard."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from groktimizer import CDM, GROKtimizer, Guard, StepSwitch, observe
from groktimizer.distributed import MeanOverRanks, world_size

STEPS, SWITCH, WORLD = 30, 5, 2


def _data():
    gen = torch.Generator().manual_seed(100)
    n = WORLD * 64
    return torch.randn(n, 6, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def _train(model, run, x, y, opt):
    """The default GROKtimizer (switch forced at SWITCH), a full-batch loop observing every
    step; returns the η after the switch."""
    closure = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    for step in range(1, STEPS + 1):
        opt.zero_grad()
        F.cross_entropy(run(x), y).backward()
        opt.step()
        with torch.no_grad():
            acc = (model(x).argmax(-1) == y).float().mean().item()
        observe(opt, step, closure=closure, train_loss=float(closure().detach()), train_acc=acc)
    return opt.param_groups[0]["lr"]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4))


def _worker(rank, port, distributed, out):
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    torch.set_num_threads(1)
    x, y = _data()
    x, y = x[rank::WORLD], y[rank::WORLD]  # this rank's shard
    model = _model()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = GROKtimizer(model.parameters(), switch=StepSwitch(SWITCH), distributed=distributed)
    lr = _train(model, ddp, x, y, opt)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    bad = None
    if rank == 0:
        try:  # ranks passing different metric names: an error naming both, not a hang
            MeanOverRanks().metrics({"train_loss": 1.0})
        except ValueError as err:
            bad = str(err)
    else:
        try:
            MeanOverRanks().metrics({"train_acc": 1.0})
        except ValueError as err:
            bad = str(err)
    # the Guard: one rank's loss jumps; averaged, both ranks roll back (else only that one)
    m = _model()
    guard = Guard(CDM(m.parameters(), lr=0.01, weight_decay=1e-3), distributed=distributed)
    F.cross_entropy(m(x), y).backward()
    guard.step()  # arms it
    guard.observe(1, train_loss=1.0)
    guard.observe(2, train_loss=1.0 if rank == 0 else 100.0)
    mixed = MeanOverRanks().metrics({"epoch": 3, "k": rank, "loss": 1.0 + rank, "note": "x"})
    out[rank] = (lr, weights, world_size(), bad, guard.counts["rollbacks"], mixed)
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(distributed):
    ctx = mp.get_context("spawn")
    port = _free_port()
    with ctx.Manager() as manager:
        out = manager.dict()
        procs = [
            ctx.Process(target=_worker, args=(r, port, distributed, out)) for r in range(WORLD)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(180)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        return dict(out)


@pytest.mark.parametrize("distributed", [None, False])
def test_ranks_decide_alike_and_equal_one_process_on_the_union_of_their_shards(distributed):
    res = _run(distributed)
    (lr0, w0, world, bad0, back0, mix0), (lr1, w1, _, bad1, back1, mix1) = (
        res[r] for r in range(WORLD)
    )
    assert world == WORLD
    # numbers averaged (an int where every rank agrees stays that int), the rest as given
    assert mix0 == mix1 == {"epoch": 3, "k": 0.5, "loss": 1.5, "note": "x"}
    assert isinstance(mix0["epoch"], int)
    for bad in (bad0, bad1):
        assert "rank 0: train_loss; rank 1: train_acc" in bad
    if distributed is False:  # each rank on its own shard: they part ways, silently
        assert lr0 != lr1 and (w0 - w1).abs().max() > 1e-2
        assert (back0, back1) == (0, 1)
        return
    assert (back0, back1) == (1, 1)
    assert lr0 == lr1 and torch.equal(w0, w1)
    # the mean over two equal shards is the loss, gradient, curvature and accuracy of the union
    x, y = _data()
    model = _model()
    lr = _train(model, model, x, y, GROKtimizer(model.parameters(), switch=StepSwitch(SWITCH)))
    ref = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert lr0 == pytest.approx(lr, rel=1e-4)
    assert (w0 - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_distributed_true_without_a_group_says_so():
    model = _model()
    with pytest.raises(ValueError, match="Guard: distributed must be None, True or False"):
        Guard(CDM(model.parameters(), lr=0.1, weight_decay=1e-3), distributed=1)
    opt = GROKtimizer(model.parameters(), distributed=True)
    with pytest.raises(RuntimeError, match="distributed=True needs torch.distributed initialised"):
        opt.observe(1, train_acc=0.5)
    with pytest.raises(ValueError, match="distributed must be None, True or False, got 'yes'"):
        GROKtimizer(model.parameters(), distributed="yes")
