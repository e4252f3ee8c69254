"""MSFT and Born engines: slice sources and far-field transforms."""

from ._sources import METHODS as METHODS, slice_sources as slice_sources
from ._transforms import (
    direct_far_field as direct_far_field,
    separable_far_field as separable_far_field,
)
