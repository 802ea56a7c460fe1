"""Tests for the figure style and offline cartopy maps (no network at any point)."""

from __future__ import annotations

import socket

import matplotlib

matplotlib.use("Agg")

import cartopy
import cartopy.crs as ccrs
import cartopy.feature as cfeature
import cartopy.io
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from fungi_ssl.core import plotting


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Cut the network: sockets cannot connect, cartopy cannot download, its user data dir is empty."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(cartopy.io.Downloader, "acquire_resource", refuse)
    monkeypatch.setitem(cartopy.config, "data_dir", tmp_path / "cartopy_user_data")
    root = plotting.use_offline_natural_earth()
    yield root
    plt.close("all")


def test_offline_natural_earth_layout_matches_cartopy(offline):
    root = offline
    assert cartopy.config["pre_existing_data_dir"] == root
    for scale in ("10m", "50m", "110m"):
        assert (root / "shapefiles/natural_earth/physical" / f"ne_{scale}_coastline.shp").is_file()
        assert (
            root
            / "shapefiles/natural_earth/cultural"
            / f"ne_{scale}_admin_0_boundary_lines_land.shp"
        ).is_file()


def test_coastline_and_borders_yield_geometries_without_network(offline):
    coast = cfeature.NaturalEarthFeature("physical", "coastline", "110m")
    geoms = list(coast.geometries())
    assert len(geoms) > 100  # 110 m coastline has 134 line strings
    # the 10 m coastline around Great Britain (the UK parks chapter's region)
    coast10 = cfeature.NaturalEarthFeature("physical", "coastline", "10m")
    uk = list(coast10.intersecting_geometries((-6.0, 2.0, 50.0, 58.0)))
    assert uk and sum(g.length for g in uk) > 20  # degrees of line
    borders = cfeature.NaturalEarthFeature("cultural", "admin_0_boundary_lines_land", "50m")
    assert len(list(borders.intersecting_geometries((5.0, 15.0, 45.0, 55.0)))) > 5  # central Europe
    assert not (cartopy.config["data_dir"]).exists()  # nothing was downloaded to the user dir


def test_missing_natural_earth_file_raises_instead_of_downloading(monkeypatch, tmp_path):
    monkeypatch.setitem(cartopy.config, "data_dir", tmp_path / "cartopy_user_data")
    monkeypatch.setattr(
        socket.socket, "connect", lambda *a, **k: pytest.fail("network access attempted")
    )
    plotting.use_offline_natural_earth(block_downloads=True)
    rivers = cfeature.NaturalEarthFeature("physical", "rivers_lake_centerlines", "110m")
    with pytest.raises(FileNotFoundError, match="ne_110m_rivers_lake_centerlines.shp.*coastline"):
        list(rivers.geometries())


def test_sample_map_plots_points_values_and_features(offline):
    rng = np.random.default_rng(1)
    lon = rng.uniform(-10, 30, 40)
    lat = rng.uniform(40, 65, 40)
    values = rng.gamma(2.0, 30.0, 40)
    values[[3, 7]] = np.nan
    lon_in, values_in = lon.copy(), values.copy()

    ax = plotting.sample_map(lon, lat, values, label="rarefied richness", scale="110m")
    assert isinstance(ax, cartopy.mpl.geoaxes.GeoAxes)
    points, missing = ax.collections[0], ax.collections[1]
    ok = np.isfinite(values)
    # PlateCarree: projected offsets are the lon/lat themselves
    np.testing.assert_allclose(points.get_offsets(), np.column_stack([lon[ok], lat[ok]]))
    np.testing.assert_allclose(points.get_array(), values[ok])
    np.testing.assert_allclose(missing.get_offsets(), np.column_stack([lon[~ok], lat[~ok]]))
    x0, x1, y0, y1 = ax.get_extent(ccrs.PlateCarree())
    assert x0 <= lon.min() and x1 >= lon.max() and y0 <= lat.min() and y1 >= lat.max()
    features = [
        a for a in ax.get_children() if isinstance(a, cartopy.mpl.feature_artist.FeatureArtist)
    ]
    assert len(features) == 3  # land, coastline, borders
    ax.figure.canvas.draw()  # reads the shapefiles; the fixture fails on any download
    assert len(ax.figure.axes) >= 2  # map and colour bar
    np.testing.assert_array_equal(lon, lon_in)  # inputs untouched
    np.testing.assert_array_equal(values, values_in)


def test_sample_map_without_values_and_on_given_axes(offline):
    fig = plt.figure()
    ax = fig.add_subplot(projection=ccrs.PlateCarree())
    out = plotting.sample_map(
        [-3.2, -2.9], [54.5, 56.8], ax=ax, extent=(-6, 0, 53, 58), scale="50m"
    )
    assert out is ax
    assert len(ax.collections[0].get_offsets()) == 2
    np.testing.assert_allclose(ax.get_extent(ccrs.PlateCarree()), (-6, 0, 53, 58), atol=1e-6)
    assert len(fig.axes) == 1  # no colour bar without values


def test_sample_map_rejects_bad_input(offline):
    with pytest.raises(ValueError, match="differ in length"):
        plotting.sample_map([1.0, 2.0], [50.0])
    with pytest.raises(ValueError, match="latitude must be WGS84"):
        plotting.sample_map([1.0], [95.0])
    with pytest.raises(ValueError, match="values has 1"):
        plotting.sample_map([1.0, 2.0], [50.0, 51.0], values=[3.0])
    with pytest.raises(ValueError, match="GeoAxes"):
        plotting.sample_map([1.0], [50.0], ax=plt.figure().add_subplot())
    with pytest.raises(ValueError, match="extent"):
        plotting.sample_map([1.0], [50.0], extent=(5, 0, 40, 60))


def test_landcover_colours_cover_classes_and_are_distinct():
    assert set(plotting.LANDCOVER_COLOURS) == {
        "broadleaf",
        "conifer",
        "mixed",
        "grassland",
        "heath",
        "cropland",
        "urban",
        "water",
    }
    rgb = np.array([to_rgb(plotting.LANDCOVER_COLOURS[c]) for c in plotting.LANDCOVER_CLASSES])
    dist = np.sqrt(((rgb[:, None] - rgb[None]) ** 2).sum(-1))
    assert dist[np.triu_indices(len(rgb), 1)].min() > 0.15  # no two classes look alike

    fig, ax = plt.subplots()
    legend = plotting.landcover_legend(ax)
    assert [t.get_text() for t in legend.get_texts()][:3] == [
        "broadleaf woodland",
        "conifer woodland",
        "mixed woodland",
    ]
    face = [h.get_facecolor()[:3] for h in legend.legend_handles]
    np.testing.assert_allclose(face, rgb)
    with pytest.raises(ValueError, match="unknown land-cover class 'forest'"):
        plotting.landcover_legend(ax, ["forest"])
    cmap, norm = plotting.landcover_colormap()
    assert to_rgb(cmap(norm(7))) == to_rgb(plotting.LANDCOVER_COLOURS["water"])
    plt.close(fig)


def test_set_style_sets_dpi_palette_and_fonts():
    plotting.set_style()
    rc = matplotlib.rcParams
    assert rc["figure.dpi"] == plotting.FIGURE_DPI and rc["savefig.dpi"] == plotting.SAVEFIG_DPI
    assert rc["axes.prop_cycle"].by_key()["color"] == list(plotting.OKABE_ITO)
    assert rc["font.size"] >= 10
    assert rc["font.sans-serif"][0] == "DejaVu Sans"
