"""Convex polyhedra (intersections of half-spaces n . r <= d) and the named crystal shapes."""

from __future__ import annotations

import abc
import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import check_finite, check_positive
from .._custom_types import as_float, is_concrete, mm
from .._grid import VoxelGrid
from ._base import AbstractSolid, extent_hint, material, partial_volume_fill, placement

__all__ = [
    "AbstractPolyhedron",
    "ConvexPolyhedron",
    "Cube",
    "Octahedron",
    "TruncatedOctahedron",
    "Cuboctahedron",
    "Icosahedron",
    "Decahedron",
    "polyhedron_volume",
    "polyhedron_vertices",
]

PHI = (1 + math.sqrt(5)) / 2

# --- geometry of an intersection of half-spaces, in JAX (differentiable in normals and distances) -------


def polyhedron_vertices(normals, distances):
    """Candidate vertices of {r : N r <= d}: every triple of planes, with a feasibility mask.

    Returns (vertices (T, 3), feasible (T,), triples (T, 3) static NumPy indices)."""
    N = jnp.asarray(normals)
    d = jnp.asarray(distances)
    k = N.shape[0]
    tri = np.array(list(itertools.combinations(range(k), 3)), dtype=np.int32)
    n1, n2, n3 = N[tri[:, 0]], N[tri[:, 1]], N[tri[:, 2]]
    d1, d2, d3 = d[tri[:, 0]], d[tri[:, 1]], d[tri[:, 2]]
    c23, c31, c12 = jnp.cross(n2, n3), jnp.cross(n3, n1), jnp.cross(n1, n2)
    det = jnp.sum(n1 * c23, axis=-1)
    # unit normals: |det| <= 1. A triple of coplanar normals (e.g. a Decahedron's Ino facet and the two faces
    # at its edge when ino = 0) has det ~1e-8 from float32 rounding, not 0: its "vertex" is garbage, so the
    # float32 threshold sits well above rounding (measured: the float32 Decahedron volume was -4 % to +23 % off
    # with 1e-8)
    ok = jnp.abs(det) > (1e-8 if N.dtype == jnp.float64 else 1e-5)
    # Cramer's rule for the three planes n_i . v = d_i
    v = (d1[:, None] * c23 + d2[:, None] * c31 + d3[:, None] * c12) / jnp.where(ok, det, 1.0)[:, None]
    scale = jnp.max(jnp.abs(d))
    tol = (1e-9 if N.dtype == jnp.float64 else 1e-4) * scale
    feas = ok & jnp.all(mm(v, N.T) - d <= tol, axis=-1)
    return v, feas, tri


@jax.jit
def feasible_vertices(normals, distances):
    """(vertices (T, 3), feasible (T,)) of {r : N r <= d}; see `polyhedron_vertices`."""
    v, feas, _ = polyhedron_vertices(normals, distances)
    return v, feas


def _edge_tables(k: int):
    """Static tables over ordered face pairs (f, g): for each, the indices (into the triples list) of the
    k - 2 candidate vertices on the line where planes f and g meet."""
    tri = list(itertools.combinations(range(k), 3))
    pos = {t: i for i, t in enumerate(tri)}
    pair = {}
    F, G, H, idx = [], [], [], []
    for f in range(k):
        for g in range(k):
            if f == g:
                continue
            pair[(f, g)] = len(F)
            F.append(f)
            G.append(g)
            hs = [h for h in range(k) if h not in (f, g)]
            H.append(hs)
            idx.append([pos[tuple(sorted((f, g, h)))] for h in hs])
    PH = [[pair[(f, h)] for h in hs] for f, hs in zip(F, H, strict=True)]
    return np.array(F), np.array(G), np.array(H), np.array(PH), np.array(idx)


