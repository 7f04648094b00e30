"""fit / evaluate on small learnable data: learning, determinism, the callback, divergence."""

from __future__ import annotations

import math
import time

import pytest
import torch

from benchmark import train as train_mod
from benchmark.errors import UserError
from benchmark.train import (
    Diverged,
    Split,
    build_model,
    did_not_learn,
    evaluate,
    fit,
    resolve_device,
)

CPU = torch.device("cpu")
KEYS = {"train_loss", "train_acc", "train_balanced_acc", "test_loss", "test_acc",
        "test_balanced_acc", "seconds", "eval_seconds"}
# The learnable set (conftest.learnable_images, 400 train / 200 test) is learnt by the reference
# cnn in two epochs of batch 8 at lr 0.05 for every seed tried (0..5 reached 1.0 test accuracy).
RECIPE = {"epochs": 2, "batch_size": 8, "lr": 0.05}


def _fit(train: Split, test: Split, seed: int = 0, callback=None, **kwargs):
    model = build_model("cnn", 10, seed, CPU)
    history = fit(model, train, test, seed=seed, callback=callback, **(RECIPE | kwargs))
    return model, history


def _subset(split: Split, n: int) -> Split:
    return Split(split.x[:n], split.y[:n])


@pytest.fixture(scope="module")
def trained(learnable_split):
    calls = []
    model, history = _fit(*learnable_split, callback=lambda e, m: calls.append((e, dict(m))))
    return model, history, calls


def _without_seconds(history):
    return [{k: v for k, v in m.items() if not k.endswith("seconds")} for m in history]


def test_fit_learns_well_above_chance(trained, learnable_split):
    model, history, _ = trained
    last = history[-1]
    assert last["test_acc"] > 0.5 and last["test_balanced_acc"] > 0.5  # chance: 0.1
    assert last["train_loss"] < history[0]["train_loss"] < math.log(10) + 0.1
    assert evaluate(model, learnable_split[1])["acc"] == last["test_acc"]


def test_fit_keeps_the_final_weights_test_evaluation(trained, learnable_split):
    """history.last_test is what evaluating the returned model on the test set gives (the
    repetitions record it instead of evaluating a second time): the same loss, accuracy and
    predictions, not an earlier epoch's."""
    model, history, _ = trained
    again = evaluate(model, learnable_split[1], RECIPE["batch_size"])
    last = history.last_test
    assert (last["loss"], last["acc"], last["balanced_acc"]) == (
        again["loss"], again["acc"], again["balanced_acc"]) == (
        history[-1]["test_loss"], history[-1]["test_acc"], history[-1]["test_balanced_acc"])
    assert torch.equal(last["preds"], again["preds"])


def test_callback_gets_every_epoch_with_all_metrics(trained):
    _, history, calls = trained
    assert [epoch for epoch, _ in calls] == list(range(1, RECIPE["epochs"] + 1))
    for (_, metrics), entry in zip(calls, history, strict=True):
        assert set(metrics) == KEYS and metrics == entry
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
        assert 0 <= metrics["train_acc"] <= 1 and 0 <= metrics["test_acc"] <= 1
        assert metrics["seconds"] > 0


def test_same_seed_is_bit_identical(trained, learnable_split):
    model, history, _ = trained
    twin, twin_history = _fit(*learnable_split)
    assert _without_seconds(twin_history) == _without_seconds(history)  # exact float equality
    state, twin_state = model.state_dict(), twin.state_dict()
    assert list(state) == list(twin_state)
    assert all(torch.equal(state[k], twin_state[k]) for k in state)


def test_a_different_seed_gives_different_weights(learnable_split):
    train, test = _subset(learnable_split[0], 80), _subset(learnable_split[1], 20)
    a, _ = _fit(train, test, seed=0, epochs=1)
    b, _ = _fit(train, test, seed=1, epochs=1)
    assert not any(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(),
                                                       strict=True))


def test_the_fit_seed_alone_changes_the_order(learnable_split):
    """Same initial weights, a different fit seed: another shuffle, other final weights."""
    train, test = _subset(learnable_split[0], 80), _subset(learnable_split[1], 20)
    a, b = build_model("cnn", 10, 0, CPU), build_model("cnn", 10, 0, CPU)
    fit(a, train, test, epochs=1, batch_size=8, lr=0.05, seed=0)
    fit(b, train, test, epochs=1, batch_size=8, lr=0.05, seed=1)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(),
                                                       strict=True))


