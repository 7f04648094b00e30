"""One registry type for every named choice: models, variants, augmentations, data sources.

Like torchvision's `register_model` / `get_model`: entries are registered by name (a taken
name raises), looked up by name (an unknown one lists the choices), and carry metadata
(a model's `conv=True`). A *rule* is a name a user may give that is not an entry but picks
one when resolved (the data sources' `auto`): it is offered as a choice, never looked up.

    MODELS: Registry[ModelFactory] = Registry("model")

    @MODELS.register("cnn", conv=True)
    def cnn(num_classes=10, in_shape=(3, 32, 32)): ...

    MODELS["cnn"]           # the factory; MODELS["vgg"] -> ValueError naming the choices
    list(MODELS)            # every name a user may give: entries, then rules
    MODELS.names()          # the entries alone, what tests are generated over
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Generic, TypeVar, overload

from benchmark.errors import UserError

T = TypeVar("T")
Rule = Callable[..., tuple[str, str]]  # (context) -> (the entry it picks, why)
_MISSING: Any = object()


class RegistryError(UserError, ValueError):
    """A name that is taken, unknown, or a rule where an entry is needed; the message says
    which and lists the choices."""


class Registry(Generic[T]):
    """Named entries of one kind, each with read-only metadata, plus rules that pick one."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # what an entry is, for messages: "model", "variant", "dataset"
        self._entries: dict[str, tuple[T, Mapping[str, Any]]] = {}
        self._rules: dict[str, Rule] = {}

    # ---- registering ----------------------------------------------------------------------

    @overload
    def register(self, name: str, obj: None = None, **meta: Any) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, obj: T, **meta: Any) -> T: ...

    def register(self, name: str, obj: T | None = None, **meta: Any) -> T | Callable[[T], T]:
        """Add `obj` as `name` (or, without `obj`, a decorator that adds what it decorates).
        `meta` is the entry's metadata, read back with `meta(name)` and `where(...)`."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        self._refuse_taken(name)

        def add(entry: T) -> T:
            self._refuse_taken(name)
            self._entries[name] = (entry, MappingProxyType(dict(meta)))
            return entry

        return add if obj is None else add(obj)

    def rule(self, name: str, resolve: Rule) -> None:
        """Offer `name` as a choice that `resolve(*context)` turns into (an entry, why)."""
        self._refuse_taken(name)
        self._rules[name] = resolve

    def _refuse_taken(self, name: str) -> None:
        if name in self._entries or name in self._rules:
            raise RegistryError(f"{self.kind} {name!r} is already registered; choose another "
                                "name (a test replaces an entry with `temporarily`)")

    # ---- looking up -----------------------------------------------------------------------

    def get(self, name: str, default: Any = _MISSING) -> T:
        """The entry `name`; an unknown name raises, naming the choices, unless a default is
        given (then this is dict.get, which is what pytest's monkeypatch.setitem calls)."""
        if name in self._entries:
            return self._entries[name][0]
        if default is not _MISSING:
            return default
        if name in self._rules:
            raise RegistryError(f"{self.kind} {name!r} is a rule, not an entry: resolve it "
                                f"first (it picks one of {', '.join(self._entries)})")
        raise RegistryError(f"unknown {self.kind} {name!r}; choose one of "
                            f"{', '.join(self.choices())}")

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def resolve(self, name: str, *context: Any) -> tuple[str, str]:
        """(the entry `name` stands for, why): an entry stands for itself; a rule picks one
        from `context` (for `auto`: the data folder and whether to download)."""
        if name in self._entries:
            return name, "asked for"
        if name not in self._rules:
            self.get(name)  # raises, listing the choices
        picked, why = self._rules[name](*context)
        self.get(picked)  # a rule must pick an entry
        return picked, why

    def meta(self, name: str) -> Mapping[str, Any]:
        """The metadata `name` was registered with (read-only; empty when none)."""
        self.get(name)
        return self._entries[name][1]

    def where(self, **meta: Any) -> AbstractSet[str]:
        """The entries whose metadata has these values, as a live view: `MODELS.where(conv=True)`
        also holds a conv net registered after the call."""
        return _Where(self, meta)

    # ---- listing --------------------------------------------------------------------------

    def names(self) -> tuple[str, ...]:
        """The entries, in registration order (no rules): what tests are generated over."""
        return tuple(self._entries)

    def rules(self) -> tuple[str, ...]:
        return tuple(self._rules)

    def choices(self) -> tuple[str, ...]:
        """Every name a user may give: the entries, then the rules (a CLI's `choices=`)."""
        return (*self._entries, *(r for r in self._rules if r not in self._entries))

    def __iter__(self) -> Iterator[str]:
        return iter(self.choices())

    def __len__(self) -> int:
        return len(self.choices())

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._rules

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.choices())})"

    # ---- replacing, for tests -------------------------------------------------------------

    def __setitem__(self, name: str, obj: T) -> None:
        """Set `name` to `obj` with no taken-name check, keeping an existing entry's metadata:
        for tests (pytest's monkeypatch.setitem). An entry named like a rule hides the rule
        until it is deleted. Code registers with `register`."""
        meta = self._entries[name][1] if name in self._entries else MappingProxyType({})
        self._entries[name] = (obj, meta)

    def __delitem__(self, name: str) -> None:
        if name not in self._entries:
            raise KeyError(name)
        del self._entries[name]

    @contextmanager
    def temporarily(self, name: str, obj: T, **meta: Any) -> Iterator[T]:
        """`name` as `obj` (with `meta`) inside the block, as it was after it."""
        before = self._entries.get(name)
        self._entries[name] = (obj, MappingProxyType(dict(meta)))
        try:
            yield obj
        finally:
            if before is None:
                del self._entries[name]
            else:
                self._entries[name] = before


class _Where(AbstractSet[str]):
    """The entries of a registry whose metadata match, computed at each use."""

    def __init__(self, registry: Registry[Any], meta: Mapping[str, Any]) -> None:
        self._registry, self._meta = registry, dict(meta)

    def _matches(self, name: str) -> bool:
        have = self._registry.meta(name)
        return all(k in have and have[k] == v for k, v in self._meta.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._registry.names() and self._matches(name)

    def __iter__(self) -> Iterator[str]:
        return (n for n in self._registry.names() if self._matches(n))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"{{{', '.join(map(repr, self))}}}"
