"""Backends build labs; `get_backend` picks one by name."""

from __future__ import annotations

from lab.backends.base import Backend
from lab.errors import InputError

BACKENDS = ("netns", "kind")


def get_backend(name: str) -> Backend:
    if name == "netns":
        from lab.backends.netns import NetnsBackend

        return NetnsBackend()
    if name == "kind":
        try:
            from lab.backends.kind import KindBackend
        except ImportError:
            raise InputError("the kind backend is not available in this build") from None
        return KindBackend()
    raise InputError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