def test_bf16_autocast_trains_in_bf16_and_auto_means_fp32_on_a_cpu(learnable_split):
    train, test = _subset(learnable_split[0], 80), _subset(learnable_split[1], 20)
    assert train_mod.resolve_precision("auto", CPU) == "fp32"
    assert train_mod.resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(UserError, match="unknown precision 'fp16'"):
        train_mod.resolve_precision("fp16", CPU)
    a, b = build_model("cnn", 10, 0, CPU), build_model("cnn", 10, 0, CPU)
    ha = fit(a, train, test, epochs=1, batch_size=8, lr=0.05, seed=0, precision="fp32")
    hb = fit(b, train, test, epochs=1, batch_size=8, lr=0.05, seed=0, precision="bf16")
    # the same start and batches, other rounding: other weights, other (finite) losses
    assert ha[0]["train_loss"] != hb[0]["train_loss"] and all(
        math.isfinite(h[0]["train_loss"]) for h in (ha, hb))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the bf16 path computes in
        assert b(test.x[:2].float() / 255).dtype == torch.bfloat16


def test_bf16_is_emulated_only_on_a_cpu_without_avx512(monkeypatch):
    for capability, emulated in {"AVX2": "AVX2", "NO AVX": "NO AVX", "AVX512": "",
                                 "SVE256": "", "DEFAULT": ""}.items():
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert train_mod.bf16_emulated(CPU) == emulated
        assert train_mod.bf16_emulated(torch.device("cuda")) == ""  # a GPU's own bf16


def test_a_huge_learning_rate_raises_diverged(learnable_split):
    train = _subset(learnable_split[0], 64)
    calls = []
    with pytest.raises(Diverged, match="learning rate is too high") as err:
        _fit(train, _subset(learnable_split[1], 20), epochs=3, batch_size=16, lr=1e6,
             callback=lambda e, m: calls.append(e))
    assert err.value.epoch == 1 and not math.isfinite(err.value.loss)
    assert calls == []  # a diverged epoch is not reported as if it were a result
    assert isinstance(err.value, FloatingPointError)


def test_divergence_in_the_last_step_is_caught(learnable_split):
    train, test = _subset(learnable_split[0], 64), _subset(learnable_split[1], 20)
    with pytest.raises(Diverged):
        _fit(train, test, epochs=1, batch_size=64, lr=float("inf"))


def test_fit_counts_the_cpu_of_its_epochs_and_not_of_its_callback(learnable_split):
    train, test = _subset(learnable_split[0], 64), _subset(learnable_split[1], 20)

    def busy(epoch, metrics):  # 60 ms of CPU per epoch: a recorder's, not the training's
        end = time.thread_time() + 0.06
        while time.thread_time() < end:
            pass

    before, cpu = train_mod.fit_cpu_seconds(), time.thread_time()
    _fit(train, test, epochs=2, batch_size=16, callback=busy)
    counted, spent = train_mod.fit_cpu_seconds() - before, time.thread_time() - cpu
    assert 0 < counted < spent - 0.12  # the model's building is not counted either
    before = train_mod.fit_cpu_seconds()
    with pytest.raises(Diverged):  # an epoch that broke was trained all the same
        _fit(train, test, epochs=1, batch_size=64, lr=float("inf"))
    assert train_mod.fit_cpu_seconds() > before


def test_zero_epochs_train_nothing(learnable_split):
    calls = []
    model, history = _fit(*learnable_split, epochs=0, callback=lambda e, m: calls.append(e))
    fresh = build_model("cnn", 10, 0, CPU)
    assert history == [] and calls == [] and history.last_test is None
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters(),
                                                   strict=True))


@pytest.mark.parametrize("kwargs", [{"epochs": -1}, {"batch_size": 0}])
def test_bad_epochs_or_batch_size_are_refused(learnable_split, kwargs):
    with pytest.raises(ValueError, match="epochs must be >= 0 and batch_size >= 1"):
        _fit(*learnable_split, **kwargs)