@jax.jit
def polyhedron_volume(normals, distances):
    """Exact volume of the bounded polyhedron {r : N r <= d}, sort-free:

        V = (1/3) sum_f d_f A_f,   A_f = (1/2) sum_g h_fg L_fg   (divergence theorem in 3-D, then on each face)

    with L_fg the length of the edge where faces f and g meet (the spread of the feasible vertices on the line
    of the two planes) and h_fg the signed in-plane distance of that edge from the foot point d_f n_f.
    Redundant planes and vertices where more than three faces meet are fine."""
    N = jnp.asarray(normals)
    d = jnp.asarray(distances)
    k = N.shape[0]
    v, feas, _ = polyhedron_vertices(N, d)
    F, G, H, PH, idx = _edge_tables(k)
    V, m = v[idx], feas[idx]  # (P, k-2, 3), (P, k-2)
    nf, ng = N[F], N[G]
    t = jnp.cross(nf, ng)
    tn = jnp.linalg.norm(t, axis=-1)
    ok = tn > 1e-8
    tn = jnp.where(ok, tn, 1.0)
    s = jnp.sum(V * (t / tn[:, None])[:, None, :], axis=-1)
    anym = jnp.any(m, axis=1) & ok
    L = jnp.max(jnp.where(m, s, -jnp.inf), axis=1) - jnp.min(jnp.where(m, s, jnp.inf), axis=1)
    L = jnp.where(anym, L, 0.0)
    # in-plane unit normal of the edge, pointing out of face f
    mv = (ng - jnp.sum(ng * nf, axis=-1, keepdims=True) * nf) / tn[:, None]
    cnt = jnp.maximum(jnp.sum(m, axis=1), 1)
    x0 = jnp.sum(jnp.where(m[..., None], V, 0.0), axis=1) / cnt[:, None]
    h = jnp.sum(mv * (x0 - d[F][:, None] * nf), axis=-1)
    # An edge line shared by several planes h (e.g. a redundant plane touching along an edge) must count
    # once for face f: skip (f, g) if a lower-numbered h holds the same edge with the same outward direction.
    # (Opposite directions are the two sides of a degenerate face; they cancel and are kept.)
    rows = np.arange(len(F))
    pa = V[rows, jnp.argmax(jnp.where(m, s, -jnp.inf), axis=1)]
    pb = V[rows, jnp.argmin(jnp.where(m, s, jnp.inf), axis=1)]
    tol = (1e-9 if N.dtype == jnp.float64 else 1e-4) * jnp.max(jnp.abs(d))
    on = (jnp.abs(jnp.sum(pa[:, None, :] * N[H], -1) - d[H]) < tol) & (
        jnp.abs(jnp.sum(pb[:, None, :] * N[H], -1) - d[H]) < tol
    )
    same = jnp.sum(mv[PH] * mv[:, None, :], axis=-1) > 0.5
    dup = jnp.any(on & same & (H < G[:, None]), axis=1)
    anym = anym & ~dup
    area = jnp.zeros(k, N.dtype).at[F].add(0.5 * jnp.where(anym, h * L, 0.0))
    return jnp.sum(d * area) / 3.0


@jax.jit
def polyhedron_circumradius(normals, distances):
    """Largest |vertex| of {r : N r <= d}."""
    v, feas = feasible_vertices(normals, distances)
    return jnp.max(jnp.where(feas, jnp.linalg.norm(v, axis=-1), 0.0))


def _planes_sdf(p, N, d):
    """max_f (n_f . p - d_f): exact inside and next to the faces, a lower bound near edges outside."""
    return jnp.max(mm(p, N.T) - d, axis=-1)


def _planes_fill(grid: VoxelGrid, N, d, M, b, dtype):
    """Partial-volume fill of {r_body : N r_body <= d} (r_body = r_lab M - b) on `grid`: the product of the
    half-spaces' fills, each exact for its plane (its lab normal M n is known, no finite differences), so a
    body whose faces lie along voxel planes is filled exactly; other edges are right to second order."""
    x, y, z = grid.axes(dtype)
    G = mm(N, M.T)  # lab-frame gradients of n . r_body, (k, 3)
    off = mm(N, b) + d
    s = x[:, None, None, None] * G[:, 0] + y[None, :, None, None] * G[:, 1] + z[None, None, :, None] * G[:, 2]
    # materialised once: XLA (CPU) otherwise copies the piecewise cubic into every consumer of the fill
    # (docs/performance.md "Compiled programs", session 30)
    return jax.lax.optimization_barrier(jnp.prod(partial_volume_fill(s - off, G, grid.pitch), axis=-1))


