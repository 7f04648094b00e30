"""`make perf`: fp32 against bf16 autocast on the machine it runs on.

Whether bf16 pays on a CPU depends on the CPU (AVX512-BF16, AMX or neither), so it is
measured here rather than assumed: per model, one training epoch in each precision, side by
side (bf16 images/s over fp32's); and for the cnn, the test accuracy of a short training in
each precision from the same seeds, so the README can say whether bf16 moves the result
beyond the seed-to-seed spread (paired over seeds: same weights, same batches).
"""

from __future__ import annotations

from functools import partial

import torch

from benchmark import train
from benchmark.app.perf_timing import Context, Row, alternate, paired
from benchmark.data.augment import NoAugment
from benchmark.stats import paired as paired_test
from benchmark.stats import summarize

PRECISIONS = ("fp32", "bf16")
ACCURACY = {"full": dict(train=4000, test=2000, epochs=3, seeds=3, batch=128, lr=0.05),
            "quick": dict(train=200, test=100, epochs=1, seeds=2, batch=32, lr=0.05)}


def speed(ctx: Context, name: str) -> Row:
    """Images/s of one training epoch in bf16 autocast against fp32, alternated."""
    n, dev, k = ctx.sizes[name], ctx.device, ctx.data.num_classes
    split = train.Split(ctx.data.train_x[:n].to(dev), ctx.data.train_y[:n].to(dev))
    epochs = []
    for precision in PRECISIONS:
        model = train.build_model(name, k, ctx.seed, dev)
        opt = torch.optim.SGD(model.parameters(), lr=train.HYP["lr"])
        gen = torch.Generator(dev).manual_seed(ctx.seed)
        epochs.append(partial(train.train_one_epoch, model, opt, split, ctx.sizes["batch"],
                              gen, NoAugment(split.y), precision=precision))
    t32, t16 = alternate(*epochs, reps=ctx.reps, device=dev)
    return paired(f"{name} epoch, bf16 / fp32", "img/s", [n / t for t in t16],
                  [n / t for t in t32], note=f"{n} images: bf16 autocast against fp32")


def accuracy(ctx: Context) -> Row:
    """Test accuracy of the cnn trained in bf16 and in fp32 from the same seeds."""
    size = ACCURACY["quick" if ctx.sizes["batch"] < 256 else "full"]
    data = ctx.data.limit(train=size["train"], test=size["test"], seed=ctx.seed)
    dev = ctx.device
    tr = train.Split(data.train_x.to(dev), data.train_y.to(dev))
    te = train.Split(data.test_x.to(dev), data.test_y.to(dev))
    acc = {p: [] for p in PRECISIONS}
    for seed in range(size["seeds"]):
        for precision in PRECISIONS:
            model = train.build_model("cnn", data.num_classes, seed, dev)
            train.fit(model, tr, te, epochs=size["epochs"], batch_size=size["batch"],
                      lr=size["lr"], seed=seed, precision=precision)
            acc[precision].append(train.evaluate(model, te, size["batch"], precision)["acc"])
    s16, s32 = summarize(acc["bf16"]), summarize(acc["fp32"])
    diff = paired_test([a - b for a, b in zip(acc["bf16"], acc["fp32"], strict=True)],
                       "less")
    return paired("cnn test accuracy, bf16 / fp32", "acc", acc["bf16"], acc["fp32"],
                  note=f"{size['seeds']} seeds, {size['epochs']} epochs on {size['train']} "
                       f"images: bf16 {s16.text(count=False)}%, fp32 {s32.text(count=False)}%;"
                       f" bf16 − fp32 {diff.text()}")
