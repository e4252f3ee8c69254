"""diffscat: differentiable multi-slice Fourier transform (MSFT) simulator of wide-angle diffraction."""

from . import plot as plot, shapes as shapes
from ._experiment import (
    AbstractDetector as AbstractDetector,
    AngleGrid as AngleGrid,
    Directions as Directions,
    Experiment as Experiment,
    FlatDetector as FlatDetector,
    PixelDirections as PixelDirections,
    QGrid as QGrid,
)
from ._grid import VoxelGrid as VoxelGrid, default_pitch as default_pitch
from ._rotation import (
    quaternion_from_rotation as quaternion_from_rotation,
    rotation_from_axis_angle as rotation_from_axis_angle,
    rotation_from_euler as rotation_from_euler,
    rotation_from_quaternion as rotation_from_quaternion,
    rotation_x as rotation_x,
    rotation_y as rotation_y,
    rotation_z as rotation_z,
)
from ._simulate import (
    ValidityWarning as ValidityWarning,
    default_grid as default_grid,
    far_field as far_field,
    simulate as simulate,
)
from ._stack import stack as stack
from .shapes import (
    AbstractShape as AbstractShape,
    AbstractSolid as AbstractSolid,
    Ellipsoid as Ellipsoid,
    Sphere as Sphere,
    VolumeMap as VolumeMap,
)

__version__ = "0.1.0"
