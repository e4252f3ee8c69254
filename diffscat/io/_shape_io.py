"""Generic (de)serialisation of diffscat shapes to plain dicts (type name + fields), and to HDF5 groups.

Works for every class in `diffscat.shapes` by introspecting its equinox fields: array leaves become NumPy
arrays, static fields stay Python values, nested shapes become nested dicts. No pickle, no eval: the class
is looked up by name in `diffscat.shapes`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "put_attr",
    "shape_class",
    "shape_to_dict",
    "shape_from_dict",
    "write_shape_group",
    "read_shape_group",
]


def shape_class(name: str) -> type:
    """The shape class called `name` in `diffscat.shapes` (case-insensitive); ValueError listing the options."""
    from .. import shapes
    from ..shapes import AbstractShape

    options = {
        n: c
        for n in dir(shapes)
        if isinstance(c := getattr(shapes, n), type)
        and issubclass(c, AbstractShape)
        and not inspect.isabstract(c)
        and not n.startswith("Abstract")
    }
    if not isinstance(name, str):
        raise TypeError(f"shape type must be a string, got {name!r}")
    for n, c in options.items():
        if n.lower() == name.lower():
            return c
    raise ValueError(f"unknown shape type {name!r}; available: {sorted(options)}")


def _encode(v):
    from ..shapes import AbstractShape

    if isinstance(v, AbstractShape):
        return shape_to_dict(v)
    if isinstance(v, jax.Array | np.ndarray):
        return np.asarray(v)
    if isinstance(v, list | tuple):
        if any(isinstance(x, AbstractShape) for x in v):
            return {"__list__": [_encode(x) for x in v]}
        return tuple(_encode(x) for x in v)
    if v is None or isinstance(v, bool | int | float | str | np.generic):
        return v
    raise TypeError(f"cannot serialise a shape field of type {type(v).__name__}")


def shape_to_dict(shape) -> dict[str, Any]:
    """{"type": class name, "fields": {name: value}}: arrays as NumPy arrays (a stacked shape keeps its
    leading batch axis), static fields as Python values, nested shapes as nested dicts."""
    from ..shapes import AbstractShape

    if not isinstance(shape, AbstractShape):
        raise TypeError(f"shape must be a diffscat shape, got {type(shape).__name__}")
    fields = {f.name: _encode(getattr(shape, f.name)) for f in dataclasses.fields(shape)}
    return {"type": type(shape).__name__, "fields": fields}


def _decode(v, index):
    if isinstance(v, dict) and "type" in v and "fields" in v:
        return shape_from_dict(v, index)
    if isinstance(v, dict) and "__list__" in v:
        return [_decode(x, index) for x in v["__list__"]]
    if isinstance(v, np.ndarray):
        a = v if index is None else v[index]
        return jnp.asarray(a)
    if isinstance(v, tuple | list):
        return tuple(v)
    return v


def shape_from_dict(d: dict[str, Any], index: int | None = None):
    """Rebuild a shape from `shape_to_dict` output. With `index`, take element `index` of every array field
    (one shape out of a stacked batch).

    The class's constructor is used when its parameters are the stored field names (so values are
    validated and static hints recomputed); otherwise the fields are restored as stored.
    """
    if not isinstance(d, dict) or "type" not in d or "fields" not in d:
        raise ValueError("a shape dict needs the keys 'type' and 'fields'")
    cls = shape_class(d["type"])
    fields = {k: _decode(v, index) for k, v in d["fields"].items()}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    required = [
        p
        for p, v in params.items()
        if p != "self"
        and v.default is inspect.Parameter.empty
        and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)
    ]
    if index is not None or all(f in fields for f in required):
        kwargs = {k: v for k, v in fields.items() if k in accepted}
        if all(r in kwargs for r in required):
            try:
                return cls(**kwargs)
            except (TypeError, ValueError):
                if index is None:
                    raise
    obj = object.__new__(cls)
    for k, v in fields.items():
        object.__setattr__(obj, k, v)
    return obj


def write_shape_group(group, d: dict[str, Any]) -> None:
    """Store a shape dict in an h5py group: attribute `type`, datasets for arrays, attributes for the rest."""
    group.attrs["type"] = d["type"]
    for k, v in d["fields"].items():
        if isinstance(v, dict) and "type" in v:
            write_shape_group(group.create_group(k), v)
        elif isinstance(v, dict) and "__list__" in v:
            g = group.create_group(k)
            g.attrs["__list__"] = len(v["__list__"])
            for i, item in enumerate(v["__list__"]):
                write_shape_group(g.create_group(str(i)), item)
        elif isinstance(v, np.ndarray):
            group.create_dataset(k, data=v)
        else:
            put_attr(group, k, v)


def put_attr(group, k: str, v) -> None:
    """Store a static (non-array) shape field as an attribute: None, tuples and scalars round-trip."""
    if v is None:
        group.attrs[k] = "__none__"
    elif isinstance(v, tuple):
        group.attrs[k] = np.asarray(v)
        group.attrs[k + "__tuple"] = True
    else:
        group.attrs[k] = v


def read_shape_group(group) -> dict[str, Any]:
    """Inverse of `write_shape_group` (arrays are read whole)."""
    import h5py

    fields: dict[str, Any] = {}
    for k, v in group.items():
        if isinstance(v, h5py.Group):
            if "__list__" in v.attrs:
                fields[k] = {
                    "__list__": [read_shape_group(v[str(i)]) for i in range(int(v.attrs["__list__"]))]
                }
            else:
                fields[k] = read_shape_group(v)
        else:
            fields[k] = v[()]
    for k, v in group.attrs.items():
        if k == "type" or k.endswith("__tuple"):
            continue
        if isinstance(v, str) and v == "__none__":
            fields[k] = None
        elif group.attrs.get(k + "__tuple", False):
            fields[k] = tuple(np.asarray(v).tolist())
        elif isinstance(v, np.generic):
            fields[k] = v.item()
        else:
            fields[k] = v
    t = group.attrs["type"]
    return {"type": t.decode() if isinstance(t, bytes) else str(t), "fields": fields}
