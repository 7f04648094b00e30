"""The remedies (the cell's `remedy` axis): what an epoch trains on, and with which loss.

A remedy is a sampler (`plan`: which stored images an epoch holds, added copies included;
`apply`: what is done to the copies) and a loss (`loss`, from benchmark.losses, built from
the training set's class counts before oversampling). `none` is the training set with plain
cross-entropy; `oversample` and `flip+noise` add tail copies (plain repeats; flipped and
noisy); `reweight`, `logit-adjust`, `balanced-softmax` and `ldam-drw` keep the set and change
the loss. (The axis was called `augment` until cell layout 4; the module keeps that name.)

Why oversampling draws fresh each epoch: the added images are new draws every epoch (a
different tail image, flip and noise), which is what oversampling by augmentation means, and
costs nothing extra: the draws are a few batched tensor ops on the device, with no per-image
Python and no second copy of the dataset in memory. The original images always stay in the set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from benchmark.data.dataset import DataError
from benchmark.losses import CrossEntropy, make_loss
from benchmark.registry import Registry


class EpochPlan(NamedTuple):
    index: torch.Tensor  # (M,) int64: which stored image each sample of the epoch starts from
    synthetic: torch.Tensor  # (M,) bool: whether that sample is an added, augmented copy


def batches(plan: EpochPlan, order: torch.Tensor, batch_size: int
            ) -> list[tuple[torch.Tensor, int]]:
    """The epoch's batches in `order` (a permutation of the plan): for each, the stored
    images' indices with the added copies last, and how many copies it holds. A batch is a
    set to SGD, so moving its copies to its end changes nothing but the summation order; it
    lets `apply` draw flips and noise for those rows alone. One host sync per epoch."""
    n = len(order)
    starts = range(0, n, batch_size)
    synthetic = plan.synthetic[order]
    if not plan.synthetic.any():  # nothing added: the order as it is
        return [(plan.index[order[s:s + batch_size]], 0) for s in starts]
    batch = torch.arange(n, device=order.device) // batch_size
    order = order[torch.sort(batch * 2 + synthetic.long(), stable=True).indices]
    counts = torch.bincount(batch, weights=synthetic.float(), minlength=len(starts))
    return [(plan.index[order[s:s + batch_size]], int(k))
            for s, k in zip(starts, counts.long().tolist(), strict=True)]


# A remedy is a class built from (labels, tail_classes=, sigma=, loss_params=, num_classes=);
# the tail classes, sigma and the loss's parameters are the cell's (Cell.remedy_kwargs()),
# with no defaults here. Metadata: oversamples=True when it adds copies of tail images,
# sigma=True when it reads Cell.sigma (what the search space tunes it for), loss_params:
# {Cell field: the loss's parameter} it reads, tuned: those of them its study searches (the
# one the paper tunes; the rest stay at the cell's value).
REMEDIES: Registry[type[NoAugment]] = Registry("remedy")


@REMEDIES.register("none", oversamples=False, sigma=False)
class NoAugment:
    """The training set as it is, with plain cross-entropy."""

    name = "none"
    loss_name = "cross-entropy"  # an entry of benchmark.losses.LOSSES
    added = 0
    note = "no augmentation"
    cosine_scale = 0.0  # > 0: the network's head is a cosine classifier of this scale


    def __init__(self, labels: torch.Tensor, *, num_classes: int | None = None, **_):
        self.n = len(labels)
        counts = torch.bincount(labels.cpu(), minlength=num_classes or 0)
        self.loss: CrossEntropy = make_loss(self.loss_name, counts)

    def plan(self, gen: torch.Generator) -> EpochPlan:
        device = gen.device
        return EpochPlan(torch.arange(self.n, device=device),
                         torch.zeros(self.n, dtype=torch.bool, device=device))

    def apply(self, x: torch.Tensor, synthetic: int, gen: torch.Generator) -> torch.Tensor:
        """The batch `x` (B, C, H, W) floats in [0, 1] whose last `synthetic` rows are added
        copies, with those rows augmented (the originals as they are)."""
        return x


@REMEDIES.register("oversample", oversamples=True, sigma=False)
class Oversample(NoAugment):
    """Random oversampling: each tail class is filled up to the head classes' mean count with
    random images of its class, repeated as they are (the control for flip+noise: what
    repeating tail images does without altering them). Under long-tail the head keeps every
    image, so the target is n_max; under exp the tail is every class but class 0 (the
    variant fixes it), so each class is filled up to class 0's n_max and the epoch is
    balanced."""

    name = "oversample"

    def __init__(self, labels: torch.Tensor, *, tail_classes: Sequence[int],
                 num_classes: int | None = None, **_):
        super().__init__(labels, num_classes=num_classes)
        counts = torch.bincount(labels.cpu(), minlength=num_classes or 0)
        head = [c for c in range(len(counts)) if c not in tail_classes and counts[c] > 0]
        target = round(counts[head].float().mean().item()) if head else 0
        # (class members, how many copies to add) for each tail class short of the target
        self.pools = [(torch.nonzero(labels == c).flatten(), target - int(counts[c]))
                      for c in tail_classes if 0 < counts[c] < target]
        self.added = sum(k for _, k in self.pools)
        self.note = (f"{self.name} adds {self.added} images per epoch to reach {target} per "
                     "tail class" if self.added else
                     f"{self.name} adds nothing: the tail classes already match the head")

    def plan(self, gen: torch.Generator) -> EpochPlan:
        base = super().plan(gen)
        if not self.added:
            return base
        extra = [pool[torch.randint(len(pool), (k,), generator=gen, device=gen.device)
                      .to(pool.device)] for pool, k in self.pools]
        extra_idx = torch.cat(extra).to(gen.device)
        return EpochPlan(torch.cat([base.index, extra_idx]),
                         torch.cat([base.synthetic, torch.ones_like(extra_idx, dtype=torch.bool)]))


@REMEDIES.register("flip+noise", oversamples=True, sigma=True)
class FlipNoise(Oversample):
    """Oversample each tail class up to the head classes' mean count; every added image is a
    random image of its class, flipped left-right with probability 1/2, plus N(0, sigma^2)
    noise (sigma in units of the [0, 1] pixel range), clipped to [0, 1]."""

    name = "flip+noise"

    def __init__(self, labels: torch.Tensor, *, tail_classes: Sequence[int], sigma: float,
                 num_classes: int | None = None, **_):
        if not sigma >= 0:
            raise DataError(f"flip+noise sigma must be >= 0, got {sigma}")
        super().__init__(labels, tail_classes=tail_classes, num_classes=num_classes)
        self.sigma = float(sigma)

    def apply(self, x: torch.Tensor, synthetic: int, gen: torch.Generator) -> torch.Tensor:
        # flips and noise are drawn for the synthetic rows only (the batch's last ones), on
        # the device, in place: `x` is the batch's own fresh float copy
        if not synthetic:
            return x
        rows = x[len(x) - synthetic:]
        flip = torch.rand((synthetic, 1, 1, 1), generator=gen, device=x.device) < 0.5
        rows.copy_(torch.where(flip, rows.flip(-1), rows))
        noise = torch.randn(rows.shape, generator=gen, device=x.device, dtype=x.dtype)
        rows.add_(noise, alpha=self.sigma).clamp_(0, 1)
        return x


class LossRemedy(NoAugment):
    """The training set as it is, trained with the loss `loss_name` (see benchmark.losses)."""

    def __init__(self, labels: torch.Tensor, *, num_classes: int | None = None,
                 loss_params: dict[str, float] | None = None, **_):
        super().__init__(labels, num_classes=num_classes)
        counts = torch.bincount(labels.cpu(), minlength=num_classes or 0)
        self.loss = make_loss(self.loss_name, counts, **(loss_params or {}))
        params = ", ".join(f"{k} {v:g}" for k, v in self.loss.params.items())
        self.note = f"no oversampling; loss {self.loss_name}" + (f" ({params})" if params else "")


@REMEDIES.register("reweight", oversamples=False, sigma=False,
                   loss_params={"cb_beta": "beta"}, tuned=("cb_beta",))
class Reweight(LossRemedy):
    """Class-balanced loss by effective number (Cui et al. 2019): cross-entropy weighted by
    w_c = (1 - beta) / (1 - beta^n_c), summing to C."""

    name, loss_name = "reweight", "class-balanced"


@REMEDIES.register("logit-adjust", oversamples=False, sigma=False,
                   loss_params={"la_tau": "tau"}, tuned=("la_tau",))
class LogitAdjust(LossRemedy):
    """Logit-adjusted loss (Menon et al. 2021): cross-entropy of z_c + tau * log pi_c."""

    name, loss_name = "logit-adjust", "logit-adjusted"


@REMEDIES.register("balanced-softmax", oversamples=False, sigma=False)
class BalancedSoftmax(LossRemedy):
    """Balanced softmax (Ren et al. 2020): cross-entropy of z_c + log n_c."""

    name, loss_name = "balanced-softmax", "balanced-softmax"


@REMEDIES.register("ldam-drw", oversamples=False, sigma=False,
                   loss_params={"ldam_margin": "max_margin", "ldam_s": "s", "cb_beta": "beta",
                                "drw_defer": "defer"}, tuned=("ldam_margin",))
class LdamDrw(LossRemedy):
    """LDAM margins Delta_c = K / n_c^(1/4) on the cosine logits of a normalised head, scaled
    by s, with deferred class-balanced re-weighting over the last 20% of the epochs (Cao et al.
    2019). The network's last linear layer becomes a cosine classifier s * cos(x, w_c)
    (benchmark.models.cosine_head, their NormedLinear), as their code trains LDAM."""

    name, loss_name = "ldam-drw", "ldam-drw"

    def __init__(self, labels: torch.Tensor, **kwargs):
        super().__init__(labels, **kwargs)
        self.cosine_scale = self.loss.params["s"]
        self.note += "; cosine head"


def make_remedy(name: str, labels: torch.Tensor, **kwargs) -> NoAugment:
    """The remedy `name` for these training labels; an unknown name raises, listing the
    choices. Every remedy takes (labels, tail_classes=, sigma=, loss_params=, num_classes=),
    a cell's as `**cell.remedy_kwargs()`; give num_classes: without it a loss counts a class
    above the largest label as one image."""
    return REMEDIES[name](labels, **kwargs)
