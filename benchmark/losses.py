"""Training losses, the loss-based remedies for class imbalance: LOSSES[name](counts, **params).

A loss is built once per training set from its class counts n_c (C,) (the training set
after the variant's cut, before any oversampling), then called on every batch as
`loss(logits (B, C), targets (B,), epoch, epochs)` -> a scalar, epoch counted from 1 (only
ldam-drw reads it). Every loss computes in fp32 (the logits of a bf16 autocast are cast up).
The test loss of `evaluate` stays plain cross-entropy, so test losses compare across remedies.

A class with no training image counts as one image (n_c = max(n_c, 1)): its log-prior and
margin stay finite; no target is ever that class, so nothing else changes.

Each loss declares its parameters in `tunable` (name -> Tunable: the paper's default, a range
that makes sense, whether log-uniformly, the unit). A cell passes its own values: the Cell
fields cb_beta, la_tau, ldam_margin, ldam_s and drw_defer, mapped to these names by each
remedy's `loss_params` (benchmark.data.augment); studies/space.py searches the one each paper
tunes (beta for class-balanced, tau for logit adjustment, the margin for LDAM).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from benchmark.registry import Registry


class Tunable(NamedTuple):
    default: float
    low: float
    high: float
    log: bool
    unit: str


LOSSES: Registry[type[CrossEntropy]] = Registry("loss")


def class_balanced_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al. 2019's weights by effective number of samples: w_c = (1 - beta) /
    (1 - beta^n_c), scaled so they sum to C. beta = 0 gives 1 each; beta -> 1, 1 / n_c."""
    counts = counts.double().clamp(min=1)
    w = (1 - beta) / (1 - torch.pow(beta, counts))
    return (w * len(counts) / w.sum()).float()


@LOSSES.register("cross-entropy")
class CrossEntropy:
    """Plain cross-entropy, mean over the batch: -log softmax(z)_y."""

    tunable: dict[str, Tunable] = {}
    plain = True  # plain cross-entropy: packed training computes it itself

    def __init__(self, counts: torch.Tensor, **params: float):
        unknown = set(params) - set(self.tunable)
        if unknown:
            raise ValueError(f"loss {type(self).__name__} takes no parameter(s) "
                             f"{', '.join(sorted(unknown))}; it takes "
                             f"{', '.join(self.tunable) or 'none'}")
        self.params = {k: float(params.get(k, t.default)) for k, t in self.tunable.items()}
        self.counts = torch.as_tensor(counts).cpu().double().clamp(min=1)  # (C,)
        self._cache: dict[tuple, torch.Tensor] = {}

    def _on(self, what: str, make, like: torch.Tensor) -> torch.Tensor:
        """A per-class tensor (C,) made once from the counts, kept on the logits' device:
        no host-to-device copy per step."""
        key = (what, like.device, like.shape[-1])
        if key not in self._cache:
            counts = self.counts
            if like.shape[-1] > len(counts):  # classes the labels never name: one image each
                counts = F.pad(counts, (0, like.shape[-1] - len(counts)), value=1.0)
            self._cache[key] = make(counts).float().to(like.device)
        return self._cache[key]

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, epoch: int = 1,
                 epochs: int = 1) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets)


@LOSSES.register("class-balanced")
class ClassBalanced(CrossEntropy):
    """Class-balanced cross-entropy (Cui et al., CVPR 2019, "Class-Balanced Loss Based on
    Effective Number of Samples"): each sample's loss weighted by its class's
    w_c = (1 - beta) / (1 - beta^n_c), the w_c scaled to sum to C, and the batch's loss the
    weighted mean sum_i w_{y_i} l_i / sum_i w_{y_i} (PyTorch's cross_entropy(weight=), as the
    LDAM-DRW codebase computes it; Cui et al.'s code divides by the batch size instead, which
    scales the step by the batch's mean weight)."""

    plain = False
    tunable = {"beta": Tunable(0.9999, 0.9, 0.99999, False,
                               "effective-number beta: 0 = no reweighting, -> 1 = 1/n_c")}

    def __call__(self, logits, targets, epoch=1, epochs=1):
        w = self._on("weights", lambda n: class_balanced_weights(n, self.params["beta"]), logits)
        return F.cross_entropy(logits.float(), targets, weight=w)


