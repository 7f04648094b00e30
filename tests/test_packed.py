"""benchmark.packed: K trainings as one vmapped model end where K `fit` calls end.

Tolerance: packed and unbatched runs differ only in summation order (a conv with K groups,
a batched matmul, against K separate ones), so each SGD step's weights differ by a few fp32
ulps and the difference grows slowly over the steps. After 2 epochs of 8 steps the weights
measured 1e-8 apart (weights of size ~0.1, fp32 eps 1.2e-7); `atol=1e-6` leaves 100x for
other CPUs' kernels while a real difference is far above it: one member trained with the
other's learning rate moves the weights by ~3e-2
(`test_the_tolerance_separates_a_swapped_learning_rate` shows it).
"""

from __future__ import annotations

import pytest
import torch

from benchmark.data.augment import FlipNoise
from benchmark.packed import Member, Packed, check_packable, fit_packed
from benchmark.train import Diverged, Split, build_model, fit

CPU = torch.device("cpu")
ATOL = 1e-6
RECIPE = {"epochs": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def data(learnable_split):
    train, test = learnable_split
    return Split(train.x[:64], train.y[:64]), Split(test.x[:24], test.y[:24])


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _without_seconds(history):
    return [{k: v for k, v in m.items() if not k.endswith("seconds")} for m in history]


def _alone(name, data, seed, lr, augment=None, **sgd):
    model = build_model(name, 10, seed, CPU)
    history = fit(model, *data, seed=seed, lr=lr, augment=augment, **sgd, **RECIPE)
    return model, history


def _packed(name, data, seeds, lrs, augments=None, **sgd):
    models = [build_model(name, 10, s, CPU) for s in seeds]
    members = [Member(*data, seed=s, lr=lr, augment=a) for s, lr, a in
               zip(seeds, lrs, augments or [None] * len(seeds), strict=True)]
    return models, fit_packed(name, models, members, **sgd, **RECIPE)


def _assert_same(alone, packed):
    (model, history), (twin, result) = alone, packed
    torch.testing.assert_close(_weights(twin), _weights(model), atol=ATOL, rtol=0)
    assert result.diverged is None and len(result.history) == len(history)
    for ours, theirs in zip(_without_seconds(result.history), _without_seconds(history),
                            strict=True):
        assert set(ours) == set(theirs)
        assert ours == pytest.approx(theirs, abs=1e-5)


@pytest.mark.parametrize("name", ["cnn", "rnn"])
def test_two_packed_models_end_where_two_fits_end(name, data):
    seeds, lrs = [0, 1], [0.05, 0.02]  # each its own weights, batch order and lr
    models, results = _packed(name, data, seeds, lrs)
    for seed, lr, twin, result in zip(seeds, lrs, models, results, strict=True):
        _assert_same(_alone(name, data, seed, lr), (twin, result))


def test_one_packed_model_ends_where_fit_ends_with_momentum_decay_and_oversampling(data):
    train, test = data
    # a long tail: every 4th image of classes 0-4, all of 5-9; flip+noise fills the tail up
    keep = torch.cat([torch.nonzero(train.y >= 5).flatten(),
                      torch.nonzero(train.y < 5).flatten()[::4]])
    data = (Split(train.x[keep], train.y[keep]), test)

    def flip_noise():
        return FlipNoise(data[0].y, tail_classes=range(5), sigma=0.1, num_classes=10)

    assert flip_noise().added > 0
    # momentum 0.5, not 0.9: at 0.9 and lr 0.05 this fit amplifies rounding so much that
    # fit itself with NCHW instead of NHWC weights ends 1e-3 away (measured): no tolerance
    # would then tell rounding from a mistake. lr 0.02, not 0.05: on an Intel Xeon with AMX,
    # at 0.05 seed 3 alone ended 3e-4 away (seed 4: 3e-8; each of momentum, decay and
    # oversampling dropped: 2e-8), one rounding difference amplified, not a mistake
    sgd = {"momentum": 0.5, "weight_decay": 5e-3}
    alone = _alone("cnn", data, 3, 0.02, flip_noise(), **sgd)
    models, results = _packed("cnn", data, [3], [0.02], [flip_noise()], **sgd)
    _assert_same(alone, (models[0], results[0]))


def test_the_tolerance_separates_a_swapped_learning_rate(data):
    """The test above can fail: packed with the lrs swapped, each model is far from its fit."""
    models, _ = _packed("cnn", data, [0, 1], [0.02, 0.05])
    alone, _ = _alone("cnn", data, 0, 0.05)
    gap = (_weights(models[0]) - _weights(alone)).abs().max().item()
    assert gap > 100 * ATOL


def test_models_that_cannot_pack_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="resnet50 cannot be trained packed: its BatchNorm"):
        check_packable("resnet50")
    with pytest.raises(ValueError, match="BatchNorm"):
        Packed("resnet50", [build_model("resnet50", 10, 0, CPU)], [0.01], 0.0, 0.0)


def test_members_with_epochs_of_different_lengths_are_refused(data):
    train, test = data
    short = Split(train.x[:40], train.y[:40])
    models = [build_model("cnn", 10, s, CPU) for s in (0, 1)]
    with pytest.raises(ValueError, match="epochs of one length"):
        fit_packed("cnn", models, [Member(train, test, 0), Member(short, test, 1)],
                   **RECIPE)


def test_a_member_that_diverges_leaves_the_other_as_fit_leaves_it(data):
    """Its losses are NaN, but model k's gradient comes from loss k alone: the other member
    still ends where its own fit ends, and the diverged one gets fit's Diverged."""
    with pytest.raises(Diverged) as alone_diverged:
        _alone("cnn", data, 1, 1e4)
    models, results = _packed("cnn", data, [0, 1], [0.05, 1e4])
    _assert_same(_alone("cnn", data, 0, 0.05), (models[0], results[0]))
    assert results[1].diverged is not None
    assert results[1].diverged.epoch == alone_diverged.value.epoch
    assert len(results[1].history) == alone_diverged.value.epoch - 1
