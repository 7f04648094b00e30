"""The baseline `make perf` measures against: the usual tutorial pipeline (a
torchvision-style dataset of PIL images, per-image transforms, a DataLoader with worker
processes, `loss.item()` per step)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms.functional import to_pil_image

from benchmark.app.perf_timing import Context
from benchmark.data.augment import EpochPlan

# ---- the tutorial pipeline: PIL images, per-image transforms, DataLoader workers ----------

class PilImages(torch.utils.data.Dataset):
    """The tutorial's dataset: item i is a PIL image, transformed on its own. The epoch plan
    says which stored image each item is (oversampling repeats some) and which are added
    copies, which get `synthetic_transform`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, plan: EpochPlan, transform: Callable,
                 synthetic_transform: Callable | None = None):
        self.x, self.y, self.index, self.synthetic = x, y, plan.index.cpu(), plan.synthetic.cpu()
        self.transforms = (transform, synthetic_transform or transform)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        j = int(self.index[i])
        image = to_pil_image(self.x[j])  # (3, 32, 32) uint8 -> 32x32 RGB
        return self.transforms[bool(self.synthetic[i])](image), int(self.y[j])


def add_noise(t: torch.Tensor, sigma: float) -> torch.Tensor:
    """The tutorial's noise transform, one image at a time (a function: workers pickle it)."""
    return (t + torch.randn_like(t) * sigma).clamp(0, 1)


def tutorial_loader(ctx: Context, dataset: PilImages) -> DataLoader:
    gen = torch.Generator().manual_seed(ctx.seed)  # seeded shuffle and worker seeds
    return DataLoader(dataset, batch_size=ctx.sizes["batch"], shuffle=True,
                      num_workers=ctx.workers, generator=gen)


def tutorial_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, loader: DataLoader,
                   device: torch.device) -> float:
    """The loop every tutorial shows, loss.item() per step included."""
    model.train()
    running = 0.0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        running += loss.item()
    return running
