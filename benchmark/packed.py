"""K independent trainings as one vmapped model: `fit_packed`, what `fit` does, K at a time.

Why: a small network (the cnn, the rnn) at batch 1024 leaves most of a big GPU idle; K
copies stacked along a leading model axis run as one wider kernel per layer (a conv with
K groups, a batched matmul) instead of K narrow ones. Each copy keeps its own initial
weights (its model, built from its seed), its own batch order and augmentation draws (its
own generator, seeded as `fit` seeds it), its own learning rate and its own data, so each
ends where `fit` would have taken it, up to float rounding: a grouped conv or a batched
matmul sums in another order than K separate ones.

How: `torch.func.stack_module_state` stacks the parameters, `functional_call` under
`torch.func.vmap` runs the network on inputs (K, B, ...), the K losses are summed (each
copy's gradient comes from its own loss alone) and SGD runs on the stacked tensors with a
(K,) learning rate, step for step as torch.optim.SGD does it (weight decay, then momentum).

What packs: the cnn, and the rnn with its tanh cell written out (nn.RNN has no vmap rule;
`_row_rnn` computes the same cell with matmuls, a loop over the 32 rows). resnet50 and
resnet32 do not: their BatchNorm updates running statistics in place during training, which
vmap cannot do into one stacked buffer, and replacing them (torch.func's
replace_all_batch_norm_modules_) would change what the network evaluates to, so their results
would not be `fit`'s.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from benchmark.data.augment import NoAugment, batches
from benchmark.train import (
    HYP,
    Diverged,
    Split,
    _autocast,
    evaluate,
    make_batch,
)

PACKABLE = ("cnn", "rnn")
_BATCHNORM = ("its BatchNorm layers update running statistics in place while training, "
              "which vmap cannot do into one stacked buffer")
REFUSED = {"resnet50": _BATCHNORM, "resnet32": _BATCHNORM}


@dataclass
class Member:
    """One of the K trainings: its data on the device, seed (batch order, augmentation
    draws: the `seed` that `fit` takes), learning rate and oversampler."""

    train: Split
    test: Split
    seed: int
    lr: float = HYP["lr"]
    augment: NoAugment | None = None


@dataclass
class Result:
    """One member's training: its metrics per epoch (as `fit` returns them) and, when its
    loss stopped being finite, the Diverged that `fit` would have raised (its history then
    ends before that epoch)."""

    history: list[dict[str, float]]
    diverged: Diverged | None = None


def check_packable(name: str) -> None:
    """Raise a ValueError that says why, for a model `fit_packed` cannot train."""
    if name in REFUSED:
        raise ValueError(f"{name} cannot be trained packed: {REFUSED[name]}; train it one "
                         "run at a time (without --pack)")
    if name not in PACKABLE:
        raise ValueError(f"{name} cannot be trained packed; packable models: "
                         f"{', '.join(PACKABLE)}")


def _row_rnn(base: nn.Module) -> Callable:
    """RowRNN's forward on a parameter dict, nn.RNN's tanh cell written out with matmuls:
    the input projection of every row at once, then per row
    h = tanh(h W_hh' + b_hh + (x W_ih' + b_ih)), the same cell up to summation order
    (tests/test_packed.py compares it with nn.RNN through whole trainings)."""
    layers = base.rnn.num_layers

    def forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = x.permute(0, 2, 3, 1).reshape(b, h, w * c)  # (B, 32, 96): one row per step
        for layer in range(layers):
            w_ih, b_ih, w_hh, b_hh = (p[f"rnn.{k}_l{layer}"] for k in
                                      ("weight_ih", "bias_ih", "weight_hh", "bias_hh"))
            pre = F.linear(seq, w_ih, b_ih)  # (B, 32, 512): every row's input projection
            state = pre.new_zeros(b, w_hh.shape[1])
            steps = []
            for t in range(h):
                state = torch.tanh(F.linear(state, w_hh, b_hh) + pre[:, t])  # (B, 512)
                steps.append(state)
            seq = torch.stack(steps, 1)  # (B, 32, 512): the next layer's input
        return F.linear(seq[:, -1], p["head.weight"], p["head.bias"])  # (B, classes)

    return forward


def _forward(name: str, models: list[nn.Module]) -> Callable:
    """f(params, x) -> logits for one model's parameters, to be vmapped over K."""
    if name == "rnn":
        return _row_rnn(models[0])
    base = copy.deepcopy(models[0]).to("meta")  # the structure only; weights come stacked
    return lambda params, x: functional_call(base, params, (x,))


