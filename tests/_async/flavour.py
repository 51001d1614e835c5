"""How a test of the asyncio flavour runs its body, written by hand (see scripts/unasync.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], limit: float = 30) -> T:
    """Run a test's coroutine in a fresh event loop; fail it if it takes over ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(main, limit))
