"""The loss-based remedies: each loss against a value computed by hand on a two-class example,
the generated tests over LOSSES and REMEDIES, and every remedy trained end to end by `fit`.

The hand values are written out with `math` from the papers' formulas, not by the code."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import learnable_images

from benchmark.cells import Cell
from benchmark.data.augment import REMEDIES, NoAugment, make_remedy
from benchmark.data.variants import long_tail_indices
from benchmark.losses import LOSSES, CrossEntropy, class_balanced_weights, make_loss
from benchmark.models import NormedLinear, cosine_head, create_model
from benchmark.packed import Member, fit_packed
from benchmark.train import Split, build_model, fit
from studies.space import searched

CPU = torch.device("cpu")
COUNTS = torch.tensor([1, 3])  # class 0 the tail (1 image), class 1 the head (3)
Y = torch.tensor([0, 1])  # one sample of each class


def _value(loss, logits, epoch=1, epochs=1) -> float:
    return loss(torch.tensor(logits, dtype=torch.float32), Y, epoch, epochs).item()


# ---- each loss by hand ----------------------------------------------------------------------

def test_class_balanced_weights_by_hand():
    # beta 0.5: w_0 = 0.5 / (1 - 0.5) = 1, w_1 = 0.5 / (1 - 0.125) = 4/7; sum to 2 = C
    w = class_balanced_weights(COUNTS, 0.5)
    assert w.tolist() == pytest.approx([2 * 1 / (11 / 7), 2 * (4 / 7) / (11 / 7)])  # 14/11, 8/11
    assert class_balanced_weights(COUNTS, 0.0).tolist() == [1.0, 1.0]  # beta 0: no reweighting
    # beta -> 1: the weights go as 1 / n_c (here 3 : 1)
    w = class_balanced_weights(COUNTS, 1 - 1e-9)
    assert (w[0] / w[1]).item() == pytest.approx(3.0, rel=1e-6)


def test_class_balanced_loss_by_hand():
    # logits (0, 0) -> target 0: loss log 2; (0, log 3) -> target 1: p = 3/4, loss log 4/3;
    # weighted mean with w = (14/11, 8/11): (14 log 2 + 8 log 4/3) / 22
    loss = make_loss("class-balanced", COUNTS, beta=0.5)
    got = _value(loss, [[0.0, 0.0], [0.0, math.log(3)]])
    assert got == pytest.approx((14 * math.log(2) + 8 * math.log(4 / 3)) / 22, rel=1e-6)


def test_logit_adjusted_loss_by_hand():
    # prior pi = (1/4, 3/4); logits (0, 0) for both samples
    # tau 1: softmax of log pi is pi: losses log 4 and log 4/3
    loss = make_loss("logit-adjusted", COUNTS)
    assert loss.params == {"tau": 1.0}
    got = _value(loss, [[0.0, 0.0], [0.0, 0.0]])
    assert got == pytest.approx((math.log(4) + math.log(4 / 3)) / 2, rel=1e-6)
    # tau 2: softmax of 2 log pi is pi^2 normalised, (1/16, 9/16) / (10/16): log 10, log 10/9
    got = _value(make_loss("logit-adjusted", COUNTS, tau=2.0), [[0.0, 0.0], [0.0, 0.0]])
    assert got == pytest.approx((math.log(10) + math.log(10 / 9)) / 2, rel=1e-6)
    # tau 0 is plain cross-entropy
    got = _value(make_loss("logit-adjusted", COUNTS, tau=0.0), [[0.0, 0.0], [0.0, 0.0]])
    assert got == pytest.approx(math.log(2), rel=1e-6)


def test_balanced_softmax_by_hand_and_as_logit_adjustment_at_tau_one():
    # logits (log 2, 0) + log n = (log 2, log 3): p_0 = 2/5, loss log 5/2;
    # logits (0, 0) + log n = (0, log 3): p_1 = 3/4, loss log 4/3
    loss = make_loss("balanced-softmax", COUNTS)
    got = _value(loss, [[math.log(2), 0.0], [0.0, 0.0]])
    assert got == pytest.approx((math.log(5 / 2) + math.log(4 / 3)) / 2, rel=1e-6)
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 1, 0, 1, 1])
    adjusted = make_loss("logit-adjusted", COUNTS, tau=1.0)
    assert loss(z, y).item() == pytest.approx(adjusted(z, y).item(), rel=1e-6)


def test_ldam_margins_and_loss_by_hand():
    counts = torch.tensor([1, 16])  # n^(-1/4) = 1, 1/2: margins (0.5, 0.25) with max 0.5
    loss = make_loss("ldam-drw", counts, s=2.0, beta=0.5)
    assert loss.margins(torch.zeros(1, 2)).tolist() == pytest.approx([0.5, 0.25])
    # the logits are the head's s * cos; cos (0, 0), target 0: s * (0 - 0.5, 0) = (-1, 0),
    # loss log(1 + e); target 1: s * (0, 0 - 0.25) = (0, -0.5), loss log(1 + e^0.5)
    l0, l1 = math.log(1 + math.e), math.log(1 + math.exp(0.5))
    assert _value(loss, [[0.0, 0.0], [0.0, 0.0]], epoch=8, epochs=10) == pytest.approx(
        (l0 + l1) / 2, rel=1e-6)
    # cos (0.5, 0.25), logits s * cos = (1, 0.5): target 0: (1 - 1, 0.5) = (0, 0.5),
    # loss log(1 + e^0.5); target 1: (1, 0.5 - 0.5) = (1, 0), loss log(1 + e)
    assert _value(loss, [[1.0, 0.5], [1.0, 0.5]], epoch=8, epochs=10) == pytest.approx(
        (l1 + l0) / 2, rel=1e-6)
    # epochs 9 and 10 of 10 (the last 20%) are re-weighted by beta 0.5 class-balanced weights:
    # raw w = (0.5 / 0.5, 0.5 / (1 - 0.5^16)) = (1, 32768/65535), so the weighted mean is
    # (65535 l0 + 32768 l1) / (65535 + 32768) whatever they are scaled to
    assert _value(loss, [[0.0, 0.0], [0.0, 0.0]], epoch=9, epochs=10) == pytest.approx(
        (65535 * l0 + 32768 * l1) / 98303, rel=1e-6)


def test_ldam_defers_reweighting_to_the_last_fifth_as_cao_et_al():
    loss = make_loss("ldam-drw", COUNTS)
    assert loss.params == {"max_margin": 0.5, "s": 30.0, "beta": 0.9999, "defer": 0.8}
    # their 200-epoch schedule: epochs 0..159 (0-based) plain, 160..199 re-weighted
    assert [e for e in range(1, 201) if loss.reweights(e, 200)] == list(range(161, 201))
    assert [loss.reweights(e, 5) for e in range(1, 6)] == [False] * 4 + [True]
    # CIFAR-10-LT's step cut (5000 head, 500 tail): the head's margin is 0.5 * 10^(-1/4)
    margins = make_loss("ldam-drw", torch.tensor([500, 5000])).margins(torch.zeros(1, 2))
    assert margins.tolist() == pytest.approx([0.5, 0.5 * 10 ** -0.25])


def test_a_class_without_images_counts_as_one_and_unlabelled_classes_are_padded():
    # labels name classes 0 and 1 only; the logits have 3 columns: class 2 counts as 1 image
    loss = make_loss("balanced-softmax", torch.tensor([1, 3]))
    z = torch.zeros(1, 3)
    # (0, 0, 0) + log (1, 3, 1): p_0 = 1 / 5
    assert loss(z, torch.tensor([0])).item() == pytest.approx(math.log(5), rel=1e-6)
    with_zero = make_loss("logit-adjusted", torch.tensor([1, 0, 3]))
    assert math.isfinite(with_zero(z, torch.tensor([0])).item())


def test_an_unknown_loss_parameter_is_refused():
    with pytest.raises(ValueError, match="takes no parameter.*gamma; it takes beta"):
        make_loss("class-balanced", COUNTS, gamma=2.0)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        make_loss("focal", COUNTS)


# ---- every loss -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_a_finite_fp32_scalar_that_rewards_the_true_class(name):
    loss = make_loss(name, torch.tensor([2, 5, 40]))
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)).bfloat16()
    z.requires_grad_(True)
    y = torch.tensor([0, 1, 2, 0])
    for epoch in (1, 10):  # before and after ldam-drw's deferral
        out = loss(z, y, epoch, 10)
        assert out.shape == () and out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    raised = z.detach().float().clone()
    raised[torch.arange(4), y] += 1.0  # every sample more sure of its true class
    assert loss(raised, y, 10, 10).item() < loss(z.detach().float(), y, 10, 10).item()


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_declares_its_parameters_with_a_default_in_range(name):
    cls = LOSSES[name]
    assert cls.plain == (name == "cross-entropy")
    for param, t in cls.tunable.items():
        assert t.low <= t.default <= t.high and t.low < t.high and t.unit, param
        assert not t.log or t.low > 0, param
    assert make_loss(name, COUNTS).params == {k: t.default for k, t in cls.tunable.items()}


# ---- the remedies (the augment axis) --------------------------------------------------------

def _remedy(name, labels, **kw):
    return make_remedy(name, labels, tail_classes=(0,), sigma=0.1, num_classes=3, **kw)


@pytest.mark.parametrize("name", REMEDIES.names())
def test_every_remedy_has_a_loss_and_says_what_it_does(name):
    remedy = _remedy(name, torch.tensor([0, 1, 1, 1, 2, 2, 2]))
    assert isinstance(remedy.loss, CrossEntropy) and remedy.name == name
    assert remedy.loss.counts.tolist() == [1.0, 3.0, 3.0]  # before any oversampling
    assert type(remedy.loss) is LOSSES[remedy.loss_name]
    meta = REMEDIES.meta(name)
    assert meta["oversamples"] == (remedy.added > 0)  # one tail image short of the head's 3
    cell = Cell("cnn", "long-tail", name, epochs=1)
    assert cell.oversamples == meta["oversamples"] and cell.uses_sigma == meta["sigma"]
    assert [p.name for p in searched(cell)] == (["lr"] + (["sigma"] if meta["sigma"] else [])
                                                + list(meta.get("tuned", ())))
    # the cell's loss fields reach the loss, under the loss's own names
    fields = meta.get("loss_params", {})
    assert set(remedy.loss.params) == set(fields.values())
    assert cell.loss_params == {param: getattr(cell, f) for f, param in fields.items()}
    # and a cell's own value is the one trained with
    for field, param in fields.items():
        changed = dataclasses.replace(cell, **{field: getattr(cell, field) * 0.5})
        built = make_remedy(name, torch.tensor([0, 1, 1, 1, 2, 2, 2]), num_classes=3,
                             **changed.remedy_kwargs())
        assert built.loss.params[param] == getattr(cell, field) * 0.5


def test_the_cells_loss_defaults_are_the_losses_and_the_papers():
    # Cui et al.'s best CIFAR beta 0.9999, Menon et al.'s tau 1, Cao et al.'s 0.5, 30, 0.8
    cell = Cell("cnn", "long-tail", "none", epochs=1)
    assert (cell.cb_beta, cell.la_tau, cell.ldam_margin, cell.ldam_s, cell.drw_defer) == (
        0.9999, 1.0, 0.5, 30.0, 0.8)
    for name in REMEDIES.names():
        loss = LOSSES[REMEDIES[name].loss_name]
        for field, param in REMEDIES.meta(name).get("loss_params", {}).items():
            assert loss.tunable[param].default == getattr(cell, field), (name, field)


def test_oversample_repeats_tail_images_as_they_are():
    # class 0 has 1 image (index 4), the head classes 1 and 2 have 3 and 5: mean 4, so 3 copies
    labels = torch.tensor([1, 1, 1, 2, 0, 2, 2, 2, 2])
    remedy = _remedy("oversample", labels)
    assert remedy.added == 3 and "adds 3 images per epoch to reach 4" in remedy.note
    plan = remedy.plan(torch.Generator().manual_seed(0))
    assert plan.index.tolist() == list(range(9)) + [4, 4, 4]
    assert plan.synthetic.tolist() == [False] * 9 + [True] * 3
    x = torch.rand(12, 3, 4, 4)
    assert torch.equal(remedy.apply(x.clone(), 3, torch.Generator()), x)  # no flip, no noise
    assert remedy.loss_name == "cross-entropy"


def test_fit_passes_the_epoch_to_the_remedys_loss():
    seen = []

    class Spy(NoAugment):
        def __init__(self, labels):
            super().__init__(labels)
            inner = self.loss
            self.loss = lambda z, y, epoch, epochs: seen.append((epoch, epochs)) or inner(z, y)

    x, y = learnable_images(20, 0)
    split = Split(torch.from_numpy(x), torch.from_numpy(y))
    fit(build_model("cnn", 10, 0, CPU), split, split, epochs=3, batch_size=10, augment=Spy(split.y))
    assert seen == [(1, 3), (1, 3), (2, 3), (2, 3), (3, 3), (3, 3)]


@pytest.fixture(scope="module")
def long_tail_split() -> Split:
    x, y = learnable_images(200, 0)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    keep = long_tail_indices(y, tail_classes=(0, 1, 2, 3, 4), ratio=5, seed=0)
    return Split(x[keep], y[keep])  # 4 images of each tail class, 20 of each head class


@pytest.mark.parametrize("name", REMEDIES.names())
def test_every_remedy_trains_end_to_end(name, long_tail_split):
    remedy = make_remedy(name, long_tail_split.y, tail_classes=(0, 1, 2, 3, 4), sigma=0.05,
                          num_classes=10)
    # ldam-drw's network has a cosine head (s * cos): the same lr as the others trains it
    model = build_model("cnn", 10, 0, CPU, remedy.cosine_scale)
    assert isinstance(model[-1], NormedLinear) == (name == "ldam-drw")
    before = [p.detach().clone() for p in model.parameters()]
    history = fit(model, long_tail_split, long_tail_split, epochs=3, batch_size=16, lr=0.05,
                  augment=remedy)
    assert len(history) == 3 and all(math.isfinite(m["train_loss"]) for m in history)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    # it learns: the plain cross-entropy on its own training images (fit's "test" here) falls
    # (seen: by 0.01 for ldam-drw, 0.03-0.3 for the others, in 3 epochs)
    assert history[-1]["test_loss"] < history[0]["test_loss"]
    # train_loss is the remedy's own loss: plain cross-entropy only for the plain ones
    with torch.no_grad():
        z = model(long_tail_split.x[:8].float() / 255)
    y = long_tail_split.y[:8]
    assert torch.isclose(remedy.loss(z, y, 3, 3), F.cross_entropy(z, y)).item() == \
        remedy.loss.plain


def test_packed_training_refuses_a_remedy_with_its_own_loss(long_tail_split):
    remedy = make_remedy("reweight", long_tail_split.y, num_classes=10)
    member = Member(long_tail_split, long_tail_split, seed=0, augment=remedy)
    with pytest.raises(ValueError, match="remedy reweight trains with its own loss"):
        fit_packed("cnn", [build_model("cnn", 10, 0, CPU)], [member], epochs=1)


def test_the_cosine_head_is_scale_times_cosine_on_every_model():
    head = NormedLinear(2, 2, scale=30.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))  # unit: (1, 0), (1, 1)/sqrt 2
    # x = (3, 4): unit (0.6, 0.8); cosines 0.6 and (0.6 + 0.8) / sqrt 2
    got = head(torch.tensor([[3.0, 4.0]]))
    assert got.tolist()[0] == pytest.approx([18.0, 30 * 1.4 / math.sqrt(2)], rel=1e-6)
    for name in ("cnn", "rnn", "resnet32"):
        model = cosine_head(create_model(name, 10), 30.0)
        heads = [m for m in model.modules() if isinstance(m, NormedLinear)]
        assert len(heads) == 1 and not any(isinstance(m, torch.nn.Linear)
                                           and m.out_features == 10 for m in model.modules())
        out = model(torch.rand(2, 3, 32, 32))
        assert out.shape == (2, 10) and out.abs().max().item() <= 30.0 + 1e-4
