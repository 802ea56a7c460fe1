"""The two-scale maps: 1 km cell levels from the product model, the ``ssl`` map's pattern inside each cell.

Chapter 06 scores map candidates on held-out regions and picks the book's
map by issue 18's criteria (:func:`fungi_ssl.maps.resolution_scores.pick_product`);
on the full profile the winner is ``blend``
(:data:`fungi_ssl.maps.resolution.CANDIDATES`). Each pixel gets::

    w · (mean over its cell of the product map) + (1 − w) · (mean over its cell of the ssl map)
      + (its ssl value − mean over its cell of the ssl map)

with the level weight ``w`` of the model's kind (:data:`LEVEL_WEIGHTS`):

- ``blend`` (``w`` = 0.5): each cell's level is the mean of two estimates of
  it, the product model's (patch and 1 km covariates) and the ``ssl`` map's
  (patch alone), with equal weights fixed before any scoring;
- ``product_deviations`` (``w`` = 1): every 1 km cell keeps the product
  model's level.

Either way the pattern inside a cell comes from the ``ssl``-only 10 m map
(:func:`fungi_ssl.maps.resolution_regions.with_within_cell_deviations`, on the
chapter's aligned 100 × 100 pixel cells). :class:`CompositeMapModel` holds
the two fitted :class:`~fungi_ssl.maps.mapmodel.MapModel` objects (``fungi-ssl
fit --covariates STACK``, the command line's default with covariates) and
:func:`predict_composite_map` maps them (``fungi-ssl predict-map``; the
single-model :func:`fungi_ssl.maps.predict.predict_map` maps each member).

Cells
-----
The cells are the covariate stack's: a pixel belongs to the cell holding its
centre, the rule that gives a pixel its covariates
(:class:`fungi_ssl.data.covariate_stack.CovariateReader`), so a stack in
another CRS works too (its cells are then not whole squares of pixels).
:func:`cell_deviation_map` is :func:`with_within_cell_deviations`' arithmetic on
labelled cells: means over each map's finite pixels, NaN where the ssl map is
NaN. The maps are combined on the models' ``log1p`` scale, as chapter 06
scores them; a map in species is ``expm1`` of the combined map.

A cell cut by the bbox edge is averaged over its whole extent: both maps are
predicted over the bbox grown to the whole cells it touches, then cropped.
Where the embeddings (or the stack) do not reach that far, the cell's means
use the pixels that have a prediction, inside the bbox and around it, and one
warning line counts such cells.

How the work is cut
-------------------
Pass 1: :func:`~fungi_ssl.maps.predict.predict_map` maps both models over the
grown box, block by block, into two temporary Zarr stores beside the output
(8 bytes per pixel and year on disk). Pass 2 reads them window by window and
sums each cell's finite values. Pass 3 reads the bbox's windows of the two
stores again and writes ``w · cell mean of product + ssl − w · cell mean of ssl``.
Memory follows the window and the number of cells the box touches, never the
area.

File format
-----------
One zip file like :meth:`MapModel.save`'s: ``meta.json`` (``format``
``fungi_ssl.MapModel``, ``format_version`` 3, ``kind`` ``blend`` or
``product_deviations``, ``level_weight``, the members' settings and versions) and the two
member files ``product.model`` and ``ssl.model``, each a whole
:meth:`MapModel.save` file. A reader of formats 1–2 refuses it by its
version, :meth:`MapModel.load` with one line pointing here;
:func:`load_map_model` loads either kind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import uuid
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS, Transformer

from fungi_ssl.maps.mapmodel import MapModel
from fungi_ssl.maps.modelspec import FeatureSpec

__all__ = [
    "DEFAULT_MAP_MODEL",
    "KIND",
    "KINDS",
    "LEVEL_WEIGHTS",
    "MAP_MODELS",
    "CompositeMapModel",
    "cell_deviation_map",
    "load_map_model",
    "predict_composite_map",
]

#: The composite kinds, as chapter 06 names the candidates, each with the weight
#: of the product model's cell means in a cell's level (the rest is the ssl map's).
LEVEL_WEIGHTS: dict[str, float] = {"blend": 0.5, "product_deviations": 1.0}
#: What each kind is (the chapter's candidate description, shortened for file tags).
KINDS: dict[str, str] = {
    "blend": ("mean of the product model's and the ssl map's 1 km cell means + the ssl map's "
              "within-cell deviations"),
    "product_deviations": ("product model's 1 km cell means + the ssl map's within-cell "
                           "deviations"),
}
#: The kind a :class:`CompositeMapModel` is unless told otherwise: chapter 06's winner.
KIND = "blend"
#: The map models ``fungi-ssl fit --map-model`` offers, each with chapter 06's name
#: of the candidate it is (``10m`` is the ``ssl``-only map).
MAP_MODELS: dict[str, str] = {**{k: k for k in KINDS}, "product": "product", "ssl": "10m"}
#: The command line's map model when covariates are given (chapter 06's winner).
DEFAULT_MAP_MODEL = KIND
#: File layout of a composite model (a single model is 1 or 2).
COMPOSITE_FORMAT_VERSION = 3
_MEMBERS = ("product", "ssl")


class CompositeMapModel:
    """The product model and the ``ssl``-only model, mapped as ``blend`` or ``product_deviations``.

    Parameters
    ----------
    product : MapModel
        Fitted with 1 km covariates (:attr:`MapModel.covariate_columns`).
    ssl : MapModel
        Fitted on the patch alone, for the same embeddings (encoder, dimension
        and patch size).
    settings : dict, optional
        What the file records beside the members (guild, target column …);
        ``map_model`` is set to ``kind``.
    kind : {"blend", "product_deviations"}
        How a cell's level is made (:data:`LEVEL_WEIGHTS`); default :data:`KIND`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 72))
    >>> import pandas as pd
    >>> cov = pd.DataFrame({"t": rng.uniform(0, 1, 200)})
    >>> y = np.expm1(2 + X[:, 0] / 4 + cov["t"])
    >>> prod = MapModel("ridge", n_components=3).fit(X, y, encoder="e", embedding_dim=8,
    ...                                              covariates=cov)
    >>> ssl = MapModel("ridge", n_components=3).fit(X, y, encoder="e", embedding_dim=8)
    >>> m = CompositeMapModel(prod, ssl)
    >>> m.covariate_columns, m.settings["map_model"], m.level_weight
    (('t',), 'blend', 0.5)
    >>> CompositeMapModel(prod, ssl, kind="product_deviations").level_weight
    1.0
    """

    def __init__(self, product: MapModel, ssl: MapModel,
                 settings: dict[str, Any] | None = None, kind: str = KIND) -> None:
        if kind not in KINDS:
            raise ValueError(f"CompositeMapModel: kind must be one of {list(KINDS)}, "
                             f"got {kind!r}")
        for name, m in (("product", product), ("ssl", ssl)):
            if not isinstance(m, MapModel):
                raise TypeError(f"CompositeMapModel: {name} must be a fitted MapModel, "
                                f"got {type(m).__name__}")
            m._check_fitted()
        if not product.covariate_columns:
            raise ValueError("CompositeMapModel: the product model was fitted without 1 km "
                             "covariates")
        if ssl.covariate_columns:
            raise ValueError("CompositeMapModel: the ssl model was fitted with 1 km covariates "
                             f"{list(ssl.covariate_columns)}; it must see the patch alone")
        for key in ("embedding_dim", "patch_size", "encoder"):
            a, b = getattr(product.spec, key), getattr(ssl.spec, key)
            if a != b:
                raise ValueError(f"CompositeMapModel: the two models differ in {key} "
                                 f"(product {a!r}, ssl {b!r}); fit both on the same embeddings")
        self.product, self.ssl = product, ssl
        self.kind = kind
        self.settings = {**(settings or {}), "map_model": kind, "description": KINDS[kind]}

    @property
    def level_weight(self) -> float:
        """Weight of the product model's cell means in a cell's level (:data:`LEVEL_WEIGHTS`)."""
        return LEVEL_WEIGHTS[self.kind]

    @property
    def covariate_columns(self) -> tuple[str, ...]:
        """The 1 km covariates the product member needs."""
        return self.product.covariate_columns

    @property
    def spec(self) -> FeatureSpec:
        """The product member's feature spec (the ssl member's, plus the covariates)."""
        return self.product.spec

    @property
    def model(self) -> str:
        """The members' regressor family (the product member's)."""
        return self.product.model

    @property
    def fingerprint(self) -> str:
        """A fingerprint of both members' training tables."""
        both = f"{self.product.fingerprint}+{self.ssl.fingerprint}".encode()
        return hashlib.sha256(both).hexdigest()[:16]

    @property
    def versions(self) -> dict[str, str]:
        """Package versions at fit time (the product member's)."""
        return dict(self.product.versions)

    def _check_fitted(self) -> None:
        self.product._check_fitted()
        self.ssl._check_fitted()

    def check_embeddings(self, **kwargs: Any) -> None:
        """:meth:`MapModel.check_embeddings` of both members."""
        self.product.check_embeddings(**kwargs)
        self.ssl.check_embeddings(**kwargs)

    # ------------------------------------------------------------ save/load
    def metadata(self) -> dict[str, Any]:
        """Everything :meth:`save` writes to ``meta.json``."""
        return {
            "format": "fungi_ssl.MapModel",
            "format_version": COMPOSITE_FORMAT_VERSION,
            "kind": self.kind,
            "description": KINDS[self.kind],
            "level_weight": self.level_weight,
            "members": {name: f"{name}.model" for name in _MEMBERS},
            "spec": self.spec.to_dict(),
            "fingerprint": self.fingerprint,
            "versions": self.versions,
            "settings": self.settings,
            "member_settings": {name: getattr(self, name).settings for name in _MEMBERS},
            "n_samples": {name: getattr(self, name).n_samples for name in _MEMBERS},
        }

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write both members to one file (see the module docstring), atomically."""
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"CompositeMapModel.save: folder {path.parent} does not exist")
        if path.exists() and not overwrite:
            raise FileExistsError(f"CompositeMapModel.save: {path} exists; pass overwrite=True "
                                  "to replace it")
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.writestr("meta.json", json.dumps(self.metadata(), indent=1))
                for name in _MEMBERS:  # member files are zips already
                    zf.writestr(f"{name}.model", getattr(self, name).to_bytes())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, path: str | Path, *, expect: FeatureSpec | None = None,
             check_versions: bool = True) -> CompositeMapModel:
        """Load a file written by :meth:`save`; each member as :meth:`MapModel.load` checks it."""
        path = Path(path)
        meta = MapModel.read_metadata(path)
        kind = meta.get("kind")
        if kind not in KINDS:
            raise ValueError(f"CompositeMapModel.load: {path} is a single map model, not a "
                             f"{' or '.join(KINDS)} model; load it with MapModel.load")
        if int(meta.get("format_version", -1)) != COMPOSITE_FORMAT_VERSION:
            raise ValueError(f"CompositeMapModel.load: {path} has file format version "
                             f"{meta.get('format_version')}, this fungi_ssl reads version "
                             f"{COMPOSITE_FORMAT_VERSION} for a {kind} model")
        members = {}
        with zipfile.ZipFile(path) as zf:
            for name in _MEMBERS:
                try:
                    data = zf.read(meta["members"][name])
                except KeyError:
                    raise ValueError(f"CompositeMapModel.load: {path} lacks its {name} "
                                     "model") from None
                # the ssl member is checked against the product's spec by the constructor
                members[name] = MapModel.from_bytes(
                    data, label=f"{path} ({name} model)",
                    expect=expect if name == "product" else None, check_versions=check_versions)
        return cls(members["product"], members["ssl"], meta.get("settings"), kind=kind)

    def __repr__(self) -> str:
        return f"CompositeMapModel({self.kind}: product {self.product!r}, ssl {self.ssl!r})"


def load_map_model(path: str | Path, *, expect: FeatureSpec | None = None,
                   check_versions: bool = True) -> MapModel | CompositeMapModel:
    """Load any map model file: a single :class:`MapModel` or a :class:`CompositeMapModel`."""
    meta = MapModel.read_metadata(path)
    if meta.get("kind") in KINDS:
        return CompositeMapModel.load(path, expect=expect, check_versions=check_versions)
    return MapModel.load(path, expect=expect, check_versions=check_versions)


# --------------------------------------------------------------------------
# The arithmetic on labelled cells
# --------------------------------------------------------------------------
class CellSums:
    """Running sums and counts of two maps' finite values per cell (pass 2).

    ``n_cells`` cells, labelled ``0 … n_cells - 1`` (a negative label is no
    cell), for each of ``n_layers`` years.
    """

    def __init__(self, n_layers: int, n_cells: int) -> None:
        self.n_cells = int(n_cells)
        self.sums = np.zeros((2, n_layers, self.n_cells))
        self.counts = np.zeros((2, n_layers, self.n_cells))

    def add(self, layer: int, labels: np.ndarray, levels: np.ndarray, pattern: np.ndarray) -> None:
        lab = np.asarray(labels).ravel()
        for i, values in enumerate((levels, pattern)):
            v = np.asarray(values, float).ravel()
            ok = (lab >= 0) & np.isfinite(v)
            self.sums[i, layer] += np.bincount(lab[ok], weights=v[ok], minlength=self.n_cells)
            self.counts[i, layer] += np.bincount(lab[ok], minlength=self.n_cells)

    def means(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Cell means ``(levels, pattern)`` of a layer; NaN for a cell without a finite value."""
        with np.errstate(invalid="ignore", divide="ignore"):
            m = self.sums[:, layer] / self.counts[:, layer]
        return m[0], m[1]


