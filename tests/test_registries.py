"""The one Registry type, and the four registries built on it.

The tests of each registry's entries are generated over `names()` where the entries' code is
tested: models in test_models.py, variants and augmentations in test_variants.py, data
sources in test_data.py. A new entry is tested there without a new test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmark.cells import CHOICES
from benchmark.data import SOURCES, resolve_name
from benchmark.data.augment import REMEDIES
from benchmark.data.variants import VARIANTS
from benchmark.losses import LOSSES
from benchmark.models import CHANNELS_LAST, MODELS
from benchmark.registry import Registry, RegistryError


@pytest.fixture
def shapes() -> Registry[int]:
    reg: Registry[int] = Registry("shape")
    reg.register("square", 4)
    reg.register("triangle", 3, pointy=True)
    return reg


def test_register_and_look_up(shapes):
    assert shapes["square"] == 4 and shapes.get("triangle") == 3
    assert shapes.names() == ("square", "triangle") == tuple(shapes)
    assert list(shapes) == ["square", "triangle"] and len(shapes) == 2
    assert "square" in shapes and "circle" not in shapes and 4 not in shapes
    assert shapes.get("circle", None) is None  # dict.get, as monkeypatch.setitem calls it


def test_the_decorator_form_returns_what_it_registers():
    reg: Registry = Registry("model")

    @reg.register("net", conv=True)
    def net():
        return "a net"

    assert reg["net"] is net and net() == "a net" and reg.meta("net") == {"conv": True}


def test_a_taken_name_raises_naming_it(shapes):
    with pytest.raises(ValueError, match="shape 'square' is already registered"):
        shapes.register("square", 5)
    with pytest.raises(RegistryError, match="'square'"):
        shapes.register("square")(lambda: 5)
    assert shapes["square"] == 4  # never silently overwritten


def test_an_unknown_name_lists_the_choices(shapes):
    with pytest.raises(ValueError, match="unknown shape 'circle'; choose one of square, "
                                         "triangle$"):
        shapes["circle"]
    with pytest.raises(ValueError, match="unknown shape 'circle'"):
        shapes.resolve("circle")
    with pytest.raises(ValueError, match="unknown shape 'circle'"):
        shapes.meta("circle")


def test_names_must_be_non_empty_strings(shapes):
    for bad in ("", None, 3):
        with pytest.raises(ValueError, match="non-empty string"):
            shapes.register(bad, 1)


def test_metadata_is_read_only_and_where_is_a_live_view(shapes):
    assert shapes.meta("square") == {}
    with pytest.raises(TypeError):
        shapes.meta("triangle")["pointy"] = False
    pointy = shapes.where(pointy=True)
    assert set(pointy) == {"triangle"} and "triangle" in pointy and "square" not in pointy
    shapes.register("star", 5, pointy=True)
    assert list(pointy) == ["triangle", "star"] and len(pointy) == 2


def test_a_rule_is_a_choice_that_picks_an_entry(shapes):
    shapes.rule("any", lambda sides: ("square" if sides == 4 else "triangle", f"{sides} sides"))
    assert list(shapes) == ["square", "triangle", "any"] and "any" in shapes
    assert shapes.names() == ("square", "triangle") and shapes.rules() == ("any",)
    assert shapes.resolve("any", 4) == ("square", "4 sides")
    assert shapes.resolve("triangle") == ("triangle", "asked for")
    with pytest.raises(ValueError, match="'any' is a rule, not an entry"):
        shapes["any"]
    with pytest.raises(ValueError, match="already registered"):
        shapes.register("any", 0)
    shapes.rule("broken", lambda: ("circle", "no reason"))
    with pytest.raises(ValueError, match="unknown shape 'circle'"):
        shapes.resolve("broken")


def test_monkeypatch_setitem_replaces_and_restores(shapes):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(shapes, "circle", 0)
        mp.setitem(shapes, "triangle", 30)
        assert shapes["circle"] == 0 and shapes["triangle"] == 30
        assert shapes.meta("triangle") == {"pointy": True}  # the entry keeps its metadata
    assert "circle" not in shapes and shapes["triangle"] == 3
    assert shapes.meta("triangle") == {"pointy": True}


def test_temporarily_registers_inside_the_block(shapes):
    with shapes.temporarily("circle", 0, round=True) as value:
        assert value == 0 and shapes["circle"] == 0 and "circle" in shapes.where(round=True)
    assert "circle" not in shapes
    with shapes.temporarily("square", 40):
        assert shapes["square"] == 40 and shapes.meta("square") == {}
    assert shapes["square"] == 4
    with pytest.raises(KeyError):
        del shapes["circle"]


# ---- the registries -------------------------------------------------------------------------

@pytest.mark.parametrize("registry, kind", [(MODELS, "model"), (VARIANTS, "variant"),
                                            (REMEDIES, "remedy"), (SOURCES, "dataset"),
                                            (LOSSES, "loss")],
                         ids=["models", "variants", "remedies", "sources", "losses"])
def test_every_registry_is_one_registry_type(registry, kind):
    assert isinstance(registry, Registry) and registry.kind == kind and registry.names()
    message = f"unknown {kind} 'nope'; choose one of {', '.join(registry)}"
    with pytest.raises(ValueError, match=re.escape(message)):
        registry["nope"]


def test_the_registries_keep_their_names_and_order():
    assert list(MODELS) == ["cnn", "rnn", "resnet50", "resnet32"]
    assert list(VARIANTS) == ["balanced", "long-tail", "exp"]
    assert list(REMEDIES) == ["none", "oversample", "flip+noise", "reweight", "logit-adjust",
                             "balanced-softmax", "ldam-drw"]
    assert list(LOSSES) == ["cross-entropy", "class-balanced", "logit-adjusted",
                            "balanced-softmax", "ldam-drw"]
    assert SOURCES.names() == ("cifar10", "fashion-mnist")
    assert list(SOURCES) == ["cifar10", "fashion-mnist", "auto"]  # the CLI's --dataset choices


def test_channels_last_are_the_conv_models():
    assert set(CHANNELS_LAST) == {"cnn", "resnet50", "resnet32"} and "rnn" not in CHANNELS_LAST
    assert all(MODELS.meta(n).get("conv") is True for n in CHANNELS_LAST)


def test_auto_is_a_rule_not_a_source(tmp_path: Path):
    assert "auto" not in SOURCES.names() and SOURCES.rules() == ("auto",)
    with pytest.raises(ValueError, match="'auto' is a rule"):
        SOURCES["auto"]
    # no CIFAR-10 here, and conftest's no_network makes it undownloadable
    assert resolve_name("auto", tmp_path)[0] == "fashion-mnist"
    assert resolve_name("cifar10", tmp_path) == ("cifar10", "asked for")


def test_the_cell_checks_its_names_against_the_registries():
    assert CHOICES == {"model": MODELS, "variant": VARIANTS, "remedy": REMEDIES}
