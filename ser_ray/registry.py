"""Registries by name: one decorator factory shared by extractors, models, augmentation steps
and VAD detectors, so every registry rejects duplicates and names its classes the same way."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T", bound=type)


def registrar(table: dict[str, type], kind: str) -> Callable[[str], Callable[[T], T]]:
    """``register(name)`` class decorator storing classes in ``table`` and setting ``cls.name``."""

    def register(name: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            if name in table:
                raise ValueError(f"{kind} {name!r} is already registered by {table[name]}")
            cls.name = name
            table[name] = cls
            return cls

        return deco

    return register
