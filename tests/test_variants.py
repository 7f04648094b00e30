"""Long-tail variant, stratified selections and flip+noise oversampling.

The tests parametrized over VARIANTS.names() and AUGMENTS.names() run for every entry, a new
one included."""

import pytest
import torch

from benchmark.data import DataError, Dataset
from benchmark.data.augment import AUGMENTS, FlipNoise, NoAugment, batches, make_augment
from benchmark.data.sampling import stratified_split, stratified_subset
from benchmark.data.variants import VARIANTS, class_counts, long_tail_indices, make_variant

TAIL = (0, 1, 2, 3, 4)
# each variant's training counts per class from 50 images a class, tail 0..4, fraction 0.1
# (a new variant adds its line here)
EXPECTED_COUNTS = {"balanced": [50] * 10, "long-tail": [5] * 5 + [50] * 5}


def labels(per_class=100, classes=10):
    return torch.arange(classes).repeat_interleave(per_class)


def dataset(per_class=50):
    y = labels(per_class)
    x = torch.randint(0, 256, (len(y), 3, 32, 32), dtype=torch.uint8)
    return Dataset(x, y, x[:20], y[:20], tuple(f"c{i}" for i in range(10)), "synthetic", "d0")


def test_long_tail_counts_follow_the_reference_cut():
    idx = long_tail_indices(labels(100), tail_classes=(0, 1, 2, 3, 4), fraction=0.1, seed=0)
    assert class_counts(labels(100)[idx], 10) == [10] * 5 + [100] * 5


def test_long_tail_is_seeded_and_parametrised():
    y = labels(100)
    a, b = (long_tail_indices(y, tail_classes=TAIL, fraction=0.1, seed=3) for _ in range(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, long_tail_indices(y, tail_classes=TAIL, fraction=0.1, seed=4))
    idx = long_tail_indices(y, tail_classes=(7, 9), fraction=0.25, seed=0)
    assert class_counts(y[idx], 10) == [100] * 7 + [25, 100, 25]


def test_variant_never_touches_the_test_set():
    data = dataset()
    cut = make_variant(data, "long-tail", seed=1, tail_classes=TAIL, fraction=0.1)
    assert torch.equal(cut.test_x, data.test_x) and torch.equal(cut.test_y, data.test_y)
    assert len(cut.train_y) == 5 * 5 + 5 * 50
    balanced = make_variant(data, "balanced", tail_classes=TAIL, fraction=0.1)
    assert balanced.train_y.shape == data.train_y.shape


# ---- every variant ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS.names())
def test_every_variant_cuts_the_training_set_only_and_as_expected(name):
    data = dataset()
    cut = make_variant(data, name, seed=1, tail_classes=TAIL, fraction=0.1)
    assert torch.equal(cut.test_x, data.test_x) and torch.equal(cut.test_y, data.test_y)
    assert cut.train_y.dtype == torch.int64 and len(cut.train_y) == len(cut.train_x)
    assert 0 <= int(cut.train_y.min()) and int(cut.train_y.max()) < data.num_classes
    assert name in EXPECTED_COUNTS, f"add the expected counts of variant {name!r}"
    assert class_counts(cut.train_y, 10) == EXPECTED_COUNTS[name]


@pytest.mark.parametrize("name", VARIANTS.names())
def test_every_variant_selects_distinct_stored_images(name):
    y = labels(50)
    idx = VARIANTS[name](y, tail_classes=TAIL, fraction=0.1, seed=2)
    assert idx.dtype == torch.int64 and len(idx.unique()) == len(idx)
    assert 0 <= int(idx.min()) and int(idx.max()) < len(y)


@pytest.mark.parametrize("name", VARIANTS.names())
def test_every_variant_is_determined_by_its_seed(name):
    data = dataset()
    a, b = (make_variant(data, name, seed=7, tail_classes=TAIL, fraction=0.3) for _ in range(2))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)


def test_bad_variant_and_tail_classes_are_refused():
    with pytest.raises(ValueError, match="unknown variant 'lt'; choose one of balanced, "
                                         "long-tail"):
        make_variant(dataset(), "lt", tail_classes=TAIL, fraction=0.1)
    with pytest.raises(DataError, match=r"tail classes \[12\]"):
        make_variant(dataset(), "long-tail", tail_classes=(12,), fraction=0.1)


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
    aug = make_augment("flip+noise", labels(100), tail_classes=TAIL, sigma=0.05)
    assert aug.added == 0 and "adds nothing" in aug.note
    plan = aug.plan(torch.Generator().manual_seed(0))
    assert len(plan.index) == 1000 and not plan.synthetic.any()


# ---- every augmentation ----------------------------------------------------------------------

def _long_tail_labels() -> torch.Tensor:
    # 10 a tail class, 100 a head
    return labels(100)[long_tail_indices(labels(100), tail_classes=TAIL, fraction=0.1,
                                         seed=0)]


@pytest.mark.parametrize("name", AUGMENTS.names())
def test_every_augmentation_plans_stored_images_and_keeps_the_originals(name):
    y = _long_tail_labels()
    aug = make_augment(name, y, tail_classes=TAIL, sigma=0.1, num_classes=10)
    plan = aug.plan(torch.Generator().manual_seed(0))
    assert plan.index.dtype == torch.int64 and plan.synthetic.dtype == torch.bool
    assert plan.index.shape == plan.synthetic.shape == (len(y) + aug.added,)
    assert 0 <= int(plan.index.min()) and int(plan.index.max()) < len(y)
    assert sorted(plan.index[~plan.synthetic].tolist()) == list(range(len(y)))
    assert isinstance(aug.note, str) and aug.note


@pytest.mark.parametrize("name", AUGMENTS.names())
def test_every_augmentation_stays_in_the_pixel_range(name):
    y = _long_tail_labels()
    aug = make_augment(name, y, tail_classes=TAIL, sigma=0.5, num_classes=10)
    gen = torch.Generator().manual_seed(1)
    plan = aug.plan(gen)
    x = torch.rand(len(plan.index), 3, 8, 8, generator=torch.Generator().manual_seed(2))
    out = aug.apply(x.clone(), int(plan.synthetic.sum()), gen)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out[~plan.synthetic], x[~plan.synthetic])  # originals as they are


@pytest.mark.parametrize("name", AUGMENTS.names())
def test_every_augmentation_is_determined_by_its_generator(name):
    y = _long_tail_labels()
    aug = make_augment(name, y, tail_classes=TAIL, sigma=0.1, num_classes=10)
    runs = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(5)
        plan = aug.plan(gen)
        x = torch.full((len(plan.index), 3, 4, 4), 0.5)
        runs.append((plan.index, plan.synthetic, aug.apply(x, int(plan.synthetic.sum()), gen)))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_unknown_augment_and_negative_sigma_are_refused():
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'; choose one of none, "
                                         r"oversample, flip\+noise, reweight"):
        make_augment("mixup", labels(10))
    with pytest.raises(DataError, match="sigma must be >= 0"):
        make_augment("flip+noise", labels(10), tail_classes=TAIL, sigma=-1.0)
    assert isinstance(make_augment("none", labels(10)), NoAugment)