def cell_deviation_map(levels: np.ndarray, pattern: np.ndarray, labels: np.ndarray,
                       *, level_means: np.ndarray | None = None,
                       pattern_means: np.ndarray | None = None,
                       weight: float = 1.0) -> np.ndarray:
    """Each pixel: ``weight`` × its cell's mean of ``levels`` + (1 − ``weight``) × its cell's
    mean of ``pattern`` + its ``pattern`` − its cell's mean of ``pattern``.

    :func:`fungi_ssl.maps.resolution_regions.with_within_cell_deviations` on
    cells given by a label per pixel (``-1``: no cell, a NaN pixel) rather
    than aligned ``f × f`` blocks. Means are over each map's finite pixels;
    ``level_means`` and ``pattern_means`` (per label) may come from a larger
    area than the arrays (the whole cells around a map, :class:`CellSums`).

    Examples
    --------
    >>> lv = np.array([[5.0, 7.0], [6.0, 6.0]])
    >>> pt = np.array([[1.0, 3.0], [2.0, np.nan]])
    >>> cell_deviation_map(lv, pt, np.zeros((2, 2), int)).tolist()
    [[5.0, 7.0], [6.0, nan]]
    >>> cell_deviation_map(lv, pt, np.zeros((2, 2), int), weight=0.5).tolist()  # level (6 + 2) / 2
    [[3.0, 5.0], [4.0, nan]]
    """
    lab = np.asarray(labels)
    lv, pt = np.asarray(levels, float), np.asarray(pattern, float)
    if not (lab.shape == lv.shape == pt.shape):
        raise ValueError(f"cell_deviation_map: levels {lv.shape}, pattern {pt.shape} and labels "
                         f"{lab.shape} differ in shape")
    if level_means is None or pattern_means is None:
        sums = CellSums(1, int(lab.max(initial=-1)) + 1)
        sums.add(0, lab, lv, pt)
        level_means, pattern_means = sums.means(0)
    out = np.full(lab.shape, np.nan)
    inside = lab >= 0
    li = lab[inside]
    if weight == 1.0:
        out[inside] = level_means[li] + pt[inside] - pattern_means[li]
    else:
        out[inside] = pt[inside] + weight * (level_means[li] - pattern_means[li])
    return out


