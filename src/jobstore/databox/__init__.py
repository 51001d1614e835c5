"""Databox glue: start-up in a container, the arbiter client and the Hypercat catalogue.

``ArbiterTokens`` is imported on first use, so the client libraries can use the catalogue's
item builder without loading the start-up code, zmq's arbiter calls and the store's auth.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ArbiterTokens"]


def __getattr__(name: str) -> Any:
    if name == "ArbiterTokens":
        from .startup import ArbiterTokens

        return ArbiterTokens
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