@LOSSES.register("logit-adjusted")
class LogitAdjusted(CrossEntropy):
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021, "Long-tail learning via logit
    adjustment", eq. 10): cross-entropy of z_c + tau * log pi_c, pi_c = n_c / sum n the
    training set's class prior. The adjustment is in training only: prediction is argmax z."""

    plain = False
    tunable = {"tau": Tunable(1.0, 0.0, 3.0, False, "temperature of the log-prior offset")}

    def __call__(self, logits, targets, epoch=1, epochs=1):
        log_prior = self._on("log_prior", lambda n: torch.log(n / n.sum()), logits)
        return F.cross_entropy(logits.float() + self.params["tau"] * log_prior, targets)


@LOSSES.register("balanced-softmax")
class BalancedSoftmax(CrossEntropy):
    """Balanced softmax (Ren et al., NeurIPS 2020, "Balanced Meta-Softmax for Long-Tailed
    Visual Recognition", eq. 4): cross-entropy of z_c + log n_c. Softmax ignores a shift
    common to all classes (log sum n), so this is the logit-adjusted loss at tau = 1; it is
    listed under its own name because the literature reports it as its own method."""

    plain = False

    def __call__(self, logits, targets, epoch=1, epochs=1):
        log_counts = self._on("log_counts", torch.log, logits)
        return F.cross_entropy(logits.float() + log_counts, targets)


@LOSSES.register("ldam-drw")
class LdamDrw(CrossEntropy):
    """LDAM with deferred re-weighting (Cao et al., NeurIPS 2019, "Learning Imbalanced Datasets
    with Label-Distribution-Aware Margin Loss", eq. 13 and Algorithm 1), as their code
    (kaidic/LDAM-DRW) computes it: -log softmax(s * (cos - Delta_y e_y))_y, where cos are the
    cosine logits cos(x, w_c) of a normalised head (their NormedLinear: features and class
    weights each scaled to unit length), the margin Delta_c = K / n_c^(1/4) with K such that
    the largest margin is max_margin (0.5, in cosine units), and s (30) the scale. Deferred
    re-weighting: from epoch floor(defer * epochs) on (counted from 0: the last 20% of the
    epochs), each sample's loss is weighted by the class-balanced w_c (beta 0.9999, summing
    to C) as a weighted mean; before, unweighted.

    What differs from their code: the scale s sits in the head (benchmark.models.cosine_head
    outputs s * cos), so the network's logits are the ones trained on, evaluated and saved (its
    softmax is the calibrated probability; argmax is unchanged); this loss therefore takes the
    logits z = s * cos and subtracts s * Delta_y: -log softmax(z - s * Delta_y e_y)_y, the same
    number. (Layout 3 multiplied a plain linear head's raw logits by s = 30, which scaled the
    gradient thirtyfold and diverged at a normal learning rate.) On a head that is not a
    cosine one the loss is still defined, with margins s * Delta in logit units."""

    plain = False
    tunable = {
        "max_margin": Tunable(0.5, 0.1, 1.0, False, "the rarest class's margin, cosine units"),
        "s": Tunable(30.0, 1.0, 64.0, True, "scale of the cosine logits"),
        "beta": Tunable(0.9999, 0.9, 0.99999, False, "effective-number beta of the re-weighting"),
        "defer": Tunable(0.8, 0.5, 1.0, False, "share of the epochs before re-weighting starts"),
    }

    def margins(self, like: torch.Tensor) -> torch.Tensor:
        def make(n: torch.Tensor) -> torch.Tensor:
            m = n.pow(-0.25)
            return m * (self.params["max_margin"] / m.max())
        return self._on("margins", make, like)

    def reweights(self, epoch: int, epochs: int) -> bool:
        """Whether epoch (from 1) of `epochs` is re-weighted: its 0-based index is at least
        floor(defer * epochs) (160 of 200, as Cao et al.'s schedule)."""
        return epoch - 1 >= math.floor(self.params["defer"] * epochs + 1e-9)

    def __call__(self, logits, targets, epoch=1, epochs=1):
        z = logits.float()
        margin = self.margins(z)[targets]  # (B,): Delta_y of each sample's true class
        z = z - F.one_hot(targets, z.shape[-1]) * (self.params["s"] * margin)[:, None]
        w = None
        if self.reweights(epoch, epochs):
            w = self._on("weights", lambda n: class_balanced_weights(n, self.params["beta"]), z)
        return F.cross_entropy(z, targets, weight=w)


def make_loss(name: str, counts: torch.Tensor, **params: float) -> CrossEntropy:
    """The loss `name` for these class counts (C,); an unknown name raises, listing the
    choices; a parameter the loss does not take raises too."""
    return LOSSES[name](counts, **params)