# --------------------------------------------------------------------------
# The grown box: the whole cells around a map
# --------------------------------------------------------------------------
class _CellFrame:
    """The stack cells that a map grid touches: a rectangle of rows and columns of the stack.

    ``labels(grid, r0, r1, c0, c1)`` gives each pixel of a rectangle of a grid
    aligned with it (rows and columns may lie beyond the grid) the label of
    its cell in the rectangle, ``-1`` outside it, by the covariate reader's
    rule.
    """

    def __init__(self, stack: Any, grid: Any) -> None:
        inv = ~stack.transform
        sb = _bounds_in(grid.bounds, grid.crs, stack.crs)
        xs, ys = [sb[0], sb[2], sb[0], sb[2]], [sb[1], sb[1], sb[3], sb[3]]
        cols = [inv.a * x + inv.b * y + inv.c for x, y in zip(xs, ys)]
        rows = [inv.d * x + inv.e * y + inv.f for x, y in zip(xs, ys)]
        _, ny, nx = stack.values.shape
        self.c0 = max(0, math.floor(min(cols)))
        self.c1 = min(nx - 1, math.floor(max(cols)))
        self.r0 = max(0, math.floor(min(rows)))
        self.r1 = min(ny - 1, math.floor(max(rows)))
        self.n_rows, self.n_cols = self.r1 - self.r0 + 1, self.c1 - self.c0 + 1
        self.n_cells = max(self.n_rows, 0) * max(self.n_cols, 0)
        t = stack.transform
        corners = [t * (c, r) for c in (self.c0, self.c1 + 1) for r in (self.r0, self.r1 + 1)]
        cx, cy = [p[0] for p in corners], [p[1] for p in corners]
        #: the cells' envelope in the grid's CRS
        self.bounds = _bounds_in((min(cx), min(cy), max(cx), max(cy)), stack.crs, grid.crs)
        # the rectangle as a one-band stack of labels, read by the covariates' own rule
        if self.n_cells >= 2**24:
            raise ValueError(f"the map touches {self.n_cells:,} cells of the covariate stack; "
                             "a product_deviations map takes fewer than 16.7 million")
        labels = np.arange(self.n_cells, dtype=np.float32)  # exact below 2**24 cells
        self._values = labels.reshape(1, self.n_rows, self.n_cols)
        self._inverse = tuple(~(t * Affine.translation(self.c0, self.r0)))[:6]
        self._stack_crs = stack.crs.to_wkt()

    def labels(self, grid: Any, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Cell labels ``(r1 - r0, c1 - c0)`` of those rows and columns of ``grid``."""
        from fungi_ssl.data.covariate_stack import CovariateReader

        reader = CovariateReader(self._values, self._inverse, tuple(grid.transform)[:6],
                                 grid.crs.to_wkt(), self._stack_crs)
        lab = reader(r0, r1, c0, c1)[..., 0]
        return np.where(np.isfinite(lab), lab, -1).astype(np.int64)


def _bounds_in(bounds: Sequence[float], src: Any, dst: Any) -> tuple[float, float, float, float]:
    if CRS.from_user_input(src) == CRS.from_user_input(dst):
        return tuple(float(v) for v in bounds)  # type: ignore[return-value]
    tr = Transformer.from_crs(src, dst, always_xy=True)
    return tuple(float(v) for v in tr.transform_bounds(*bounds, densify_pts=21))  # type: ignore[return-value]


def _grown_grid(grid: Any, bounds: Sequence[float]) -> tuple[Any, int, int]:
    """``grid`` grown by whole pixels to every pixel whose centre lies in ``bounds``;
    with the rows and columns it gained above and to the left."""
    from fungi_ssl.maps.sources import MapGrid

    t = grid.transform
    left = max(0, -math.ceil((bounds[0] - t.c) / t.a - 0.5))
    right = max(0, math.floor((bounds[2] - t.c) / t.a - 0.5) - (grid.width - 1))
    top = max(0, -math.ceil((bounds[3] - t.f) / t.e - 0.5))
    bottom = max(0, math.floor((bounds[1] - t.f) / t.e - 0.5) - (grid.height - 1))
    g = MapGrid(grid.crs, Affine(t.a, 0, t.c - left * t.a, 0, t.e, t.f - top * t.e),
                grid.height + top + bottom, grid.width + left + right)
    return g, top, left


def _offset(inner: Any, outer: Any) -> tuple[int, int] | None:
    """Rows and columns of ``inner``'s origin in ``outer``, if both are one pixel grid."""
    a, b = inner.transform, outer.transform
    if inner.crs != outer.crs or not (math.isclose(a.a, b.a) and math.isclose(a.e, b.e)):
        return None
    dr, dc = (a.f - b.f) / b.e, (a.c - b.c) / b.a
    if abs(dr - round(dr)) > 1e-3 or abs(dc - round(dc)) > 1e-3:
        return None
    return round(dr), round(dc)


def _covers(stack: Any, grid: Any) -> bool:
    try:
        stack.check_covers(grid.bounds, grid.crs)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------
# The map
# --------------------------------------------------------------------------
def predict_composite_map(
    model: CompositeMapModel,
    source: Any,
    year: int | Sequence[int],
    bbox: Sequence[float] | None = None,
    *,
    covariates: Any = None,
    output: str | Path | None = None,
    overwrite: bool = False,
    quantity: str = "richness",
    bbox_crs: Any = None,
    mask_water: bool = False,
    cog_blocksize: int = 512,
    progress: bool = True,
    **kwargs: Any,
) -> Any:
    """The composite model's map (``blend`` or ``product_deviations``) over a bounding box
    (see the module docstring).

    Parameters are :func:`fungi_ssl.maps.predict.predict_map`'s (``kwargs``:
    ``patch_size``, ``chunk``, ``window``, ``scheduler``, ``num_workers``
    pass to its two runs); ``covariates`` is required.

    Returns
    -------
    MapRun
        On the bbox's grid. ``details`` adds ``grown_shape`` (the grid both
        maps were predicted on), ``n_cells`` (the stack cells holding a pixel
        of the map), ``n_cells_cut`` (of those, the ones the bbox edge cuts)
        and ``n_cells_partial`` (of those, the ones whose pixels outside the
        bbox lack a prediction: no embedding, or beyond the embeddings or the
        stack, so their means use fewer pixels).

    Warns
    -----
    UserWarning
        One line when ``n_cells_partial`` > 0.
    """
    from fungi_ssl.data.covariate_stack import CovariateStack, open_covariate_stack
    from fungi_ssl.maps.outputs import (
        DEFAULT_GUILD,
        _as_dataarray,
        _check_output,
        _CogWriter,
        _ZarrWriter,
        map_units,
        open_map,
    )
    from fungi_ssl.maps.predict import (
        DEFAULT_WINDOW,
        NAN_WARN_SHARE,
        MapRun,
        predict_map,
    )
    from fungi_ssl.maps.sources import open_embedding_source

    years = [int(year)] if isinstance(year, (int, np.integer)) else [int(y) for y in year]
    if not years:
        raise ValueError("year: give one year or a non-empty list of years")
    cols = list(model.covariate_columns)
    if covariates is None:
        raise ValueError(f"the map model is a {model.kind} model (its product model was fitted with 1 km "
                         f"covariates); pass covariates= a stack with the bands {', '.join(cols)}")
    if quantity not in ("richness", "log_richness"):
        raise ValueError(f"quantity must be 'richness' or 'log_richness', got {quantity!r}")
    stack = (covariates if isinstance(covariates, CovariateStack)
             else open_covariate_stack(covariates))
    stack.require(cols)
    out_path, kind = _check_output(output, overwrite, len(years))
    src0 = open_embedding_source(source, years[0], bbox, bbox_crs=bbox_crs, mask_water=mask_water)
    model.check_embeddings(embedding_dim=src0.dim, encoder=src0.encoder,
                           patch_size=int(kwargs.get("patch_size", 3)),
                           where=f"embeddings of {src0.name} ({src0.year})")
    grid0 = src0.grid
    stack.check_covers(grid0.bounds, grid0.crs)
    frame = _CellFrame(stack, grid0)
    geo, top, left = _grown_grid(grid0, frame.bounds)  # every pixel of the touched cells
    pred, pred_bbox = geo, None
    if (geo.height, geo.width) != (grid0.height, grid0.width):
        shrink = 0.25 * geo.transform.a
        b = geo.bounds
        pred_bbox = (b[0] + shrink, b[1] + shrink, b[2] - shrink, b[3] - shrink)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # beyond the store: counted below, in one line
            pred = open_embedding_source(source, years[0], pred_bbox, bbox_crs=geo.crs,
                                         mask_water=mask_water).grid
        at = _offset(grid0, pred)
        if (at is None or at[0] < 0 or at[1] < 0 or at[0] + grid0.height > pred.height
                or at[1] + grid0.width > pred.width or not _covers(stack, pred)):
            pred, pred_bbox = grid0, None  # the whole cells cannot be mapped: the bbox's pixels
    at = (0, 0) if pred_bbox is None else _offset(grid0, pred)
    at_geo = _offset(pred, geo)  # the predicted grid in the geometric one
    window = int(kwargs.get("window", DEFAULT_WINDOW))
    t0 = time.perf_counter()
    tmp_root = out_path.parent if out_path is not None else None
    with tempfile.TemporaryDirectory(prefix=".fungi-ssl-composite-", dir=tmp_root) as tmp:
        runs = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the members' NaN shares are over the grown box
            for name in _MEMBERS:
                runs[name] = predict_map(
                    getattr(model, name), source, years, pred_bbox if pred_bbox else bbox,
                    output=Path(tmp) / f"{name}.zarr", quantity="log_richness",
                    bbox_crs=geo.crs if pred_bbox else bbox_crs, mask_water=mask_water,
                    progress=progress,
                    covariates=stack if name == "product" else None, **kwargs)
        arrays = {name: _zarr_map(Path(tmp) / f"{name}.zarr") for name in _MEMBERS}
        # pass 2: every cell's sums over the grown grid, and what each cut cell lacks
        sums = CellSums(len(years), frame.n_cells)
        expected = np.zeros(frame.n_cells)
        inside_count = np.zeros(frame.n_cells)
        got = np.zeros((len(years), frame.n_cells))
        for r0, r1, c0, c1 in _windows(geo.height, geo.width, window):
            lab = frame.labels(geo, r0, r1, c0, c1)
            rr = np.arange(r0, r1)[:, None] - top
            cc = np.arange(c0, c1)[None, :] - left
            in0 = (rr >= 0) & (rr < grid0.height) & (cc >= 0) & (cc < grid0.width)
            ok = lab >= 0
            expected += np.bincount(lab[ok & ~in0], minlength=frame.n_cells)
            inside_count += np.bincount(lab[ok & in0], minlength=frame.n_cells)
            for yi in range(len(years)):
                lv = _read_window(arrays["product"], yi, r0, r1, c0, c1, at_geo)
                pt = _read_window(arrays["ssl"], yi, r0, r1, c0, c1, at_geo)
                sums.add(yi, lab, lv, pt)
                has = ok & ~in0 & np.isfinite(pt) & np.isfinite(lv)
                got[yi] += np.bincount(lab[has], minlength=frame.n_cells)
        used = inside_count > 0
        cut = used & (expected > 0)
        partial = cut & (got < expected).any(axis=0)
        # pass 3: the bbox's pixels
        guild = model.settings.get("guild", DEFAULT_GUILD)
        units = map_units(model, quantity)
        attrs = {
            "quantity": quantity, "units": units, "guild": guild,
            "model_fingerprint": model.fingerprint, "encoder": model.spec.encoder,
            "years": ",".join(str(y) for y in years),
            "software": "fungi_ssl.maps.composite.predict_composite_map",
            "map_model": model.kind, "covariates": ",".join(cols),
            "map_model_description": KINDS[model.kind],
            "band_description": f"{quantity}: {units}, {model.kind} map ({KINDS[model.kind]})",
        }
        chunk = int(kwargs.get("chunk", 256))
        readers = [src0.block_reader()] + [
            open_embedding_source(source, y, bbox, bbox_crs=bbox_crs,
                                  mask_water=mask_water).block_reader() for y in years[1:]]
        n_no = sum(int((~np.isfinite(read(*block)[1])).sum())  # pixels without an embedding
                   for read in readers for block in _windows(grid0.height, grid0.width, chunk))
        writer = None
        if kind == "cog":
            writer = _CogWriter(out_path, grid0, attrs, cog_blocksize, chunk)
        elif kind == "zarr":
            writer = _ZarrWriter(out_path, grid0, years, quantity, attrs, chunk)
        memory = None if writer is not None else np.full(
            (len(years), grid0.height, grid0.width), np.nan, np.float32)
        n_nan = 0
        try:
            for r0, r1, c0, c1 in _windows(grid0.height, grid0.width, window):
                lab = frame.labels(grid0, r0, r1, c0, c1)
                for yi in range(len(years)):
                    g = (r0 + at[0], r1 + at[0], c0 + at[1], c1 + at[1])
                    lm, pm = sums.means(yi)
                    v = cell_deviation_map(arrays["product"][yi, g[0]:g[1], g[2]:g[3]],
                                           arrays["ssl"][yi, g[0]:g[1], g[2]:g[3]], lab,
                                           level_means=lm, pattern_means=pm,
                                           weight=model.level_weight)
                    v = (v if quantity == "log_richness" else np.expm1(v)).astype(np.float32)
                    n_nan += int(np.isnan(v).sum())
                    if writer is None:
                        memory[yi, r0:r1, c0:c1] = v
                    else:
                        writer.write(yi, r0, r1, c0, c1, v)
            if writer is not None:
                writer.finish(overwrite, {"n_nan": n_nan, "n_no_embedding": n_no,
                                          "n_cells_partial": int(partial.sum())})
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    seconds = time.perf_counter() - t0
    n_cells, n_cut, n_partial = int(used.sum()), int(cut.sum()), int(partial.sum())
    if n_partial:
        warnings.warn(
            f"{n_partial} of the {n_cut} 1 km cells cut by the bbox edge lack a prediction for "
            "some of their pixels outside the bbox (beyond the embeddings or the covariate "
            "stack, or without an embedding or a full patch there): their cell means use the "
            "pixels that have one", UserWarning, stacklevel=2)
    n_pixels = grid0.n_pixels * len(years)
    if n_pixels and n_nan > NAN_WARN_SHARE * n_pixels:
        warnings.warn(f"{n_nan:,} of {n_pixels:,} map pixels ({n_nan / n_pixels:.1%}) have no "
                      f"prediction ({n_no:,} have no embedding)", UserWarning, stacklevel=2)
    if writer is None:
        one = isinstance(year, (int, np.integer))
        the_map = _as_dataarray(memory[0] if one else memory, grid0, None if one else years,
                                quantity, {**attrs, "n_nan": n_nan, "n_no_embedding": n_no})
    else:
        the_map = open_map(out_path)
    return MapRun(
        map=the_map, path=out_path, grid=grid0, years=years, n_pixels=n_pixels, n_nan=n_nan,
        n_no_embedding=n_no, seconds=seconds,
        pixels_per_second=n_pixels / seconds if seconds > 0 else float("inf"),
        details={"map_model": model.kind, "grown_shape": (pred.height, pred.width),
                 "n_cells": n_cells, "n_cells_cut": n_cut, "n_cells_partial": n_partial,
                 "members": {k: r.details for k, r in runs.items()}},
    )


def _zarr_map(path: Path) -> Any:
    """The ``(year, y, x)`` array of a map store written by ``predict_map``."""
    import zarr

    return zarr.open_group(str(path), mode="r")["log_richness"]


def _windows(height: int, width: int, window: int) -> list[tuple[int, int, int, int]]:
    return [(r, min(r + window, height), c, min(c + window, width))
            for r in range(0, height, window) for c in range(0, width, window)]


def _read_window(array: Any, yi: int, r0: int, r1: int, c0: int, c1: int,
                 at: tuple[int, int] | None) -> np.ndarray:
    """Rows ``r0:r1``, columns ``c0:c1`` of the geometric grid from a map on a grid at
    offset ``at`` in it (NaN where that map does not reach)."""
    out = np.full((r1 - r0, c1 - c0), np.nan, np.float32)
    if at is None:
        return out
    ny, nx = array.shape[1:]
    a0, a1 = max(r0 - at[0], 0), min(r1 - at[0], ny)
    b0, b1 = max(c0 - at[1], 0), min(c1 - at[1], nx)
    if a0 < a1 and b0 < b1:
        out[a0 + at[0] - r0 : a1 + at[0] - r0, b0 + at[1] - c0 : b1 + at[1] - c0] = (
            array[yi, a0:a1, b0:b1])
    return out
