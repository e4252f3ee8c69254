"""Batching shapes for `jax.vmap`."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from .shapes import AbstractShape
from .shapes._base import with_extent_hint

__all__ = ["stack"]


def stack(shapes: Sequence[AbstractShape]) -> AbstractShape:
    """Stack shapes of one class into a batched shape (leading axis on every array leaf) for `jax.vmap`.

    Static grid-size hints may differ between the shapes; the batch takes the largest, so one voxel grid
    holds them all. Example: `jax.vmap(lambda s: ds.simulate(s, exp))(ds.stack(shapes))`.
    """
    shapes = list(shapes)
    if not shapes:
        raise ValueError("shapes must not be empty")
    kinds = {type(s) for s in shapes}
    if len(kinds) != 1:
        raise TypeError(f"shapes must all be of one class, got {sorted(k.__name__ for k in kinds)}")
    hints = [s.extent_hint for s in shapes]
    hint = None if any(h is None for h in hints) else max(hints)
    shapes = [with_extent_hint(s, hint) for s in shapes]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *shapes)
