"""Named, pluggable components: the policy picks detectors, anonymizers and encoders by name."""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(factory: Callable[..., T]) -> Callable[..., T]:
            self._factories[name] = factory
            return factory

        return add

    def names(self) -> list[str]:
        return sorted(self._factories)

    def create(self, name: str, **params: Any) -> T:
        if name not in self._factories:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        try:
            return self._factories[name](**params)
        except TypeError as exc:  # a wrong parameter name in the policy
            raise ValueError(f"{self.kind} {name!r}: bad parameters {params}: {exc}") from exc
