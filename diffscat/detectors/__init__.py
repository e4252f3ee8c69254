"""Detectors: pixel geometry (QGrid, AngleGrid, FlatDetector, Directions and their registry of config / CXI type
names), photons per pixel, polarisation, response models (noise, saturation, MCP, binning) and masks."""

from ._anglegrid import AngleGrid as AngleGrid
from ._base import (
    DETECTOR_TYPES as DETECTOR_TYPES,
    AbstractDetector as AbstractDetector,
    PixelDirections as PixelDirections,
    detector_type as detector_type,
    register_detector as register_detector,
)
from ._directions import Directions as Directions
from ._flat import FlatDetector as FlatDetector
from ._masks import (
    CXI_BAD as CXI_BAD,
    CXI_DEAD as CXI_DEAD,
    CXI_HOT as CXI_HOT,
    CXI_INVALID as CXI_INVALID,
    CXI_MISSING as CXI_MISSING,
    CXI_SATURATED as CXI_SATURATED,
    CXI_SHADOWED as CXI_SHADOWED,
    angular_mask as angular_mask,
    bad_pixels as bad_pixels,
    circular_mask as circular_mask,
    combine_masks as combine_masks,
    from_cxi_bitmask as from_cxi_bitmask,
    panel_gaps as panel_gaps,
    rectangular_mask as rectangular_mask,
    to_cxi_bitmask as to_cxi_bitmask,
)
from ._model import DetectorModel as DetectorModel
from ._photons import (
    PLANCK as PLANCK,
    SPEED_OF_LIGHT as SPEED_OF_LIGHT,
    expected_photons as expected_photons,
    fluence_from_pulse as fluence_from_pulse,
    photon_energy as photon_energy,
)
from ._polarisation import (
    POLARISATIONS as POLARISATIONS,
    pixel_weight as pixel_weight,
    polarisation_factor as polarisation_factor,
)
from ._qgrid import QGrid as QGrid
from ._response import (
    AbstractResponse as AbstractResponse,
    Background as Background,
    Binning as Binning,
    Chain as Chain,
    GaussianReadout as GaussianReadout,
    Ideal as Ideal,
    MCPGain as MCPGain,
    Poisson as Poisson,
    Saturation as Saturation,
)