@pytest.mark.parametrize("n, batch_size", [(197, 64), (64, 64), (5, 1024), (0, 16)])
def test_evaluate_returns_one_prediction_per_image(learnable_split, n, batch_size):
    model = build_model("cnn", 10, 0, CPU)
    test = _subset(learnable_split[1], n)
    before = [p.clone() for p in model.parameters()]
    ev = evaluate(model, test, batch_size)
    assert ev["preds"].shape == (n,) and ev["preds"].dtype == torch.int64
    assert ev["preds"].device.type == "cpu"
    assert ev["acc"] == pytest.approx((ev["preds"] == test.y).float().mean().item() if n else 0)
    from benchmark.metrics import balanced_accuracy

    assert ev["balanced_acc"] == pytest.approx(balanced_accuracy(test.y, ev["preds"]))
    assert math.isfinite(ev["loss"]) and (ev["loss"] > 0 or n == 0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    # the batch size only splits the work
    if n:
        assert torch.equal(evaluate(model, test, 7)["preds"], ev["preds"])
    # the confidence is the predicted class's softmax probability, one per image
    assert ev["confidence"].shape == (n,) and ev["confidence"].device.type == "cpu"
    if n:
        with torch.no_grad():
            probs = torch.softmax(model(test.x.float() / 255), 1)
        assert torch.allclose(ev["confidence"], probs.gather(1, ev["preds"][:, None])[:, 0],
                              atol=1e-5)


def test_balanced_accuracy_by_hand():
    from benchmark.metrics import balanced_accuracy

    y = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 0, 0])
    # recalls: class 0 2/3, class 1 1/2, class 2 0/1 -> (2/3 + 1/2 + 0) / 3 = 7/18
    assert balanced_accuracy(y, pred) == pytest.approx(7 / 18)
    # a class that is predicted but absent from y does not count
    assert balanced_accuracy(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 1, 1])) == \
        pytest.approx(0.75)
    assert balanced_accuracy(y, y) == 1.0
    assert balanced_accuracy(torch.tensor([], dtype=torch.long),
                             torch.tensor([], dtype=torch.long)) == 0.0


def test_balanced_accuracy_agrees_with_scikit_learn():
    from sklearn import metrics

    from benchmark.metrics import balanced_accuracy

    gen = torch.Generator().manual_seed(0)
    y = torch.randint(10, (500,), generator=gen)
    pred = torch.where(torch.rand(500, generator=gen) < 0.6, y,
                       torch.randint(10, (500,), generator=gen))
    assert balanced_accuracy(y, pred) == pytest.approx(
        metrics.balanced_accuracy_score(y.numpy(), pred.numpy()))


HAS_ACCELERATOR = torch.cuda.is_available() or torch.backends.mps.is_available()


@pytest.mark.skipif(HAS_ACCELERATOR, reason="auto picks the accelerator on this machine")
def test_auto_device_is_the_cpu_here():
    assert resolve_device("auto") == CPU
    assert resolve_device() == CPU


def test_cpu_is_always_there():
    assert resolve_device("cpu") == CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_absent_cuda_is_an_error_that_says_what_to_do():
    with pytest.raises(UserError, match="'cuda' is not available on this machine; use "
                                         "--device cpu"):
        resolve_device("cuda")


@pytest.mark.parametrize("name", ["tpu", "gpu", "CUDA", ""])
def test_unknown_device_names_the_choices(name):
    with pytest.raises(UserError, match="unknown device .*choose one of auto, cpu, cuda, mps"):
        resolve_device(name)


def test_a_late_learner_is_judged_by_its_final_weights(trained, learnable_split, monkeypatch):
    """The last epoch's running balanced accuracy is a lower bound; below the limit the final
    weights are evaluated on the training set, above it nothing is evaluated."""

    model, history, _ = trained
    train, _ = learnable_split
    late = [{**history[-1], "train_balanced_acc": 0.05}]  # as if it learned in its last steps
    final = train_mod.final_train_balanced_acc(model, train, late, 10, 64)
    assert final == evaluate(model, train, 64)["balanced_acc"] > 0.5
    assert train_mod.did_not_learn(final, evaluate(model, learnable_split[1])["preds"], 10) == ""
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    assert train_mod.final_train_balanced_acc(model, train, history, 10) == \
        history[-1]["train_balanced_acc"]


def test_did_not_learn_names_the_collapse():
    one_class = torch.full((100,), 3)
    assert did_not_learn(0.9, one_class, 10).startswith("collapsed: predicts class 3 for 100%")
    spread = torch.arange(100) % 10
    assert did_not_learn(0.12, spread, 10).startswith("did not learn: balanced training")
    assert did_not_learn(0.16, spread, 10) == ""  # 1.6x chance: it learned something
