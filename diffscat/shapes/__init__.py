"""Shape models: each renders to a complex dn = n - 1 voxel volume (docs/shapes.md)."""

from ._base import AbstractShape as AbstractShape, AbstractSolid as AbstractSolid
from ._ellipsoid import Ellipsoid as Ellipsoid
from ._sphere import Sphere as Sphere
from ._volume_map import VolumeMap as VolumeMap
