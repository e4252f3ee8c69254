"""MSFT and Born engines: slice sources and far-field transforms."""

from ._fast import (
    chebyshev_planes as chebyshev_planes,
    chebyshev_t as chebyshev_t,
    compressed_far_field as compressed_far_field,
)
from ._interp import (
    INTERP_TAPS as INTERP_TAPS,
    interpolated_far_field as interpolated_far_field,
    uniform_grid_spec as uniform_grid_spec,
)
from ._propagate import default_pad as default_pad, propagated_envelope as propagated_envelope
from ._sources import METHODS as METHODS, slice_sources as slice_sources
from ._transforms import (
    direct_far_field as direct_far_field,
    separable_far_field as separable_far_field,
)