def check_normals(normals, name: str = "normals"):
    """Validate unit normals (k >= 4, k x 3) that enclose a bounded body: no direction u != 0 with
    n . u <= 0 for every normal (the recession cone of {N r <= d} is {0})."""
    N = as_float(normals, name)
    if N.ndim != 2 or N.shape[1] != 3 or N.shape[0] < 4:
        raise ValueError(f"{name} must have shape (k, 3) with k >= 4, got {N.shape}")
    N = check_finite(N, name)
    if not is_concrete(N):
        return N
    a = np.asarray(N, float)
    norms = np.linalg.norm(a, axis=1)
    if np.max(np.abs(norms - 1)) > 1e-6:
        raise ValueError(f"{name} must be unit vectors, got norms {np.round(norms, 6).tolist()}")
    msg = f"{name} must enclose a bounded body (they must not all lie in one closed half-space)"
    if np.linalg.matrix_rank(a, tol=1e-9) < 3:
        raise ValueError(msg)
    for i, j in itertools.combinations(range(len(a)), 2):
        u = np.cross(a[i], a[j])
        nu = np.linalg.norm(u)
        if nu < 1e-9:
            continue
        s = a @ (u / nu)
        if np.all(s <= 1e-9) or np.all(s >= -1e-9):
            raise ValueError(msg)
    return N


class AbstractPolyhedron(AbstractSolid):
    """A solid {r_body : n_f . r_body <= d_f}; subclasses give `planes()` (unit normals (k, 3), distances (k,))."""

    @abc.abstractmethod
    def planes(self) -> tuple[Float[Array, "k 3"], Float[Array, " k"]]:
        """Unit outward normals and plane distances from the body origin (length units)."""

    def sdf_body(self, p):
        N, d = self.planes()
        return _planes_sdf(p, N.astype(p.dtype), d.astype(p.dtype))

    def grid_fill(self, grid: VoxelGrid, rotation=None, centre=None) -> Float[Array, "nx ny nz"]:
        dt = self.dtype
        M, b = self.body_frame(rotation, centre)
        N, d = self.planes()
        return _planes_fill(grid, N.astype(dt), d.astype(dt), M, b, dt)


def _init_common(self, delta, beta, rotation, centre, dt):
    self.delta, self.beta = material(delta, beta, dt)
    self.rotation, self.centre = placement(rotation, centre, dt)


class ConvexPolyhedron(AbstractPolyhedron):
    """A convex polyhedron {r_body : n_f . r_body <= d_f}.

    **Arguments:**
    - `normals`: (k, 3) outward unit normals, k >= 4, enclosing a bounded body (checked). Differentiable.
    - `distances`: (k,) > 0, distance of each face plane from the body origin (so the origin is inside).
    - `delta`, `beta`, `rotation`, `centre`: as for every solid.

    Soft edges: the signed distance max_f (n_f . r - d_f) is exact inside and next to faces. The volume is
    exact (divergence theorem over the face polygons), as is the bounding radius (largest vertex).
    """

    normals: Float[Array, "k 3"]
    distances: Float[Array, " k"]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, normals, distances, delta=0.0, beta=0.0, *, rotation=None, centre=None):
        N = check_normals(normals, "normals")
        d = as_float(distances, "distances", (N.shape[0],), N.dtype)
        self.normals = N
        self.distances = check_positive(d, "distances")
        _init_common(self, delta, beta, rotation, centre, N.dtype)
        self.extent_hint = extent_hint(self.bounding_radius())

    def planes(self):
        return self.normals, self.distances

    def body_radius(self):
        return polyhedron_circumradius(self.normals, self.distances)

    def volume(self):
        return polyhedron_volume(self.normals, self.distances)


def _unit(a):
    a = np.asarray(a, float)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


_CUBE_N = np.concatenate([np.eye(3), -np.eye(3)])
_OCT_N = _unit(np.array(list(itertools.product((-1, 1), repeat=3)), float))
_ICO_N = _unit(
    np.concatenate(
        [
            np.array(list(itertools.product((-1, 1), repeat=3)), float),
            *[
                np.roll(np.array([[0, s1 * PHI, s2 / PHI] for s1 in (-1, 1) for s2 in (-1, 1)]), k, axis=1)
                for k in range(3)
            ],
        ]
    )
)


def _edge(edge, name="edge"):
    return check_positive(as_float(edge, name, ()), name)


