"""The `tailbench` command: train one model, run a grid, write the report, measure speed."""

from __future__ import annotations

import argparse
import sys
import time

from benchmark.data import SOURCES, DataError, default_data_dir
from benchmark.models import MODELS
from benchmark.train import DEVICES


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    return parse


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="auto", choices=list(SOURCES),
                   help="auto: CIFAR-10 where present or downloadable, else Fashion-MNIST")
    p.add_argument("--data-dir", default=None,
                   help=f"where the data lives (env TAILBENCH_DATA, default {default_data_dir()})")
    p.add_argument("--device", default="auto", choices=DEVICES)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train one model and print a per-epoch table")
    p.add_argument("--model", required=True, choices=list(MODELS))
    _data_args(p)
    p.add_argument("--epochs", type=_positive(int), default=2)
    p.add_argument("--limit", type=_positive(int), default=0,
                   help="train on this many images (stratified); 0 = all")
    p.add_argument("--batch-size", type=_positive(int), default=1024)
    p.add_argument("--lr", type=_positive(float), default=0.01)
    p.add_argument("--seed", type=int, default=0)


def cmd_train(args: argparse.Namespace) -> int:
    from benchmark.data import load_dataset
    from benchmark.train import Split, build_model, fit, resolve_device

    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_dir)
    if args.limit:
        data = data.limit(train=args.limit, test=max(1000, args.limit // 5), seed=args.seed)
    train = Split(data.train_x.to(device), data.train_y.to(device))
    test = Split(data.test_x.to(device), data.test_y.to(device))
    model = build_model(args.model, data.num_classes, args.seed, device)
    print(f"{args.model} on {data.source}: {len(train.y)} train / {len(test.y)} test images, "
          f"{device}")
    print(f"{'epoch':>5} {'loss':>8} {'train acc':>9} {'test acc':>8} {'seconds':>7}")

    def show(epoch: int, m: dict[str, float]) -> None:
        print(f"{epoch:>5} {m['train_loss']:>8.4f} {m['train_acc']:>9.2%} {m['test_acc']:>8.2%} "
              f"{m['seconds']:>7.1f}", flush=True)

    fit(model, train, test, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, callback=show, progress=sys.stderr.isatty())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tailbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    return p


COMMANDS = {"train": cmd_train}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    start = time.perf_counter()
    try:
        return COMMANDS[args.command](args)
    except (DataError, ValueError) as e:
        print(f"tailbench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ntailbench {args.command}: interrupted after {time.perf_counter() - start:.0f}s",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
