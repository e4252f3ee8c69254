"""Shape models: each renders to a complex dn = n - 1 voxel volume (docs/shapes.md)."""

from ._base import AbstractShape as AbstractShape, AbstractSolid as AbstractSolid
from ._capsule import Capsule as Capsule
from ._composite import Composite as Composite, CoreShell as CoreShell
from ._dumbbell import Dumbbell as Dumbbell
from ._ellipsoid import Ellipsoid as Ellipsoid
from ._harmonics import SphericalHarmonics as SphericalHarmonics, real_sph_harm as real_sph_harm
from ._polyhedra import (
    AbstractPolyhedron as AbstractPolyhedron,
    ConvexPolyhedron as ConvexPolyhedron,
    Cube as Cube,
    Cuboctahedron as Cuboctahedron,
    Decahedron as Decahedron,
    Icosahedron as Icosahedron,
    Octahedron as Octahedron,
    TruncatedOctahedron as TruncatedOctahedron,
    polyhedron_volume as polyhedron_volume,
)
from ._radial_map import RadialMap as RadialMap
from ._sphere import Sphere as Sphere
from ._spindle import Spindle as Spindle
from ._superellipsoid import Superellipsoid as Superellipsoid
from ._volume_map import VolumeMap as VolumeMap