class Cube(AbstractPolyhedron):
    """A cube of edge length `edge` (faces normal to the body axes, |x|, |y|, |z| <= edge / 2)."""

    edge: Float[Array, ""]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, edge, delta=0.0, beta=0.0, *, rotation=None, centre=None):
        self.edge = _edge(edge)
        _init_common(self, delta, beta, rotation, centre, self.edge.dtype)
        self.extent_hint = extent_hint(self.bounding_radius())

    def planes(self):
        N = jnp.asarray(_CUBE_N, self.edge.dtype)
        return N, jnp.full((6,), 0.5, self.edge.dtype) * self.edge

    def body_radius(self):
        return self.edge * (math.sqrt(3) / 2)

    def volume(self):
        return self.edge**3


class Octahedron(AbstractPolyhedron):
    """A regular octahedron of edge length `edge`, vertices on the body axes at edge / sqrt 2
    (|x| + |y| + |z| <= edge / sqrt 2)."""

    edge: Float[Array, ""]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, edge, delta=0.0, beta=0.0, *, rotation=None, centre=None):
        self.edge = _edge(edge)
        _init_common(self, delta, beta, rotation, centre, self.edge.dtype)
        self.extent_hint = extent_hint(self.bounding_radius())

    def planes(self):
        N = jnp.asarray(_OCT_N, self.edge.dtype)
        return N, jnp.full((8,), 1 / math.sqrt(6), self.edge.dtype) * self.edge

    def body_radius(self):
        return self.edge / math.sqrt(2)

    def volume(self):
        return math.sqrt(2) / 3 * self.edge**3


class TruncatedOctahedron(AbstractPolyhedron):
    """An octahedron of edge `edge` (vertices at R = edge / sqrt 2 on the body axes) with its six vertices cut
    by {100} planes at distance R (1 - truncation).

    `truncation` in [0, 1/2] is the cut fraction of each octahedron edge: 0 = octahedron, 1/3 = the
    Archimedean truncated octahedron (regular hexagons, edge `edge` / 3), 1/2 = cuboctahedron (edge `edge` / 2).
    Volume (4/3) R^3 (1 - 3 t^3). Both parameters are differentiable.
    """

    edge: Float[Array, ""]
    truncation: Float[Array, ""]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, edge, truncation=1.0 / 3.0, delta=0.0, beta=0.0, *, rotation=None, centre=None):
        self.edge = _edge(edge)
        t = as_float(truncation, "truncation", (), self.edge.dtype)
        msg = "truncation must be in [0, 1/2]"
        if is_concrete(t):
            if not (0.0 <= float(t) <= 0.5):
                raise ValueError(f"{msg}, got {float(t)}")
        else:
            t = eqx.error_if(t, ~((t >= 0) & (t <= 0.5)), msg)
        self.truncation = t
        _init_common(self, delta, beta, rotation, centre, self.edge.dtype)
        self.extent_hint = extent_hint(self.bounding_radius())

    def planes(self):
        dt = self.edge.dtype
        R = self.edge / math.sqrt(2)
        N = jnp.asarray(np.concatenate([_OCT_N, _CUBE_N]), dt)
        d = jnp.concatenate(
            [jnp.full((8,), 1 / math.sqrt(3), dt) * R, jnp.ones((6,), dt) * R * (1 - self.truncation)]
        )
        return N, d

    def body_radius(self):
        t = self.truncation
        return self.edge / math.sqrt(2) * jnp.sqrt((1 - t) ** 2 + t**2)

    def volume(self):
        R = self.edge / math.sqrt(2)
        return 4.0 / 3.0 * R**3 * (1 - 3 * self.truncation**3)


class Cuboctahedron(AbstractPolyhedron):
    """A cuboctahedron of edge `edge`: vertices at (+-1, +-1, 0) edge / sqrt 2 and permutations; square {100}
    faces at edge / sqrt 2, triangular {111} faces at edge sqrt(2/3). Volume 5 sqrt(2) / 3 edge^3."""

    edge: Float[Array, ""]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, edge, delta=0.0, beta=0.0, *, rotation=None, centre=None):
        self.edge = _edge(edge)
        _init_common(self, delta, beta, rotation, centre, self.edge.dtype)
        self.extent_hint = extent_hint(self.bounding_radius())

    def planes(self):
        dt = self.edge.dtype
        N = jnp.asarray(np.concatenate([_OCT_N, _CUBE_N]), dt)
        d = jnp.concatenate([jnp.full((8,), math.sqrt(2 / 3), dt), jnp.full((6,), 1 / math.sqrt(2), dt)])
        return N, d * self.edge

    def body_radius(self):
        return self.edge

    def volume(self):
        return 5 * math.sqrt(2) / 3 * self.edge**3


