"""`make perf`: K trainings packed into one vmapped model (benchmark.packed) against the same
K trainings one after the other, for K = 1, 2, 4, on the machine it runs on.

Each round trains one epoch of each of the K models both ways, alternated in one process:
the packed epoch (`train_packed_epoch`) and K `train_one_epoch` calls, each model with its
own seed and learning rate. The row is images/s over all K models, packed over sequential:
above 1 packing pays there. (K = 1 shows what vmap itself costs.)
"""

from __future__ import annotations

import torch

from benchmark import train
from benchmark.app.perf_timing import Context, Row, alternate, paired
from benchmark.data.augment import NoAugment
from benchmark.packed import PACKABLE, Member, Packed, train_packed_epoch

KS = (1, 2, 4)
NETWORKS = PACKABLE  # the cnn, and the rnn with its cell written out
# Images per model: K = 1, 2, 4 train 7 models' epochs each way per round, and the rnn runs
# ~150 img/s on a 2-core CPU, so it gets an eighth of its training row's images (one batch)
SHARE = {"cnn": 2, "rnn": 8}
ROUNDS = 3


def images(ctx: Context, name: str) -> int:
    return max(1, ctx.sizes[name] // SHARE[name])


def _contenders(ctx: Context, name: str, k: int):
    n, dev, classes = images(ctx, name), ctx.device, ctx.data.num_classes
    split = train.Split(ctx.data.train_x[:n].to(dev), ctx.data.train_y[:n].to(dev))
    seeds = [ctx.seed + i for i in range(k)]
    lrs = [train.HYP["lr"] * (i + 1) for i in range(k)]  # each its own, as trials have
    batch = ctx.sizes["batch"]

    models = [train.build_model(name, classes, s, dev) for s in seeds]
    opts = [torch.optim.SGD(m.parameters(), lr=lr) for m, lr in zip(models, lrs, strict=True)]
    gens = [torch.Generator(dev).manual_seed(s) for s in seeds]

    def sequential():
        for m, o, g in zip(models, opts, gens, strict=True):
            train.train_one_epoch(m, o, split, batch, g, NoAugment(split.y))

    members = [Member(split, split, s, lr) for s, lr in zip(seeds, lrs, strict=True)]
    packed = Packed(name, [train.build_model(name, classes, s, dev) for s in seeds], lrs,
                    train.HYP["momentum"], train.HYP["weight_decay"])
    pgens = [torch.Generator(dev).manual_seed(s) for s in seeds]
    augments = [NoAugment(split.y) for _ in seeds]

    def together():
        train_packed_epoch(packed, members, augments, pgens, batch)

    return together, sequential


def speed(ctx: Context, name: str, k: int) -> Row:
    """Images/s of K models' training epochs: packed into one vmapped model against one
    after the other, alternated."""
    together, sequential = _contenders(ctx, name, k)
    t_pack, t_seq = alternate(together, sequential, reps=min(ctx.reps, ROUNDS),
                              device=ctx.device)
    n = images(ctx, name)
    return paired(f"{name} x{k}, packed / sequential", "img/s", [k * n / t for t in t_pack],
                  [k * n / t for t in t_seq],
                  note=f"{k} models of {n} images, batch {min(n, ctx.sizes['batch'])}: "
                       "one vmapped model against one after the other")
