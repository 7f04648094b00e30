"""The protocols (long-tail = step, exp), stratified selections and flip+noise oversampling.

The tests parametrized over VARIANTS.names() and REMEDIES.names() run for every entry, a new
one included."""

import pytest
import torch

from benchmark.data import DataError, Dataset
from benchmark.data.augment import REMEDIES, FlipNoise, NoAugment, batches, make_remedy
from benchmark.data.sampling import stratified_split, stratified_subset
from benchmark.data.variants import (
    VARIANTS,
    class_counts,
    exp_counts,
    exp_indices,
    exp_tail,
    long_tail_indices,
    make_variant,
    step_counts,
    variant_tail,
)

TAIL = (0, 1, 2, 3, 4)
# each variant's training counts per class from 50 images a class, tail 0..4, rho 10
# (a new variant adds its line here). exp: floor(50 * 10^(-i/9)) = floor of 50, 38.7, 29.97,
# 23.2, 17.95, 13.9, 10.8, 8.3, 6.5, 5.0
EXPECTED_COUNTS = {"balanced": [50] * 10, "long-tail": [5] * 5 + [50] * 5,
                   "exp": [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]}


def labels(per_class=100, classes=10):
    return torch.arange(classes).repeat_interleave(per_class)


def dataset(per_class=50):
    y = labels(per_class)
    x = torch.randint(0, 256, (len(y), 3, 32, 32), dtype=torch.uint8)
    return Dataset(x, y, x[:20], y[:20], tuple(f"c{i}" for i in range(10)), "synthetic", "d0")


def test_long_tail_counts_follow_the_reference_cut():
    idx = long_tail_indices(labels(100), tail_classes=(0, 1, 2, 3, 4), ratio=10, seed=0)
    assert class_counts(labels(100)[idx], 10) == [10] * 5 + [100] * 5


def test_the_protocols_counts_by_hand_at_rho_100():
    """n_max = 100, rho = 100, C = 10. step: the tail keeps 100 / 100 = 1. exp: class i keeps
    floor(100 * 100^(-i/9)) = floor(100 * 10^(-2i/9)): 100, 59.9, 35.9, 21.5, 12.9, 7.7, 4.6,
    2.8, 1.7, 1.0."""
    y = labels(100)
    step = long_tail_indices(y, tail_classes=TAIL, ratio=100, seed=0)
    assert class_counts(y[step], 10) == [1, 1, 1, 1, 1, 100, 100, 100, 100, 100]
    exp = exp_indices(y, ratio=100, seed=0)
    assert class_counts(y[exp], 10) == [100, 59, 35, 21, 12, 7, 4, 2, 1, 1]
    # Cao et al. 2019's CIFAR-10-LT: 5000 a class at rho = 100, their 12,406 images
    cifar = exp_counts([5000] * 10, 100)
    assert cifar == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] and sum(cifar) == 12406


