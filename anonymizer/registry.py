"""Named, pluggable components: the policy picks detectors, anonymizers and encoders by name."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

T = TypeVar("T")


class ComponentError(ValueError):
    """A component name or parameter a registry would refuse; `param` names the parameter (None: the name)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(factory: Callable[..., T]) -> Callable[..., T]:
            self._factories[name] = factory
            return factory

        return add

    def register_lazy(self, name: str, target: str) -> None:
        """`target` is "module:attribute", imported on first use: a component with heavy dependencies (torch,
        a generator's weights) costs nothing until a policy names it, and its module need not import ours."""
        self._lazy[name] = target

    def factory(self, name: str) -> Callable[..., T]:
        if name not in self._factories and name in self._lazy:
            module, attr = self._lazy[name].split(":")
            self._factories[name] = getattr(importlib.import_module(module), attr)
        if name not in self._factories:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._factories[name]

    def names(self) -> list[str]:
        return sorted({*self._factories, *self._lazy})

    def check(self, name: str, params: Mapping[str, Any], injected: Iterable[str] = ()) -> None:
        """Raise ComponentError unless `name` is registered and `params` fit its factory's signature: every
        name known, every required parameter given. Nothing is built (inspect only), so a policy is checked
        before any model loads. `injected`: parameters the caller passes itself (model_dir, region settings);
        they count as given, and the policy may not set them too. A factory taking **kwargs accepts any name."""
        if name not in self.names():
            raise ComponentError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        injected = set(injected)
        try:
            signature = inspect.signature(self.factory(name))
        except (TypeError, ValueError):  # no signature to read (a builtin): accept, create() still checks
            return
        settable = {p.name: p for p in signature.parameters.values()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        for key in params:
            if key in injected:
                raise ComponentError(f"the pipeline passes this to {self.kind} {name!r} itself: not a policy param",
                                     param=key)
            if key not in settable and not open_ended:
                known = ", ".join(sorted(settable.keys() - injected)) or "(none)"
                raise ComponentError(f"unknown parameter for {self.kind} {name!r}; known: {known}", param=key)
        missing = [p for p, s in settable.items() if s.default is s.empty and p not in params and p not in injected]
        if missing:
            raise ComponentError(f"{self.kind} {name!r} needs parameter {missing[0]!r}", param=missing[0])

    def create(self, name: str, **params: Any) -> T:
        factory = self.factory(name)
        try:
            return factory(**params)
        except TypeError as exc:  # a wrong parameter name in the policy
            raise ValueError(f"{self.kind} {name!r}: bad parameters {params}: {exc}") from exc
