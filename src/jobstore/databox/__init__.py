"""Databox glue: start-up in a container, the arbiter client and the Hypercat catalogue."""

from .startup import ArbiterTokens

__all__ = ["ArbiterTokens"]