def test_no_class_ends_with_no_image():
    # 5 a class at rho 100: exp's 5 * 100^(-i/9) is below 1 from class 3 on; step's 5 / 100 too
    assert exp_counts([5] * 10, 100) == [5, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    assert step_counts([5] * 10, TAIL, 100) == [1] * 5 + [5] * 5
    y = labels(3)
    for idx in (exp_indices(y, ratio=1e6, seed=0),
                long_tail_indices(y, tail_classes=TAIL, ratio=1e6, seed=0)):
        assert min(class_counts(y[idx], 10)) == 1


def test_exp_keeps_at_most_a_classs_own_images_and_rho_1_keeps_all():
    # 100 * 10^(-i/3) = 100, 46.4, 21.5, 10.0: class 1 has only 20
    assert exp_counts([100, 20, 100, 100], 10) == [100, 20, 21, 10]
    y = labels(30)
    assert torch.equal(exp_indices(y, ratio=1, seed=0), torch.arange(len(y)))
    assert torch.equal(long_tail_indices(y, tail_classes=TAIL, ratio=1, seed=0),
                       torch.arange(len(y)))


def test_a_ratio_below_one_is_refused():
    for select in (exp_indices, long_tail_indices):
        with pytest.raises(DataError, match="imbalance ratio must be >= 1"):
            select(labels(10), tail_classes=TAIL, ratio=0.5, seed=0)


@pytest.mark.parametrize("select", [long_tail_indices, exp_indices], ids=["step", "exp"])
def test_the_protocols_are_seeded_per_repetition(select):
    y = labels(100)
    a, b = (select(y, tail_classes=TAIL, ratio=10, seed=3) for _ in range(2))
    assert torch.equal(a, b)
    other = select(y, tail_classes=TAIL, ratio=10, seed=4)
    assert not torch.equal(a, other) and class_counts(y[a], 10) == class_counts(y[other], 10)


def test_long_tail_is_parametrised():
    y = labels(100)
    idx = long_tail_indices(y, tail_classes=(7, 9), ratio=4, seed=0)
    assert class_counts(y[idx], 10) == [100] * 7 + [25, 100, 25]


def test_exp_fixes_its_tail_and_oversampling_fills_it_to_the_largest_class():
    assert exp_tail(10) == (1, 2, 3, 4, 5, 6, 7, 8, 9)
    assert variant_tail("exp", TAIL, 10) == exp_tail(10)
    assert variant_tail("long-tail", (9, 7), 10) == variant_tail("balanced", (7, 9), 10) == (7, 9)
    with pytest.raises(DataError, match=r"variant exp fixes its tail as classes \[1, 2"):
        make_variant(dataset(), "exp", tail_classes=TAIL, ratio=100)
    y = labels(100)[exp_indices(labels(100), ratio=100, seed=0)]  # 242 images: 100 ... 1
    for name in ("oversample", "flip+noise"):
        aug = make_remedy(name, y, tail_classes=exp_tail(10), sigma=0.1, num_classes=10)
        assert aug.added == 1000 - 242
        plan = aug.plan(torch.Generator().manual_seed(0))
        assert class_counts(y[plan.index], 10) == [100] * 10


def test_variant_never_touches_the_test_set():
    data = dataset()
    cut = make_variant(data, "long-tail", seed=1, tail_classes=TAIL, ratio=10)
    assert torch.equal(cut.test_x, data.test_x) and torch.equal(cut.test_y, data.test_y)
    assert len(cut.train_y) == 5 * 5 + 5 * 50
    balanced = make_variant(data, "balanced", tail_classes=TAIL, ratio=10)
    assert balanced.train_y.shape == data.train_y.shape


# ---- every variant ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS.names())
def test_every_variant_cuts_the_training_set_only_and_as_expected(name):
    data = dataset()
    cut = make_variant(data, name, seed=1, tail_classes=variant_tail(name, TAIL, 10), ratio=10)
    assert torch.equal(cut.test_x, data.test_x) and torch.equal(cut.test_y, data.test_y)
    assert cut.train_y.dtype == torch.int64 and len(cut.train_y) == len(cut.train_x)
    assert 0 <= int(cut.train_y.min()) and int(cut.train_y.max()) < data.num_classes
    assert name in EXPECTED_COUNTS, f"add the expected counts of variant {name!r}"
    assert class_counts(cut.train_y, 10) == EXPECTED_COUNTS[name]


@pytest.mark.parametrize("name", VARIANTS.names())
def test_every_variant_selects_distinct_stored_images(name):
    y = labels(50)
    idx = VARIANTS[name](y, tail_classes=TAIL, ratio=10, seed=2)
    assert idx.dtype == torch.int64 and len(idx.unique()) == len(idx)
    assert 0 <= int(idx.min()) and int(idx.max()) < len(y)


@pytest.mark.parametrize("name", VARIANTS.names())
def test_every_variant_is_determined_by_its_seed(name):
    data = dataset()
    tail = variant_tail(name, TAIL, 10)
    a, b = (make_variant(data, name, seed=7, tail_classes=tail, ratio=3) for _ in range(2))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)


def test_bad_variant_and_tail_classes_are_refused():
    with pytest.raises(ValueError, match="unknown variant 'lt'; choose one of balanced, "
                                         "long-tail, exp"):
        make_variant(dataset(), "lt", tail_classes=TAIL, ratio=10)
    with pytest.raises(DataError, match=r"tail classes \[12\]"):
        make_variant(dataset(), "long-tail", tail_classes=(12,), ratio=10)


def test_stratified_subset_keeps_proportions():
    y = torch.cat([labels(100), torch.full((100,), 3)])  # class 3 twice as common
    idx = stratified_subset(y, 110, seed=0)
    assert class_counts(y[idx], 10) == [10, 10, 10, 20, 10, 10, 10, 10, 10, 10]


def test_stratified_split_is_disjoint_and_stratified():
    y = labels(50)
    train, val = stratified_split(y, 0.1, seed=0)
    assert not set(train.tolist()) & set(val.tolist())
    assert len(train) + len(val) == len(y)
    assert class_counts(y[val], 10) == [5] * 10


def test_flip_noise_balances_the_tail_and_stays_in_range():
    y = _long_tail_labels()
    aug = FlipNoise(y, tail_classes=(0, 1, 2, 3, 4), sigma=0.2)
    assert aug.added == 5 * 90
    gen = torch.Generator().manual_seed(0)
    plan = aug.plan(gen)
    assert class_counts(y[plan.index], 10) == [100] * 10
    assert int(plan.synthetic.sum()) == 450 and not plan.synthetic[: len(y)].any()
    assert (y[plan.index[plan.synthetic]] < 5).all()  # only tail images are copied
    x = torch.rand(len(plan.index), 3, 32, 32)
    out = aug.apply(x.clone(), int(plan.synthetic.sum()), gen)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[~plan.synthetic], x[~plan.synthetic])  # originals stay as they are
    assert not torch.equal(out[plan.synthetic], x[plan.synthetic])


