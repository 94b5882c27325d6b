import copy

import pytest

from groktimizer import (
    AccuracySwitch,
    AllSwitch,
    AnySwitch,
    LossSwitch,
    NeverSwitch,
    RhoSwitch,
    StepSwitch,
    make_switch,
)


def test_accuracy_needs_patience_consecutive_observations_and_resets_on_a_drop():
    sw = AccuracySwitch(threshold=0.99, patience=3)
    accs = [0.5, 0.995, 1.0, 0.98, 0.999, 1.0, 0.999, 1.0]
    fired = [sw.observe(step=10 * i, train_acc=a) for i, a in enumerate(accs)]
    # the drop to 0.98 at step 30 resets the count; three in a row again at steps 40-60
    assert fired == [False, False, False, False, False, False, True, True]
    assert sw.fired_step == 60


@pytest.mark.parametrize("every", [1, 10, 20, 100])
def test_hold_spans_steps_where_patience_counts_observations(every):
    """patience=3 alone asks 2 steps of holding at one evaluation a step and 200 at one every
    100; hold=20 lets two observations that span 20 steps or more do: the default's span at
    eval every 10, where (and wherever evaluations are closer) nothing changes."""
    accs = [0.5, 0.995, 0.98, 0.999, 1.0, 1.0, 1.0]  # the drop at the 3rd observation resets
    fired = {}
    for hold in (None, 20):
        sw = AccuracySwitch(threshold=0.99, patience=3, hold=hold)
        fired[hold] = next(
            (every * i for i, a in enumerate(accs) if sw.observe(every * i, train_acc=a)), None
        )
    assert fired[None] == every * 5  # the third running (observations 3, 4, 5)
    assert fired[20] == (every * 4 if every >= 20 else every * 5)
    sw = AccuracySwitch(threshold=0.99, patience=3, hold=20)
    assert not sw.observe(100, train_acc=1.0) and sw.since == 100
    saved = copy.deepcopy(sw.state_dict())
    resumed = AccuracySwitch(threshold=0.99, patience=3, hold=20)
    resumed.load_state_dict(saved)
    assert resumed.observe(200, train_acc=1.0)  # the run's start survives a resume
    assert "hold=20" in repr(resumed)
    assert LossSwitch(0.1, patience=3, hold=20).hold == 20 and RhoSwitch(hold=5).hold == 5


def test_an_accuracy_in_percent_is_refused_not_read_as_a_fraction():
    """43.8 (percent) read as a fraction passed the 99% threshold at once: the default switched
    at step 30 of a small MLP at 43.8% train accuracy. Now it is an error naming the value."""
    sw = AccuracySwitch(threshold=0.99, patience=1)
    with pytest.raises(
        ValueError,
        match=r"AccuracySwitch: train_acc must be a fraction in \[0, 1\], got 43.8 \(a percentage",
    ):
        sw.observe(10, train_acc=43.8)
    with pytest.raises(ValueError, match="got -0.1$"):
        sw.observe(10, train_acc=-0.1)
    assert not sw.observe(10, train_acc=float("nan"))  # no fit yet: not an error, not a hold
    assert sw.observe(20, train_acc=1.0)


def test_accuracy_threshold_is_inclusive_and_missing_metric_is_skipped():
    sw = AccuracySwitch(threshold=0.999, patience=2)
    assert not sw.observe(1, train_acc=0.999)
    assert not sw.observe(2, train_loss=0.1)  # no train_acc: neither counts nor resets
    assert sw.observe(3, train_acc=1.0)


def test_accuracy_switch_fires_on_a_stall_short_of_the_threshold():
    """stall: no new best for that many steps with the best >= stall_floor fires the switch;
    a new best restarts the clock; below the floor it never fires."""
    sw = AccuracySwitch(threshold=0.999, patience=3, stall=100, stall_floor=0.95)
    accs = {0: 0.5, 10: 0.97, 20: 0.99, 30: 0.992, 40: 0.991, 70: 0.993, 120: 0.99, 160: 0.993}
    for step, acc in accs.items():
        assert not sw.observe(step, train_acc=acc), step
    assert not sw.stalled and sw.state_dict()["best_step"] == 70
    assert sw.observe(170, train_acc=0.99)  # 100 steps since the best (0.993 at step 70)
    assert sw.stalled and sw.fired_step == 170
    low = AccuracySwitch(threshold=0.999, stall=100, stall_floor=0.95)
    assert not any(low.observe(10 * i, train_acc=0.9) for i in range(100))
    resumed = AccuracySwitch(threshold=0.999, stall=100)
    resumed.load_state_dict(copy.deepcopy(sw.state_dict()))
    assert resumed.best == 0.993 and resumed.best_step == 70 and resumed.stalled
    default = AccuracySwitch(threshold=0.999)  # no stall: never fires short of the threshold
    assert not any(default.observe(10 * i, train_acc=0.99) for i in range(1000))