class Packed:
    """K models' parameters stacked (K, ...) with their SGD state; `step` trains them on one
    batch each, `unstack` writes them back into the models."""

    def __init__(self, name: str, models: list[nn.Module], lrs: list[float],
                 momentum: float, weight_decay: float):
        check_packable(name)
        for m in models:
            m.train()
        self.models = models
        params, buffers = stack_module_state(models)
        if buffers:
            raise ValueError(f"{name} has buffers {sorted(buffers)}: cannot be trained packed")
        self.params = params  # name -> (K, ...) leaf tensors
        self.momentum, self.weight_decay = momentum, weight_decay
        self.bufs: dict[str, torch.Tensor] = {}  # momentum buffers, as SGD's
        device = next(iter(params.values())).device
        self.lr = torch.tensor(lrs, dtype=torch.float32, device=device)  # (K,)
        forward = _forward(name, models)

        def loss(p, x, y):
            out = forward(p, x)
            return F.cross_entropy(out, y), out

        self.loss = vmap(loss)  # (K, B, ...) in -> (K,) losses, (K, B, classes) logits

    def step(self, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of every model on its batch x (K, B, ...) y (K, B); returns the
        (K,) losses and (K, B, classes) logits, detached."""
        with _autocast(device, precision):
            losses, out = self.loss(self.params, x, y)
        for p in self.params.values():
            p.grad = None
        losses.sum().backward()  # model k's gradient comes from losses[k] alone
        with torch.no_grad():
            for k, p in self.params.items():
                self._sgd(k, p)
        return losses.detach().float(), out.detach()

    def _sgd(self, k: str, p: torch.Tensor) -> None:
        # torch.optim.SGD's step (dampening 0, no nesterov), with lr per model
        d = p.grad
        if self.weight_decay:
            d = d.add(p, alpha=self.weight_decay)
        if self.momentum:
            if k not in self.bufs:
                self.bufs[k] = torch.clone(d).detach()
            else:
                self.bufs[k].mul_(self.momentum).add_(d)
            d = self.bufs[k]
        p.sub_(self.lr.view(-1, *[1] * (p.dim() - 1)) * d)

    @torch.no_grad()
    def unstack(self) -> list[nn.Module]:
        """The stacked weights copied into the K models (in their own memory format)."""
        for i, m in enumerate(self.models):
            for k, p in m.named_parameters():
                p.copy_(self.params[k][i])
        return self.models


def _epoch_batches(members: list[Member], augments: list[NoAugment],
                   gens: list[torch.Generator], batch_size: int) -> tuple[int, list[list]]:
    """Each member's batches of one epoch, drawn from its generator as train_one_epoch
    draws them, and the epoch's length; step j of the packed epoch is every member's batch j."""
    plans = [a.plan(g) for a, g in zip(augments, gens, strict=True)]
    sizes = {len(p.index) for p in plans}
    if len(sizes) > 1:
        raise ValueError(f"packed members must have epochs of one length, got {sorted(sizes)}"
                         " samples: pack runs whose training sets (after oversampling) are "
                         "the same size")
    orders = [torch.randperm(len(p.index), generator=g, device=g.device)
              for p, g in zip(plans, gens, strict=True)]
    return sizes.pop(), [batches(p, o, batch_size) for p, o in zip(plans, orders, strict=True)]


def train_packed_epoch(packed: Packed, members: list[Member], augments: list[NoAugment],
                       gens: list[torch.Generator], batch_size: int,
                       precision: str = "auto") -> list[dict[str, float]]:
    """One epoch of every member, as train_one_epoch computes it for each: per member,
    mean loss, running accuracy and running balanced accuracy."""
    device = members[0].train.x.device
    n, each = _epoch_batches(members, augments, gens, batch_size)
    K = len(members)
    loss_sum = torch.zeros(K, device=device)
    seen = correct = None  # (K, C)
    for step in zip(*each, strict=True):
        xb = torch.stack([make_batch(m.train.x[idx], syn, a, g, model)
                          for (idx, syn), m, a, g, model
                          in zip(step, members, augments, gens, packed.models, strict=True)])
        yb = torch.stack([m.train.y[idx] for (idx, _), m in zip(step, members, strict=True)])
        losses, out = packed.step(xb, yb, device, precision)
        loss_sum += losses * yb.shape[1]
        classes = out.shape[-1]
        if seen is None:
            seen = torch.zeros(K, classes, device=device)
            correct = torch.zeros_like(seen)
        flat = (yb + classes * torch.arange(K, device=device)[:, None]).flatten()  # (K*B,)
        seen += torch.bincount(flat, minlength=K * classes).view(K, classes)
        hit = (out.argmax(-1) == yb).float().flatten()
        correct += torch.bincount(flat, weights=hit, minlength=K * classes).view(K, classes)
    if seen is None:
        return [{"train_loss": 0.0, "train_acc": 0.0, "train_balanced_acc": 0.0}
                for _ in range(K)]
    out = []
    for k in range(K):
        present = seen[k] > 0
        out.append({"train_loss": loss_sum[k].item() / n,
                    "train_acc": correct[k].sum().item() / n,
                    "train_balanced_acc": (correct[k][present] / seen[k][present]).mean().item()})
    return out


def fit_packed(name: str, models: list[nn.Module], members: list[Member], *, epochs: int,
               batch_size: int = HYP["batch_size"], momentum: float = HYP["momentum"],
               weight_decay: float = HYP["weight_decay"], precision: str = "auto",
               callback: Callable[[int, int, dict[str, float]], None] | None = None
               ) -> list[Result]:
    """`fit` for K models of network `name` at once, models[k] trained with members[k]:
    the models are trained in place (as `fit` trains its model) and each gets its Result.
    `seconds` of an epoch is the packed epoch's, shared by its members; `callback(k, epoch,
    metrics)` after each epoch of each member still training. A member whose loss stops
    being finite gets the Diverged `fit` raises and stops being evaluated (its weights still
    move, uselessly: they are independent of the others')."""
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    if len(models) != len(members) or not members:
        raise ValueError(f"one model per member, got {len(models)} and {len(members)}")
    device = members[0].train.x.device
    augments = [m.augment or NoAugment(m.train.y) for m in members]
    unpacked = sorted({a.name for a in augments if not a.loss.plain})
    if unpacked:  # the packed step computes plain cross-entropy
        raise ValueError(f"remedy {', '.join(unpacked)} trains with its own loss, which packed "
                         "training does not compute; train it one run at a time")
    gens = [torch.Generator(device=device).manual_seed(m.seed) for m in members]
    packed = Packed(name, models, [m.lr for m in members], momentum, weight_decay)
    results = [Result([]) for _ in members]
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        metrics = train_packed_epoch(packed, members, augments, gens, batch_size, precision)
        packed.unstack()
        evaluated = time.perf_counter()
        for k, (res, m, model) in enumerate(zip(results, members, models, strict=True)):
            if res.diverged:
                continue
            if not math.isfinite(metrics[k]["train_loss"]):
                res.diverged = Diverged(epoch, metrics[k]["train_loss"])
                continue
            ev = evaluate(model, m.test, batch_size, precision)
            if not math.isfinite(ev["loss"]):
                res.diverged = Diverged(epoch, ev["loss"])
                continue
            metrics[k] |= {"test_loss": ev["loss"], "test_acc": ev["acc"],
                           "test_balanced_acc": ev["balanced_acc"]}
        end = time.perf_counter()
        for k, res in enumerate(results):
            if res.diverged is None:
                metrics[k] |= {"seconds": end - start, "eval_seconds": end - evaluated}
                res.history.append(metrics[k])
                if callback:
                    callback(k, epoch, metrics[k])
    return results