def test_flip_noise_flips_about_half_without_noise():
    y = _long_tail_labels()
    aug = FlipNoise(y, tail_classes=TAIL, sigma=0.0)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1000, 3, 32, 32)
    out = aug.apply(x.clone(), 1000, gen)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.equal(out[~flipped], x[~flipped])
    assert 400 < int(flipped.sum()) < 600


def test_flip_noise_is_reproducible_from_the_generator():
    y = _long_tail_labels()
    aug = FlipNoise(y, tail_classes=TAIL, sigma=0.1)
    runs = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(5)
        plan = aug.plan(gen)
        runs.append((plan.index, aug.apply(torch.full((len(plan.index), 3, 4, 4), 0.5),
                                           int(plan.synthetic.sum()), gen)))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_an_epochs_batches_hold_the_shuffled_samples_with_the_added_copies_last():
    y = _long_tail_labels()
    aug = FlipNoise(y, tail_classes=TAIL, sigma=0.1)
    gen = torch.Generator().manual_seed(3)
    plan = aug.plan(gen)
    order = torch.randperm(len(plan.index), generator=gen)
    got = batches(plan, order, 64)
    assert len(got) == -(-len(order) // 64)
    for b, (idx, k) in enumerate(got):
        pick = order[b * 64:(b + 1) * 64]  # the same samples as the shuffled batch, reordered
        assert sorted(idx.tolist()) == sorted(plan.index[pick].tolist())
        assert k == int(plan.synthetic[pick].sum())
        # the last k are the batch's copies (tail images): its originals come first
        assert sorted(idx[len(idx) - k:].tolist()) == sorted(plan.index[pick][
            plan.synthetic[pick]].tolist())
    assert sum(k for _, k in got) == aug.added


def test_oversampling_a_balanced_set_adds_nothing_and_says_so():
    aug = make_remedy("flip+noise", labels(100), tail_classes=TAIL, sigma=0.05)
    assert aug.added == 0 and "adds nothing" in aug.note
    plan = aug.plan(torch.Generator().manual_seed(0))
    assert len(plan.index) == 1000 and not plan.synthetic.any()


# ---- every augmentation ----------------------------------------------------------------------

def _long_tail_labels() -> torch.Tensor:
    # 10 a tail class, 100 a head
    return labels(100)[long_tail_indices(labels(100), tail_classes=TAIL, ratio=10, seed=0)]


@pytest.mark.parametrize("name", REMEDIES.names())
def test_every_augmentation_plans_stored_images_and_keeps_the_originals(name):
    y = _long_tail_labels()
    aug = make_remedy(name, y, tail_classes=TAIL, sigma=0.1, num_classes=10)
    plan = aug.plan(torch.Generator().manual_seed(0))
    assert plan.index.dtype == torch.int64 and plan.synthetic.dtype == torch.bool
    assert plan.index.shape == plan.synthetic.shape == (len(y) + aug.added,)
    assert 0 <= int(plan.index.min()) and int(plan.index.max()) < len(y)
    assert sorted(plan.index[~plan.synthetic].tolist()) == list(range(len(y)))
    assert isinstance(aug.note, str) and aug.note


@pytest.mark.parametrize("name", REMEDIES.names())
def test_every_augmentation_stays_in_the_pixel_range(name):
    y = _long_tail_labels()
    aug = make_remedy(name, y, tail_classes=TAIL, sigma=0.5, num_classes=10)
    gen = torch.Generator().manual_seed(1)
    plan = aug.plan(gen)
    x = torch.rand(len(plan.index), 3, 8, 8, generator=torch.Generator().manual_seed(2))
    out = aug.apply(x.clone(), int(plan.synthetic.sum()), gen)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out[~plan.synthetic], x[~plan.synthetic])  # originals as they are


@pytest.mark.parametrize("name", REMEDIES.names())
def test_every_augmentation_is_determined_by_its_generator(name):
    y = _long_tail_labels()
    aug = make_remedy(name, y, tail_classes=TAIL, sigma=0.1, num_classes=10)
    runs = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(5)
        plan = aug.plan(gen)
        x = torch.full((len(plan.index), 3, 4, 4), 0.5)
        runs.append((plan.index, plan.synthetic, aug.apply(x, int(plan.synthetic.sum()), gen)))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_unknown_remedy_and_negative_sigma_are_refused():
    with pytest.raises(ValueError, match="unknown remedy 'mixup'; choose one of none, "
                                         r"oversample, flip\+noise, reweight"):
        make_remedy("mixup", labels(10))
    with pytest.raises(DataError, match="sigma must be >= 0"):
        make_remedy("flip+noise", labels(10), tail_classes=TAIL, sigma=-1.0)
    assert isinstance(make_remedy("none", labels(10)), NoAugment)


def test_only_the_balanced_variant_says_it_cuts_no_class():
    # the cell's per-class figure reads it: "tail class (not cut here)" on a balanced set
    assert {name: VARIANTS.meta(name).get("cuts", True) for name in VARIANTS.names()} == {
        "balanced": False, "long-tail": True, "exp": True}
