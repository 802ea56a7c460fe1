"""What a saved map model records about itself: its feature spec, fingerprints and library versions.

:class:`fungi_ssl.maps.mapmodel.MapModel` writes these into a model file's
``meta.json`` and checks them before it deserialises any object:

* :class:`FeatureSpec`: what the model expects of the embeddings it is given
  (embedding dimension, patch size, the encoder's signature, the predictor
  columns), compared field by field with a one-line message naming both sides;
* :func:`encoder_signature`: the signature of the encoder behind some
  embeddings (a trained encoder, an embedding store, a TESSERA tile);
* :func:`table_fingerprint`: a short hash of the training table;
* :func:`package_versions`, :func:`library_versions`,
  :func:`compatible_series`, :func:`version_check`: the versions of the
  libraries whose objects a file holds, and which differences refuse a file
  (another major version of ``fungi_ssl`` or of the regressor's library) or
  only warn.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from fungi_ssl.predictors.features import SSL_PREFIX

__all__ = [
    "CACHE_KEY_LIBRARIES",
    "REGRESSOR_LIBRARY",
    "FeatureSpec",
    "compatible_series",
    "encoder_signature",
    "library_versions",
    "package_versions",
    "table_fingerprint",
    "version_check",
]


#: Libraries whose objects every model file holds: the package, the PCA's scikit-learn,
#: skops (the file format of the objects) and numpy (their arrays).
_ALWAYS_HELD = ("fungi_ssl", "scikit-learn", "skops", "numpy")
#: The library of each regressor (the one whose objects it adds to the file).
REGRESSOR_LIBRARY = {"lightgbm": "lightgbm", "xgboost": "xgboost", "rf": "scikit-learn",
                     "ridge": "scikit-learn"}
#: Libraries a model must share the compatible version of (:func:`compatible_series`) to be
#: loaded: the package and the libraries whose estimators it rebuilds. numpy and skops keep
#: their formats across versions (skops reads older files; arrays are .npy), so a different
#: series of them is a warning only.
_MUST_MATCH = ("fungi_ssl", "scikit-learn", "lightgbm", "xgboost")

def package_versions(model: str | None = None) -> dict[str, str]:
    """Installed versions of the libraries whose objects a model file holds.

    Parameters
    ----------
    model : {"lightgbm", "xgboost", "rf", "ridge"}, optional
        The regressor: its library (:data:`REGRESSOR_LIBRARY`) is added to
        ``fungi_ssl``, scikit-learn, skops and numpy.

    Examples
    --------
    >>> sorted(package_versions("xgboost"))
    ['fungi_ssl', 'numpy', 'scikit-learn', 'skops', 'xgboost']
    >>> sorted(package_versions("rf"))
    ['fungi_ssl', 'numpy', 'scikit-learn', 'skops']
    """
    names = list(_ALWAYS_HELD)
    if model is not None:
        lib = REGRESSOR_LIBRARY[model]
        if lib not in names:
            names.append(lib)
    return library_versions(names)


#: The libraries whose versions key the book's cached models (:mod:`fungi_ssl.resolution`,
#: :mod:`fungi_ssl.heldout`); unchanged so that existing caches stay valid.
CACHE_KEY_LIBRARIES = ("fungi_ssl", "scikit-learn", "lightgbm")


def library_versions(names: Sequence[str] = CACHE_KEY_LIBRARIES) -> dict[str, str]:
    """Installed versions of the named distributions, in that order (``"unknown"`` if absent).

    Examples
    --------
    >>> list(library_versions(["numpy", "fungi_ssl"]))
    ['numpy', 'fungi_ssl']
    """
    out = {}
    for name in names:
        out[name] = "unknown"  # an uninstalled checkout
        for dist in _DISTRIBUTIONS.get(name, (name,)):
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


#: Distributions that install a library under another name (XGBoost's CPU-only wheel).
_DISTRIBUTIONS = {"fungi_ssl": ("fungi-ssl",), "xgboost": ("xgboost", "xgboost-cpu")}


def compatible_series(version: str) -> tuple[int, ...] | None:
    """The part of a version that must match for a saved model to load: its compatible series.

    The major version; for a ``0.y`` version (semantic versioning's initial
    development, where any minor release may break) the major and minor
    version. None for a version that cannot be read.

    Examples
    --------
    >>> compatible_series("4.5.0"), compatible_series("0.1.0"), compatible_series("2.1rc1")
    ((4,), (0, 1), (2,))
    >>> compatible_series("unknown") is None
    True
    """
    m = re.match(r"\s*(\d+)(?:\.(\d+))?", str(version))
    if m is None:
        return None
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    return (0, minor) if major == 0 else (major,)


def _minor(version: str) -> tuple[int, ...] | None:
    m = re.match(r"\s*(\d+)(?:\.(\d+))?", str(version))
    return None if m is None else (int(m.group(1)), int(m.group(2) or 0))


def version_check(saved: Mapping[str, str], installed: Mapping[str, str]) -> tuple[str, str]:
    """Compare a model file's library versions with the installed ones.

    Parameters
    ----------
    saved : mapping
        ``versions`` of the model file (:func:`package_versions` at fit time).
    installed : mapping
        :func:`package_versions` here, for the same regressor.

    Returns
    -------
    refuse : str
        Empty when the model can be loaded; else the libraries whose
        compatible series (:func:`compatible_series`) differ, each with both
        versions: ``fungi_ssl`` and the libraries whose estimators the file
        holds (scikit-learn's PCA, the regressor's library).
    warn : str
        Empty, or the other differences worth one line: another minor
        version of those libraries, another series of numpy or skops. A
        library the file records no version of (an older file) is not compared.

    Examples
    --------
    >>> version_check({"lightgbm": "4.5.0"}, {"lightgbm": "4.6.0"})
    ('', "lightgbm: saved with '4.5.0', installed '4.6.0'")
    >>> version_check({"lightgbm": "3.3.5"}, {"lightgbm": "4.6.0"})[0]
    "lightgbm: saved with '3.3.5', installed '4.6.0'"
    """
    refuse, warn = {}, {}
    for lib, here in installed.items():
        there = saved.get(lib)
        if there is None or there == here:
            # files written before this library was recorded (numpy, skops, xgboost) say
            # nothing about it; their estimators' own libraries were checked as before
            continue
        a, b = compatible_series(there), compatible_series(here)
        if lib in _MUST_MATCH and (a is None or a != b):
            refuse[lib] = (there, here)
            continue
        # a compatible library's other minor version; numpy's or skops's other series
        worth_saying = _minor(there) != _minor(here) if lib in _MUST_MATCH else a != b
        if worth_saying:
            warn[lib] = (there, here)
    return _describe(refuse, "saved with", "installed"), _describe(warn, "saved with", "installed")


def encoder_signature(source: Any) -> str:
    """The signature of the encoder behind some embeddings, as a string.

    Parameters
    ----------
    source : str, TrainedEncoder or xarray.Dataset
        A signature already (returned as is); a
        :class:`fungi_ssl.encoder.TrainedEncoder` (hash of its configuration,
        normaliser and weights, as :func:`fungi_ssl.embed.embed_cube` records
        it); an embedding store opened with
        :func:`fungi_ssl.embed.open_embeddings` (its ``encoder`` attribute); or
        a TESSERA tile from :func:`fungi_ssl.tessera.open_tile`
        (``"tessera:<dataset_version>"``, ``"tessera:unknown-version"`` when
        the download records none: :func:`fungi_ssl.tessera.version_signature`).

    Examples
    --------
    >>> encoder_signature("abc123")
    'abc123'
    """
    import xarray as xr

    if isinstance(source, str):
        if not source:
            raise ValueError("encoder signature must be a non-empty string")
        return source
    if isinstance(source, xr.Dataset):
        if "encoder" in source.attrs:
            return str(source.attrs["encoder"])
        if "tile" in source.attrs:  # a TESSERA tile (fungi_ssl.tessera.open_tile)
            from fungi_ssl.embeddings.tessera import version_signature

            return version_signature(source.attrs.get("tessera_dataset_version"))
        raise ValueError(
            "encoder_signature: the Dataset records no encoder (no 'encoder' attribute as "
            "fungi_ssl.embed stores write, and not a TESSERA tile)"
        )
    from fungi_ssl.embeddings.encoder import TrainedEncoder

    if isinstance(source, TrainedEncoder):
        from fungi_ssl.embeddings.embed import _encoder_signature

        return _encoder_signature(source)
    raise ValueError(
        f"encoder_signature: expected a str, a TrainedEncoder or an embedding Dataset, "
        f"got {type(source).__name__}"
    )


def table_fingerprint(X: np.ndarray, y: np.ndarray, columns: tuple[str, ...]) -> str:
    """A short sha256 of the training features, target and column names.

    Examples
    --------
    >>> a = table_fingerprint(np.zeros((2, 2)), np.zeros(2), ("ssl_0000", "ssl_0001"))
    >>> b = table_fingerprint(np.ones((2, 2)), np.zeros(2), ("ssl_0000", "ssl_0001"))
    >>> len(a), a == b
    (16, False)
    """
    h = hashlib.sha256()
    h.update(json.dumps(list(columns)).encode())
    x = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
    h.update(str(x.shape).encode())
    h.update(x.tobytes())
    h.update(np.ascontiguousarray(np.asarray(y, dtype=np.float64)).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class FeatureSpec:
    """What a map model expects of the embeddings it is given.

    Attributes
    ----------
    embedding_dim : int
        Dimensions per pixel (128 for TESSERA).
    patch_size : int
        Side ``k`` of the k × k pixel patch (3 in the study).
    encoder : str
        Signature of the encoder that made the training embeddings
        (:func:`encoder_signature`).
    predictor_columns : tuple of str
        The patch columns, ``ssl_0000`` … in (row, col, dim) order.
    covariate_columns : tuple of str
        The 1 km covariates the regressor also sees (the product model), in
        order; empty for the ``ssl``-only model.
    """

    embedding_dim: int
    patch_size: int
    encoder: str
    predictor_columns: tuple[str, ...] = field(repr=False)
    covariate_columns: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``covariate_columns`` only when there are any)."""
        d = asdict(self)
        d["predictor_columns"] = list(self.predictor_columns)
        d["covariate_columns"] = list(self.covariate_columns)
        if not self.covariate_columns:
            del d["covariate_columns"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            embedding_dim=int(d["embedding_dim"]),
            patch_size=int(d["patch_size"]),
            encoder=str(d["encoder"]),
            predictor_columns=tuple(str(c) for c in d["predictor_columns"]),
            covariate_columns=tuple(str(c) for c in d.get("covariate_columns", ())),
        )

    def differences(self, other: FeatureSpec) -> dict[str, tuple[Any, Any]]:
        """Fields that differ: ``{field: (self's value, other's value)}``.

        Examples
        --------
        >>> a = FeatureSpec(128, 3, "enc-a", ("ssl_0000",))
        >>> a.differences(FeatureSpec(128, 5, "enc-a", ("ssl_0000",)))
        {'patch_size': (3, 5)}
        """
        out: dict[str, tuple[Any, Any]] = {}
        for name in ("embedding_dim", "patch_size", "encoder"):
            if getattr(self, name) != getattr(other, name):
                out[name] = (getattr(self, name), getattr(other, name))
        if self.predictor_columns != other.predictor_columns:
            out["predictor_columns"] = (
                _columns_summary(self.predictor_columns),
                _columns_summary(other.predictor_columns),
            )
        if self.covariate_columns != other.covariate_columns:
            out["covariate_columns"] = (list(self.covariate_columns),
                                        list(other.covariate_columns))
        return out


def _columns_summary(cols: tuple[str, ...]) -> str:
    if not cols:
        return "no columns"
    return f"{len(cols)} columns {cols[0]} … {cols[-1]}"


def _describe(diffs: Mapping[str, tuple[Any, Any]], left: str, right: str) -> str:
    return "; ".join(f"{k}: {left} {a!r}, {right} {b!r}" for k, (a, b) in diffs.items())


def _patch_column_names(n: int) -> tuple[str, ...]:
    return tuple(f"{SSL_PREFIX}{i:04d}" for i in range(n))
