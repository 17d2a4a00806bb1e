"""A small generic name -> object registry whose lookup failures list the valid names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from evomerge.errors import UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to registered objects.

    >>> r = Registry[int]("merge method")
    >>> r.add("linear", 1)
    >>> r.get("linear")
    1
    >>> r.get("lin")
    Traceback (most recent call last):
    ...
    evomerge.errors.UnknownNameError: Unknown merge method 'lin'. Available: linear.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}. Available: {', '.join(self.names())}."
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)