class Icosahedron(AbstractPolyhedron):
    """A regular icosahedron of edge `edge`, vertices at (0, +-1, +-phi) edge / 2 and cyclic permutations
    (a two-fold axis along body z). Volume 5 (3 + sqrt 5) / 12 edge^3."""

    edge: Float[Array, ""]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, edge, delta=0.0, beta=0.0, *, rotation=None, centre=None):
        self.edge = _edge(edge)
        _init_common(self, delta, beta, rotation, centre, self.edge.dtype)
        self.extent_hint = extent_hint(self.bounding_radius())

    def planes(self):
        dt = self.edge.dtype
        inradius = PHI**2 / (2 * math.sqrt(3))
        return jnp.asarray(_ICO_N, dt), jnp.full((20,), inradius, dt) * self.edge

    def body_radius(self):
        return self.edge * math.sqrt(PHI * math.sqrt(5)) / 2

    def volume(self):
        return 5 * (3 + math.sqrt(5)) / 12 * self.edge**3


_S36, _C36 = math.sin(math.pi / 5), math.cos(math.pi / 5)
_TAN36 = _S36 / _C36
_DEC_RHO = 1 / (2 * _S36)  # equatorial vertex radius / edge
_DEC_H = math.sqrt(1 - _DEC_RHO**2)  # apex height / edge


def _decahedron_planes(edge, ino, dt):
    """The convex part: 10 bipyramid faces and 5 Ino {100} facets (unit normals, distances)."""
    rho, h = _DEC_RHO, _DEC_H
    N, d = [], []
    for k in range(5):
        a = (2 * k + 1) * math.pi / 5  # toward the middle of the equatorial edge k, k + 1
        r_mid = rho * _C36  # distance of that edge from the axis
        for s in (1.0, -1.0):
            n = np.array([h * math.cos(a), h * math.sin(a), s * r_mid])
            N.append(n / np.linalg.norm(n))
            d.append(h * r_mid / np.linalg.norm(n))
    base = jnp.asarray(np.array(N), dt), jnp.asarray(np.array(d), dt) * edge
    Nino = jnp.asarray(
        np.array(
            [
                [math.cos((2 * k + 1) * math.pi / 5), math.sin((2 * k + 1) * math.pi / 5), 0.0]
                for k in range(5)
            ]
        ),
        dt,
    )
    dino = edge * (_DEC_RHO * _C36) * (1 - ino) * jnp.ones((5,), dt)
    return jnp.concatenate([base[0], Nino]), jnp.concatenate([base[1], dino])


def _notch_planes(edge, marks, k, dt):
    """The two half-spaces whose intersection is Marks notch k (a V-groove at equatorial vertex k),
    written as n . r <= d (the notch is where both hold)."""
    a = 2 * k * math.pi / 5
    u = np.array([math.cos(a), math.sin(a), 0.0])
    v = np.array([-math.sin(a), math.cos(a), 0.0])
    # notch: r.u - |r.v| tan36 >= apex, i.e. -(u cos36 -+ v sin36) . r <= -apex cos36
    N = jnp.asarray(np.array([-(u * _C36 - v * _S36), -(u * _C36 + v * _S36)]), dt)
    apex = edge * _DEC_RHO * (1 - marks)
    return N, -apex * _C36 * jnp.ones((2,), dt)


@eqx.filter_jit
def _decahedron_sdf(shape, p):
    return shape._sdf(p)


