"""fit / evaluate: pure compute on whole-dataset uint8 tensors. Returns numbers; no I/O."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from benchmark.data.augment import NoAugment, batches
from benchmark.errors import UserError
from benchmark.metrics import balanced_accuracy
from benchmark.models import CHANNELS_LAST, cosine_head, create_model

HYP = {
    "batch_size": 1024,  # images per SGD step, the reference's
    "lr": 0.01,  # SGD learning rate, the reference's for every network
    "momentum": 0.0,  # the reference used plain SGD
    "weight_decay": 0.0,  # L2 penalty per step; the reference used none
}
DEVICES = ("auto", "cpu", "cuda", "mps")

EpochCallback = Callable[[int, dict[str, float]], None]

_fit_cpu = [0.0]  # see fit_cpu_seconds
_fit_cpu_lock = threading.Lock()  # trials train in threads


def fit_cpu_seconds() -> float:
    """CPU seconds that fit's epochs (training and evaluating, not the epoch callback) took
    so far in this process, summed over its fits. Counted per thread (time.thread_time):
    torch's own intra-op threads are not in it, so it is all of a fit's compute only at one
    torch thread. `make perf` takes it from a cell's CPU time, which leaves what the cell
    spent on anything but training."""
    return _fit_cpu[0]


class History(list):
    """What `fit` returns: the metrics of every epoch (a list of dicts, one an epoch), and in
    `last_test` the last epoch's test evaluation (`evaluate`'s dict, its predictions
    included): the final weights' on the test set, since nothing trains after it; None after
    0 epochs. A caller that needs the final test numbers reads them here instead of
    evaluating the test set a second time."""

    last_test: dict | None = None


class Split(NamedTuple):
    x: torch.Tensor  # (N, 3, 32, 32) uint8
    y: torch.Tensor  # (N,) int64


class Diverged(FloatingPointError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float):
        super().__init__(f"training loss is {loss} at epoch {epoch}: the learning rate is "
                         "too high for this model")
        self.epoch, self.loss = epoch, loss


def resolve_device(name: str = "auto") -> torch.device:
    """auto picks cuda, then mps, then cpu; an asked-for device that is absent is an error."""
    if name not in DEVICES:
        raise UserError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    has = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(),
           "cpu": True}
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if has[d]))
    if not has[name]:
        raise UserError(f"device {name!r} is not available on this machine; use --device cpu")
    return torch.device(name)


def build_model(name: str, num_classes: int, seed: int, device: torch.device,
                cosine_scale: float = 0.0) -> nn.Module:
    """The model with weights drawn from `seed`, in the memory format that is fastest there;
    with cosine_scale > 0 (a remedy's `cosine_scale`: ldam-drw) its classifier is a cosine
    head of that scale (benchmark.models.cosine_head)."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes)
    if cosine_scale > 0:
        model = cosine_head(model, cosine_scale)
    model = model.to(device)
    if _channels_last(name, device):
        model = model.to(memory_format=torch.channels_last)
    return model


def _channels_last(name: str, device: torch.device) -> bool:
    # Measured in `make perf`: NHWC helps the conv nets on CUDA and on this CPU alike.
    return name in CHANNELS_LAST


PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 on CUDA, fp32 elsewhere


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` as the device's default: bf16 autocast on CUDA; fp32 on a CPU, where bf16 pays
    or not by CPU (`make perf` measures it side by side) and changes the numbers."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


# torch's CPU capability on an x86 CPU without AVX512: no bf16 instructions, so bf16 autocast
# runs emulated. `tailbench perf --only perf_precision.speed` on a Zen 1 AMD EPYC (AVX2): bf16
# trained the cnn at 0.11x fp32 and the rnn at 0.065x; CPUs with AVX512-BF16 ran 0.6 to 3.4x.
NO_BF16_CAPABILITIES = ("NO AVX", "AVX2")


def bf16_emulated(device: torch.device) -> str:
    """torch's name for this machine's CPU capability ("AVX2") when bf16 autocast on `device`
    has no bf16 instructions to run on, else ""."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if device.type == "cpu" and capability in NO_BF16_CAPABILITIES else ""


def _autocast(device: torch.device, precision: str = "auto"):
    """The context training and evaluation compute in: bf16 autocast, or plain fp32."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _to_float(xb: torch.Tensor) -> torch.Tensor:
    return torch.div(xb, 255)  # (B, 3, 32, 32) uint8 -> float in [0, 1], in one pass


def _like_model(xb: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The batch in the model's memory format: an NCHW batch into NHWC weights is slow."""
    first = next(model.parameters())
    if first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last):
        return xb.contiguous(memory_format=torch.channels_last)
    return xb


def make_batch(x: torch.Tensor, synthetic: int, augment: NoAugment,
               gen: torch.Generator, model: nn.Module) -> torch.Tensor:
    """The model's input for stored uint8 images `x` (B, 3, 32, 32): scaled to [0, 1], its
    last `synthetic` rows augmented, in the model's memory format. Training and `make perf`
    both build their batches here."""
    return _like_model(augment.apply(_to_float(x), synthetic, gen), model)


class RawImages(nn.Module):
    """A trained network as `evaluate` runs it: uint8 images (N, 3, 32, 32) in, logits out,
    the scaling to [0, 1] and the memory format inside. What a repetition logs as its model,
    so a user feeds it stored images as they are."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_like_model(_to_float(x), self.net))


def train_one_epoch(model: nn.Module, opt: torch.optim.Optimizer, data: Split,
                    batch_size: int, gen: torch.Generator, augment: NoAugment,
                    progress: bool = False, precision: str = "auto", epoch: int = 1,
                    epochs: int = 1) -> dict[str, float]:
    """One pass over a freshly shuffled epoch plan, minimising the remedy's loss (epoch, from
    1, of `epochs`: ldam-drw's re-weighting starts late); returns its mean, running accuracy
    and running balanced accuracy (mean per-class recall over the epoch's samples)."""
    model.train()
    device = data.x.device
    plan = augment.plan(gen)
    order = torch.randperm(len(plan.index), generator=gen, device=device)
    loss_sum = torch.zeros((), device=device)
    seen = correct = None  # (C,) per-class counts, sized by the model's output on first use
    for idx, synthetic in tqdm(batches(plan, order, batch_size), disable=not progress,
                               leave=False, unit="batch"):
        xb = make_batch(data.x[idx], synthetic, augment, gen, model)
        yb = data.y[idx]
        with _autocast(device, precision):
            out = model(xb)
            loss = augment.loss(out, yb, epoch, epochs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # accumulate on the device: one host sync per epoch, not per step
        loss_sum += loss.detach().float() * len(yb)
        classes = out.shape[1]
        if seen is None:
            seen = torch.zeros(classes, device=device)
            correct = torch.zeros_like(seen)
        seen += torch.bincount(yb, minlength=classes)
        # weights, not yb[hit]: a boolean index would sync the host every step on a GPU
        correct += torch.bincount(yb, weights=(out.argmax(1) == yb).float(), minlength=classes)
    n = len(plan.index)
    if seen is None:
        return {"train_loss": 0.0, "train_acc": 0.0, "train_balanced_acc": 0.0}
    present = seen > 0
    recall = correct[present] / seen[present]
    return {"train_loss": loss_sum.item() / n, "train_acc": correct.sum().item() / n,
            "train_balanced_acc": recall.mean().item()}


@torch.inference_mode()
def evaluate(model: nn.Module, data: Split, batch_size: int = 1024,
             precision: str = "auto") -> dict:
    """Loss, accuracy, balanced accuracy (mean per-class recall), the predicted labels and
    their softmax probability ("confidence", (N,) on the CPU: for the calibration error)."""
    model.eval()
    device = data.x.device
    preds, confs, loss_sum = [], [], torch.zeros((), device=device)
    for start in range(0, len(data.y), batch_size):
        xb = _like_model(_to_float(data.x[start:start + batch_size]), model)
        yb = data.y[start:start + batch_size]
        with _autocast(device, precision):
            out = model(xb)
        out = out.float()
        loss_sum += F.cross_entropy(out, yb, reduction="sum")
        preds.append(out.argmax(1))
        confs.append(out.softmax(1).amax(1))  # the predicted class's probability
    pred = torch.cat(preds) if preds else data.y.new_empty(0)
    n = max(1, len(data.y))
    return {"loss": loss_sum.item() / n, "acc": (pred == data.y).float().sum().item() / n,
            "balanced_acc": balanced_accuracy(data.y.cpu().numpy(), pred.cpu().numpy()),
            "preds": pred.cpu(),
            "confidence": torch.cat(confs).cpu() if confs else torch.zeros(0)}


# A fit "did not learn" when its final weights predict one class for this share of the test
# images, or when its balanced training accuracy in the last epoch stays below this multiple
# of chance. Neither looks at whether a test prediction is right: the first counts predicted
# labels only, the second reads the training set; so excluding such a fit selects nothing on
# the test set. Why these levels: on Fashion-MNIST (quick profile, 6 seeds a cell, chance 0.1)
# the weakest repetitions that learned scored 0.17-0.29 balanced test accuracy (rnn, resnet50,
# cnn long-tail), above 1.5x chance; the ones caught scored exactly chance or predicted one
# class for 94-100% of the test images (a diverging lr, a constant output, a saturated tanh).
COLLAPSE_SHARE = 0.9
COLLAPSE_CHANCE_MULTIPLE = 1.5


def did_not_learn(train_balanced_acc: float, test_preds: torch.Tensor, num_classes: int
                  ) -> str:
    """Why a finished fit is not a result (a sentence), or "" when it learned.
    `train_balanced_acc` should be the final weights' (see `final_train_balanced_acc`)."""
    if len(test_preds):
        counts = torch.bincount(test_preds.cpu(), minlength=num_classes)
        top = int(counts.argmax())
        share = counts[top].item() / len(test_preds)
        if share >= COLLAPSE_SHARE:
            return (f"collapsed: predicts class {top} for {share:.0%} of the test images "
                    f"(limit {COLLAPSE_SHARE:.0%})")
    chance = 1 / num_classes
    if train_balanced_acc < COLLAPSE_CHANCE_MULTIPLE * chance:
        return (f"did not learn: balanced training accuracy {train_balanced_acc:.1%} is below "
                f"{COLLAPSE_CHANCE_MULTIPLE}x chance ({chance:.0%})")
    return ""


def final_train_balanced_acc(model: nn.Module, train: Split, history: list[dict[str, float]],
                             num_classes: int, batch_size: int = 1024,
                             precision: str = "auto") -> float:
    """Balanced training accuracy of the final weights, for `did_not_learn`. The last epoch's
    running value is a lower bound for a model that was still learning (its early batches
    saw worse weights: a fit at 12% running scored 40% on the test set), so only when it is
    below the limit are the final weights evaluated on the (unaugmented) training set; a fit
    that learned pays nothing. (A fit that broke in its last steps has a high running value
    but predicts one class: the test-prediction rule catches it.)"""
    running = history[-1]["train_balanced_acc"] if history else 0.0
    if running >= COLLAPSE_CHANCE_MULTIPLE / num_classes:
        return running
    return evaluate(model, train, batch_size, precision)["balanced_acc"]


def fit(model: nn.Module, train: Split, test: Split, *, epochs: int,
        batch_size: int = HYP["batch_size"], lr: float = HYP["lr"],
        momentum: float = HYP["momentum"], weight_decay: float = HYP["weight_decay"],
        seed: int = 0, augment: NoAugment | None = None,
        callback: EpochCallback | None = None, progress: bool = False,
        precision: str = "auto") -> History:
    """SGD on the remedy's loss (`augment.loss`: plain cross-entropy for none, oversample and
    flip+noise) for `epochs` epochs, computing in `precision` (PRECISIONS);
    after each, hand the epoch's metrics
    (train_loss, train_acc, train_balanced_acc, test_loss, test_acc, test_balanced_acc,
    seconds, and eval_seconds of them spent evaluating) to `callback`.
    Raises Diverged when the loss stops being finite. Data must already be on the model's
    device (uint8); returns the metrics of every epoch, and the final weights' test
    evaluation in its `last_test` (see History)."""
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    if not len(train.y):
        raise UserError("the training set is empty: check the data limits and the variant")
    device = next(model.parameters()).device
    augment = augment or NoAugment(train.y)
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    history = History()
    for epoch in range(1, epochs + 1):
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            metrics = train_one_epoch(model, opt, train, batch_size, gen, augment, progress,
                                      precision, epoch, epochs)
            if not math.isfinite(metrics["train_loss"]):
                raise Diverged(epoch, metrics["train_loss"])
            evaluated = time.perf_counter()
            ev = evaluate(model, test, batch_size, precision)
            if not math.isfinite(ev["loss"]):  # the epoch's last step can break the weights
                raise Diverged(epoch, ev["loss"])
        finally:
            with _fit_cpu_lock:
                _fit_cpu[0] += time.thread_time() - cpu
        end = time.perf_counter()
        metrics |= {"test_loss": ev["loss"], "test_acc": ev["acc"],
                    "test_balanced_acc": ev["balanced_acc"],
                    "seconds": end - start, "eval_seconds": end - evaluated}
        history.append(metrics)
        history.last_test = ev  # evaluate(model, test, batch_size, precision) after this epoch
        if callback:
            callback(epoch, metrics)
    return history