def test_custom_metric_name():
    sw = AccuracySwitch(threshold=0.9, metric="val_acc")
    assert not sw.observe(1, train_acc=1.0, val_acc=0.5)
    assert sw.observe(2, train_acc=1.0, val_acc=0.95)


def test_loss_switch():
    sw = LossSwitch(1e-3, patience=2)
    assert [sw.observe(i, train_loss=x) for i, x in enumerate([1.0, 1e-4, 2e-3, 1e-3, 5e-4])] == [
        False,
        False,
        False,
        False,
        True,
    ]


def test_step_switch():
    sw = StepSwitch(100)
    assert not sw.observe(99)
    assert sw.observe(100)
    assert sw.fired_step == 100


def test_rho_switch_from_norms_and_direct():
    sw = RhoSwitch(threshold=1.0, patience=2)
    # ρ = ‖∇L‖/(λ‖w‖) = 5/(0.1·10) = 5, then 0.5, 0.8
    assert not sw.observe(1, grad_norm=5.0, weight_norm=10.0, weight_decay=0.1)
    assert sw.last_rho == pytest.approx(5.0)
    assert not sw.observe(2, grad_norm=0.5, weight_norm=10.0, weight_decay=0.1)
    assert sw.observe(3, rho=0.8)
    with pytest.raises(ValueError, match="weight_decay"):
        RhoSwitch().observe(1, grad_norm=1.0, weight_norm=1.0)
    fixed = RhoSwitch(threshold=2.0, weight_decay=0.5)
    assert fixed.observe(1, grad_norm=1.0, weight_norm=1.5)  # ρ = 1.33 < 2


def test_any_and_all_feed_every_child():
    acc = AccuracySwitch(threshold=0.9, patience=2)
    step = StepSwitch(5)
    anyc = AnySwitch(acc, step)
    assert not anyc.observe(1, train_acc=0.95)
    assert anyc.observe(2, train_acc=0.95)  # acc counted both observations
    allc = AllSwitch(AccuracySwitch(threshold=0.9), StepSwitch(5))
    assert not allc.observe(1, train_acc=0.95)
    assert not allc.observe(5, train_acc=0.5)
    assert allc.observe(6, train_acc=0.95)


def test_never():
    sw = NeverSwitch()
    assert not any(sw.observe(i, train_acc=1.0) for i in range(10))


def test_state_dict_resumes_patience_and_reset_clears_it():
    sw = AnySwitch(AccuracySwitch(threshold=0.9, patience=3), RhoSwitch(patience=2))
    sw.observe(1, train_acc=0.95, rho=0.5)
    sw.observe(2, train_acc=0.95, rho=2.0)
    saved = copy.deepcopy(sw.state_dict())
    fresh = AnySwitch(AccuracySwitch(threshold=0.9, patience=3), RhoSwitch(patience=2))
    fresh.load_state_dict(saved)
    assert fresh.observe(3, train_acc=0.95)  # third consecutive accuracy observation
    sw.reset()
    assert not sw.observe(3, train_acc=0.95)


def test_make_switch():
    sw = make_switch("accuracy", threshold=0.5, patience=2)
    assert isinstance(sw, AccuracySwitch) and sw.patience == 2
    assert isinstance(make_switch("step", step=3), StepSwitch)
    with pytest.raises(ValueError, match="name"):
        make_switch("nope")


@pytest.mark.parametrize(
    "build,name",
    [
        (lambda: AccuracySwitch(threshold=1.5), "threshold"),
        (lambda: AccuracySwitch(threshold=0), r"threshold must be in \(0, 1\]"),
        (lambda: AccuracySwitch(patience=0), "patience"),
        (lambda: AccuracySwitch(patience=1.5), "patience"),
        (lambda: AccuracySwitch(stall=0), "stall"),
        (
            lambda: AccuracySwitch(hold=0),
            r"AccuracySwitch: hold must be None or an int >= 1, got 0",
        ),
        (lambda: LossSwitch(0.1, hold=2.5), "LossSwitch: hold must be None or an int >= 1"),
        (lambda: AccuracySwitch(stall=10, stall_floor=1.5), "stall_floor"),
        (lambda: LossSwitch(-1.0), "threshold"),
        (lambda: StepSwitch(-1), "step"),
        (lambda: RhoSwitch(threshold=0.0), "threshold"),
        (lambda: RhoSwitch(weight_decay=-1.0), "weight_decay"),
        (lambda: AnySwitch(), "criteria"),
        (lambda: AllSwitch("accuracy"), "criteria"),
    ],
)
def test_invalid_arguments(build, name):
    with pytest.raises(ValueError, match=name):
        build()