class Decahedron(AbstractSolid):
    """A pentagonal bipyramid (Ino / Marks decahedron), five-fold axis along body z, with all edges equal to
    `edge` (Johnson solid J13: equatorial vertices at edge / (2 sin 36 deg), apices at +-0.526 edge), an
    equatorial vertex on body +x.

    - `ino` in [0, 1): Ino truncation, five {100} facets parallel to the axis cutting the equatorial edges
      at (1 - ino) times their distance from the axis (0 = none).
    - `marks` in [0, 0.6]: Marks re-entrant notches at the five twin boundaries (equatorial vertices), a
      V-groove parallel to the axis with a 108 deg opening whose apex lies at (1 - marks) times the vertex
      radius (0 = none). A simplified model: the grooves are parallel to the axis rather than {111} facets.

    The body is convex part minus notches, its signed distance max(d_convex, -d_notch_k). The volume is exact:
    the convex polyhedron's minus the (disjoint) convex notch pieces.

    - `notched` (keyword, static, default True): False leaves the notches out of the rendering, the signed
      distance and the volume (then `marks` must be 0): the plain Ino decahedron renders ~2x faster, which the
      fit drivers use for the rigid class (edge and orientation free, marks fixed at 0). With True and
      `marks` = 0 the body is the same; only the partial fills of the voxels touching the five equatorial
      vertices differ.
    """

    edge: Float[Array, ""]
    ino: Float[Array, ""]
    marks: Float[Array, ""]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)
    notched: bool = eqx.field(static=True, repr=False, default=True)

    def __init__(
        self,
        edge,
        ino=0.0,
        marks=0.0,
        delta=0.0,
        beta=0.0,
        *,
        rotation=None,
        centre=None,
        notched: bool = True,
    ):
        self.edge = _edge(edge)
        dt = self.edge.dtype
        if not isinstance(notched, bool):
            raise ValueError(f"notched must be a bool, got {notched!r}")
        self.notched = notched
        vals = []
        for v, name, hi, closed in ((ino, "ino", 1.0, False), (marks, "marks", 0.6, True)):
            t = as_float(v, name, (), dt)
            msg = f"{name} must be in [0, {hi}{']' if closed else ')'}"
            bad = (lambda x: not (0 <= x <= hi)) if closed else (lambda x: not (0 <= x < hi))
            if is_concrete(t):
                if bad(float(t)):
                    raise ValueError(f"{msg}, got {float(t)}")
            else:
                t = eqx.error_if(t, ~((t >= 0) & ((t <= hi) if closed else (t < hi))), msg)
            vals.append(t)
        self.ino, self.marks = vals
        if not notched and is_concrete(self.marks) and float(self.marks) != 0.0:
            raise ValueError(f"marks must be 0 when notched=False, got {float(self.marks)}")
        _init_common(self, delta, beta, rotation, centre, dt)
        self.extent_hint = extent_hint(self.bounding_radius())

    def convex_planes(self):
        """Normals and distances of the convex part (bipyramid + Ino facets)."""
        return _decahedron_planes(self.edge, self.ino, self.edge.dtype)

    def sdf_body(self, p):
        return _decahedron_sdf(self, p)

    def _sdf(self, p):
        N, d = self.convex_planes()
        out = _planes_sdf(p, N.astype(p.dtype), d.astype(p.dtype))
        for k in range(5 if self.notched else 0):
            Nn, dn = _notch_planes(self.edge, self.marks, k, p.dtype)
            out = jnp.maximum(out, -_planes_sdf(p, Nn, dn))
        return out

    def grid_fill(self, grid: VoxelGrid, rotation=None, centre=None) -> Float[Array, "nx ny nz"]:
        # the convex part's fill times, for each (disjoint) notch, one minus the notch's fill
        dt = self.dtype
        M, b = self.body_frame(rotation, centre)
        N, d = self.convex_planes()
        fill = _planes_fill(grid, N.astype(dt), d.astype(dt), M, b, dt)
        for k in range(5 if self.notched else 0):
            Nn, dn = _notch_planes(self.edge, self.marks, k, dt)
            fill = fill * (1 - _planes_fill(grid, Nn, dn, M, b, dt))
        return fill

    def body_radius(self):
        return self.edge * _DEC_RHO

    def volume(self):
        N, d = self.convex_planes()
        vol = polyhedron_volume(N, d)
        for k in range(5 if self.notched else 0):
            Nn, dn = _notch_planes(self.edge, self.marks, k, N.dtype)
            vol = vol - polyhedron_volume(jnp.concatenate([N, Nn]), jnp.concatenate([d, dn]))
        return vol
