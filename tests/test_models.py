"""The model registry: every registered network takes (B, 3, 32, 32) to (B, classes) and trains.

The tests parametrized over MODELS.names() run for every entry, a new one included."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.models import CHANNELS_LAST, MODELS, create_model, register_model

# Parameter counts from DESIGN.md's layer sizes (weights + biases):
EXPECTED_PARAMS = {
    # Conv(3->32, 5x5): 3*32*25 + 32 = 2,432     Conv(32->16, 3x3): 32*16*9 + 16 = 4,624
    # Conv(16->64, 5x5): 16*64*25 + 64 = 25,664  Conv(64->16, 3x3): 64*16*9 + 16 = 9,232
    # Linear(16*8*8 -> 10): 1024*10 + 10 = 10,250                        total 52,202
    "cnn": 2_432 + 4_624 + 25_664 + 9_232 + 10_250,
    # nn.RNN(96, 512, num_layers=2): per layer W_ih (512 x in) + W_hh (512 x 512) + two biases
    #   layer 1: 512*96 + 512*512 + 2*512 = 312,320; layer 2: 2*512*512 + 2*512 = 525,312
    # Linear(512 -> 10): 5,130                                           total 842,762
    "rnn": 312_320 + 525_312 + 5_130,
    # torchvision's ResNet-50 (1000 classes): 25,557,032; Linear(1000 -> 10): 10,010
    "resnet50": 25_557_032 + 10_010,
    # ResNet-32, option-A shortcuts (no weights), bias-free convs, BN weight + bias per channel:
    #   stem conv 3*16*9 + BN 2*16 = 464
    #   stage 1: 5 blocks * 2 * (16*16*9 + 2*16) = 23,360
    #   stage 2: (16*32*9 + 32*32*9 + 2*2*32) + 4 * 2 * (32*32*9 + 2*32) = 13,952 + 74,240
    #   stage 3: (32*64*9 + 64*64*9 + 2*2*64) + 4 * 2 * (64*64*9 + 2*64) = 55,552 + 295,936
    #   Linear(64 -> 10): 650                                            total 464,154
    "resnet32": (3 * 16 * 9 + 2 * 16) + 5 * 2 * (16 * 16 * 9 + 2 * 16)
                + (16 * 32 * 9 + 32 * 32 * 9 + 2 * 2 * 32) + 4 * 2 * (32 * 32 * 9 + 2 * 32)
                + (32 * 64 * 9 + 64 * 64 * 9 + 2 * 2 * 64) + 4 * 2 * (64 * 64 * 9 + 2 * 64)
                + 64 * 10 + 10,
}
assert EXPECTED_PARAMS == {"cnn": 52_202, "rnn": 842_762, "resnet50": 25_567_042,
                           "resnet32": 464_154}


def _build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name)


def _images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MODELS.names())
def test_output_is_one_logit_per_class(name):
    model = _build(name).eval()
    with torch.no_grad():
        out = model(_images(3))
    assert out.shape == (3, 10) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("classes", [4, 100])
def test_other_class_counts(name, classes):
    model = create_model(name, num_classes=classes).eval()
    with torch.no_grad():
        out = model(_images(2))
    assert out.shape == (2, classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_same_seed_same_weights(name):
    a, b, c = _build(name, 5), _build(name, 5), _build(name, 6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(),
                                                       strict=True))


@pytest.mark.parametrize("name", MODELS.names())
def test_one_sgd_step_changes_the_parameters(name):
    model = _build(name).train()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _images(4, seed=1), torch.tensor([0, 3, 7, 9])
    loss = nn.functional.cross_entropy(model(x), y)
    assert math.isfinite(loss.item())
    loss.backward()
    unused = [k for k, p in model.named_parameters() if p.grad is None]
    assert unused == []  # every layer is on the path from input to output
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    changed = [k for k, p in model.named_parameters() if not torch.equal(p, before[k])]
    assert changed, "no parameter moved"
    # the output layer always gets a gradient, so it must have moved
    last = list(before)[-1]
    assert last in changed
    with torch.no_grad():
        assert math.isfinite(nn.functional.cross_entropy(model(x), y).item())


@pytest.mark.parametrize("name, count", EXPECTED_PARAMS.items())
def test_parameter_count_matches_the_design(name, count):
    assert name in MODELS
    assert sum(p.numel() for p in create_model(name).parameters()) == count


def test_cnn_is_the_reference_stack():
    """Four convs, two pools, one linear; no ReLU after the fourth conv (the reference's)."""
    kinds = [type(m).__name__ for m in create_model("cnn")]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d",
                     "Conv2d", "ReLU", "Conv2d", "MaxPool2d", "Flatten", "Linear"]


def test_rnn_reads_one_row_per_step():
    model = create_model("rnn")
    assert (model.rnn.input_size, model.rnn.hidden_size, model.rnn.num_layers) == (96, 512, 2)
    assert model.rnn.nonlinearity == "tanh"
    seen = []
    model.rnn.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    x = _images(2)
    with torch.no_grad():
        model(x)
    (steps,) = seen
    assert steps.shape == (2, 32, 96)  # (B, rows as time steps, 32 pixels x 3 channels)
    for row in (0, 17, 31):  # step t is row t, pixel by pixel, the pixel's R, G, B together
        assert torch.equal(steps[:, row], x[:, :, row, :].permute(0, 2, 1).reshape(2, 96))


def test_resnet50_ends_in_an_added_linear():
    model = create_model("resnet50")
    assert isinstance(model[1], nn.Linear)
    assert (model[1].in_features, model[1].out_features) == (1000, 10)
    assert model[0].fc.out_features == 1000


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'vgg16'; choose one of " +
                                         ", ".join(MODELS)):
        create_model("vgg16")


def test_a_taken_model_name_is_refused():
    with pytest.raises(ValueError, match="model 'cnn' is already registered"):
        register_model("cnn")(lambda **_: nn.Identity())


def test_every_model_says_whether_it_is_a_conv_net():
    """channels_last (NHWC) is chosen from this metadata, so every entry must set it."""
    for name in MODELS.names():
        assert isinstance(MODELS.meta(name).get("conv"), bool), name
    assert set(CHANNELS_LAST) == {n for n in MODELS.names() if MODELS.meta(n)["conv"]}


def test_resnet50_refuses_other_channel_counts():
    with pytest.raises(ValueError, match="3-channel"):
        create_model("resnet50", in_shape=(1, 32, 32))



def test_resnet32_is_three_stages_of_five_blocks_with_parameter_free_shortcuts():
    model = create_model("resnet32")
    widths = [(b.conv1.in_channels, b.conv2.out_channels, b.stride) for b in model.blocks]
    assert widths == ([(16, 16, 1)] * 5 + [(16, 32, 2)] + [(32, 32, 1)] * 4
                      + [(32, 64, 2)] + [(64, 64, 1)] * 4)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 31  # + the linear: 32
    block = model.blocks[5].eval()  # 16 -> 32 channels, stride 2
    with torch.no_grad():
        block.bn2.weight.zero_()  # the residual branch adds exactly 0 (its BN bias is 0)
        x = torch.randn(2, 16, 8, 8)
        out = block(x)
    # option A: the input subsampled by 2, 8 zero channels before and 8 after, then ReLU
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2].relu())
    assert not out[:, :8].any() and not out[:, 24:].any()
