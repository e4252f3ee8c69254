"""diffscat: differentiable multi-slice Fourier transform (MSFT) simulator of wide-angle diffraction."""

from . import detectors as detectors, io as io, materials as materials, plot as plot, shapes as shapes
from ._compile_cache import enable_compile_cache as enable_compile_cache
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
from ._plan import plan_report as plan_report
from ._plot_shape import plot_shape as plot_shape
from ._preflight import MemoryBudgetError as MemoryBudgetError
from ._rotation import (
    euler_from_rotation as euler_from_rotation,
    quaternion_from_rotation as quaternion_from_rotation,
    rotation_from_axis_angle as rotation_from_axis_angle,
    rotation_from_euler as rotation_from_euler,
    rotation_from_quaternion as rotation_from_quaternion,
    rotation_from_scatman as rotation_from_scatman,
    rotation_x as rotation_x,
    rotation_y as rotation_y,
    rotation_z as rotation_z,
    scatman_from_rotation as scatman_from_rotation,
)
from ._simulate import (
    ValidityWarning as ValidityWarning,
    default_grid as default_grid,
    far_field as far_field,
    simulate as simulate,
)
from ._stack import stack as stack
from .materials import Material as Material, material as material
from .shapes import (
    AbstractPolyhedron as AbstractPolyhedron,
    AbstractShape as AbstractShape,
    AbstractSolid as AbstractSolid,
    Capsule as Capsule,
    Composite as Composite,
    ConvexPolyhedron as ConvexPolyhedron,
    CoreShell as CoreShell,
    Cube as Cube,
    Cuboctahedron as Cuboctahedron,
    Decahedron as Decahedron,
    Dumbbell as Dumbbell,
    Ellipsoid as Ellipsoid,
    Icosahedron as Icosahedron,
    Octahedron as Octahedron,
    RadialMap as RadialMap,
    Sphere as Sphere,
    SphericalHarmonics as SphericalHarmonics,
    Spindle as Spindle,
    Superellipsoid as Superellipsoid,
    TruncatedOctahedron as TruncatedOctahedron,
    VolumeMap as VolumeMap,
)

try:  # one source of truth: the version in pyproject.toml, read from the installed metadata
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("diffscat")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"
