"""Tests for fungi_ssl.validation.cv: the random protocol and the spatial splitters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyproj import Geod
from sklearn.linear_model import Ridge
from sklearn.model_selection import cross_val_score

from fungi_ssl.data.coordinates import crs_to_lonlat, lonlat_to_crs
from fungi_ssl.data.sites import site_groups
from fungi_ssl.validation.cv import BlockKFold, BufferedKFold, RandomTrainValTest, SiteGroupKFold

GEOD = Geod(ellps="WGS84")
UTM32 = 32632  # the UTM zone of the fixture (central meridian 9° E)


def geodesic_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All geodesic distances (metres) between lon/lat rows of ``a`` and ``b``, by pyproj."""
    i, j = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
    _, _, d = GEOD.inv(a[i.ravel(), 0], a[i.ravel(), 1], b[j.ravel(), 0], b[j.ravel(), 1])
    return np.asarray(d).reshape(len(a), len(b))


@pytest.fixture(scope="module")
def clustered_lonlat() -> np.ndarray:
    """~600 samples at 150 plots in central Europe, cores of a plot within ~10 m.

    Laid out in UTM zone 32 metres (where the lon/lat blocks are drawn). A
    third of the plots sit on 10 km grid lines so that block edges cut
    through them, and a few plots are chains of cores 20 m apart (one site by
    single linkage, wider than 25 m end to end).
    """
    rng = np.random.default_rng(42)
    n_plots = 150
    x0, y0 = lonlat_to_crs([10.0], [50.0], UTM32)
    centre = np.array([x0[0], y0[0]])
    plots = centre + rng.uniform(-60_000, 60_000, size=(n_plots, 2))
    on_edge = rng.random(n_plots) < 0.33
    plots[on_edge, 0] = np.round(plots[on_edge, 0] / 10_000) * 10_000  # straddle x edges
    xy = []
    for i, p in enumerate(plots):
        if i % 25 == 0:  # a chain: 5 cores 20 m apart along x
            xy.extend(p + np.array([[20.0 * j, 0.0] for j in range(5)]))
        else:
            k = rng.integers(1, 7)
            xy.extend(p + rng.normal(0, 3, size=(k, 2)))
    xy = np.asarray(xy)
    lon, lat = crs_to_lonlat(xy[:, 0], xy[:, 1], UTM32)
    return np.column_stack([lon, lat])


@pytest.fixture(scope="module")
def clustered_distances(clustered_lonlat) -> np.ndarray:
    return geodesic_matrix(clustered_lonlat, clustered_lonlat)


@pytest.fixture(scope="module")
def close_pairs(clustered_distances) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of fixture samples within 25 m (geodesic, pyproj)."""
    i, j = np.nonzero(np.triu(clustered_distances <= 25.0, k=1))
    return i, j


# ------------------------------------------------------------------ sites
def test_site_groups_single_linkage_chain():
    xy = np.array([[0, 0], [24, 0], [48, 0], [72, 0], [200, 0], [200, 0]], float)
    labels = site_groups(xy, distance_m=25, coordinates="metres")
    assert labels.tolist() == [0, 0, 0, 0, 1, 1]
    # 23 m links nothing but the duplicate pair
    assert site_groups(xy, 23, coordinates="metres").tolist() == [0, 1, 2, 3, 4, 4]


def test_site_groups_matches_brute_force(clustered_lonlat, clustered_distances, close_pairs):
    labels = site_groups(clustered_lonlat, 25)
    i, j = close_pairs
    assert len(i) > 0
    assert np.all(labels[i] == labels[j])
    # and distinct sites are really apart: every site is far from all others
    other = labels[:, None] != labels[None, :]
    assert clustered_distances[other].min() > 25


def test_site_groups_does_not_modify_input(clustered_lonlat):
    before = clustered_lonlat.copy()
    site_groups(clustered_lonlat)
    np.testing.assert_array_equal(before, clustered_lonlat)


# ------------------------------------------------------------------ no site split
@pytest.mark.parametrize(
    "make",
    [
        lambda c: SiteGroupKFold(n_splits=5, seed=3, coords=c),
        lambda c: BlockKFold(block_size_m=10_000, n_splits=5, seed=3, coords=c),
        lambda c: BlockKFold(block_size_m=10_000, n_splits=5, balance=False, coords=c),
        lambda c: BufferedKFold(buffer_m=2_000, n_splits=4, coords=c),
        lambda c: BufferedKFold(buffer_m=2_000, n_splits=4, block_size_m=20_000, coords=c),
    ],
    ids=["sitegroup", "block", "block-unbalanced", "buffered-sites", "buffered-blocks"],
)
def test_no_site_is_split_across_folds(clustered_lonlat, close_pairs, make):
    cv = make(clustered_lonlat)
    n = len(clustered_lonlat)
    fold = np.full(n, -1)
    for k, (train, test) in enumerate(cv.split(np.zeros((n, 1)))):
        assert np.intersect1d(train, test).size == 0
        assert np.all(fold[test] == -1), "a sample was tested twice"
        fold[test] = k
    assert np.all(fold >= 0), "every sample is tested once"
    i, j = close_pairs
    assert np.all(fold[i] == fold[j]), "samples within 25 m ended in different folds"
    assert cv.get_n_splits() == k + 1


def test_block_edges_would_cut_sites_without_site_merging(clustered_lonlat, close_pairs):
    """The fixture does put sites on block edges, so the test above means something."""
    cv = BlockKFold(block_size_m=10_000, site_distance_m=None, coords=clustered_lonlat)
    blocks = cv.block_labels(clustered_lonlat)
    i, j = close_pairs
    assert np.any(blocks[i] != blocks[j])


def test_folds_balanced_by_sample_count(clustered_lonlat):
    n = len(clustered_lonlat)
    sizes = [len(t) for _, t in SiteGroupKFold(5, coords=clustered_lonlat).split(range(n))]
    largest_site = np.bincount(site_groups(clustered_lonlat)).max()
    assert max(sizes) - min(sizes) <= largest_site
    bsizes = [len(t) for _, t in BlockKFold(10_000, 5, coords=clustered_lonlat).split(range(n))]
    assert max(bsizes) / min(bsizes) < 1.3


def test_blocks_are_squares_of_block_size():
    xy = np.array([[x, y] for x in np.arange(50, 3000, 100.0) for y in np.arange(50, 3000, 100.0)])
    cv = BlockKFold(1000, n_splits=3, site_distance_m=None, coords=xy, coordinates="metres")
    blocks = cv.block_labels(xy)
    assert len(np.unique(blocks)) == 9
    for b in np.unique(blocks):
        pts = xy[blocks == b]
        assert np.ptp(pts[:, 0]) < 1000 and np.ptp(pts[:, 1]) < 1000


# ------------------------------------------------------------------ buffer
@pytest.mark.parametrize("block_size_m", [None, 15_000])
def test_buffered_training_points_are_beyond_buffer(
    clustered_lonlat, clustered_distances, block_size_m
):
    buffer_m = 5_000.0
    d = clustered_distances  # geodesic, pyproj
    cv = BufferedKFold(buffer_m, n_splits=5, block_size_m=block_size_m, seed=7)
    dropped_any = False
    for train, test in cv.split(clustered_lonlat, groups=clustered_lonlat):
        assert d[np.ix_(train, test)].min() > buffer_m
        # nothing beyond the buffer was dropped: the rest are all within it
        rest = np.setdiff1d(np.arange(len(d)), np.concatenate([train, test]))
        if len(rest):
            dropped_any = True
            assert d[np.ix_(rest, test)].min(axis=1).max() <= buffer_m
    assert dropped_any


def test_buffer_zero_equals_unbuffered(clustered_lonlat):
    n = len(clustered_lonlat)
    a = list(BufferedKFold(0.0, 5, seed=2, coords=clustered_lonlat).split(range(n)))
    b = list(SiteGroupKFold(5, seed=2, coords=clustered_lonlat).split(range(n)))
    for (tra, tea), (trb, teb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(tra, trb)
        np.testing.assert_array_equal(tea, teb)


def test_buffer_too_large_raises(clustered_lonlat):
    cv = BufferedKFold(1e7, n_splits=3, coords=clustered_lonlat)
    with pytest.raises(ValueError, match="buffer_m"):
        list(cv.split(clustered_lonlat))


# ------------------------------------------------------------------ random protocol
def test_random_train_val_test_proportions_and_disjoint():
    n = 1003
    cv = RandomTrainValTest(n_seeds=4, seed=10)
    triples = list(cv.split_train_val_test(np.zeros((n, 2))))
    assert len(triples) == cv.get_n_splits() == 4
    for train, val, test in triples:
        assert (len(train), len(val), len(test)) == (702, 100, 201)
        allidx = np.concatenate([train, val, test])
        assert len(np.unique(allidx)) == n and allidx.min() == 0 and allidx.max() == n - 1
    # the seeds give different splits
    assert not np.array_equal(triples[0][2], triples[1][2])
    # sklearn view: train+val, test
    for (tr, te), (a, b, c) in zip(cv.split(range(n)), triples, strict=True):
        np.testing.assert_array_equal(tr, np.sort(np.concatenate([a, b])))
        np.testing.assert_array_equal(te, c)


def test_random_split_i_is_seed_plus_i():
    """Split i of a run is the same as split 0 of a run that starts at seed + i (pairing)."""
    many = list(RandomTrainValTest(n_seeds=3, seed=5).split_train_val_test(range(200)))
    one = next(RandomTrainValTest(n_seeds=1, seed=7).split_train_val_test(range(200)))
    for a, b in zip(many[2], one, strict=True):
        np.testing.assert_array_equal(a, b)
    assert RandomTrainValTest(3, seed=5).seeds == [5, 6, 7]


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize(
    "make",
    [
        lambda s: RandomTrainValTest(3, seed=s),
        lambda s: SiteGroupKFold(5, seed=s),
        lambda s: BlockKFold(10_000, 5, seed=s),
        lambda s: BufferedKFold(1_000, 5, seed=s),
    ],
    ids=["random", "sitegroup", "block", "buffered"],
)
def test_same_seed_same_splits(clustered_lonlat, make):
    X = np.zeros((len(clustered_lonlat), 1))

    def tests(seed):
        return [t.tolist() for _, t in make(seed).split(X, groups=clustered_lonlat)]

    assert tests(1) == tests(1)
    assert tests(1) != tests(2)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "coords, match",
    [
        (np.array([[10.0, np.nan], [10.0, 50.0]]), "NaN"),
        (np.array([[190.0, 50.0], [10.0, 50.0]]), "longitude"),
        (np.array([[10.0, 95.0], [10.0, 50.0]]), "latitude"),
        (np.zeros((2, 3)), r"shape \(n, 2\)"),
        (pd.DataFrame({"lon": [1.0], "lat": [2.0]}), "longitude"),
    ],
)
def test_bad_coordinates_raise_naming_parameter(coords, match):
    with pytest.raises(ValueError, match=f"coords.*{match}"):
        SiteGroupKFold(2, coords=coords)
    with pytest.raises(ValueError, match=f"groups.*{match}"):
        list(BlockKFold(1000, 2).split(np.zeros((len(coords), 1)), groups=coords))


def test_coordinate_length_and_source_errors(clustered_lonlat):
    cv = SiteGroupKFold(2, coords=clustered_lonlat)
    with pytest.raises(ValueError, match="coords.*one row per sample"):
        list(cv.split(np.zeros((3, 1))))
    with pytest.raises(ValueError, match="given twice"):
        list(cv.split(clustered_lonlat, groups=clustered_lonlat))
    with pytest.raises(ValueError, match="needs sample coordinates"):
        list(SiteGroupKFold(2).split(clustered_lonlat))
    with pytest.raises(ValueError, match="n_splits"):
        SiteGroupKFold(1)
    with pytest.raises(ValueError, match="n_splits=50 is more than"):
        list(BlockKFold(1e6, 50, coords=clustered_lonlat).split(clustered_lonlat))


def test_metres_and_dataframe_inputs_agree(clustered_lonlat):
    df = pd.DataFrame(clustered_lonlat, columns=["longitude", "latitude"])
    xy = np.column_stack(lonlat_to_crs(clustered_lonlat[:, 0], clustered_lonlat[:, 1], UTM32))
    a = SiteGroupKFold(4, coords=df).fold_labels()
    b = SiteGroupKFold(4, coords=xy, coordinates="metres").fold_labels()
    c = SiteGroupKFold(4, coords=pd.DataFrame(xy, columns=["x", "y"]), coordinates="metres")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c.fold_labels())


# ------------------------------------------------------------------ sklearn
def test_works_with_cross_val_score(clustered_lonlat):
    rng = np.random.default_rng(0)
    n = len(clustered_lonlat)
    X = rng.normal(size=(n, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + rng.normal(0, 0.5, n)
    for cv in (
        SiteGroupKFold(4, coords=clustered_lonlat),
        BlockKFold(20_000, 4, coords=clustered_lonlat),
        BufferedKFold(2_000, 4, coords=clustered_lonlat),
        RandomTrainValTest(3),
    ):
        scores = cross_val_score(Ridge(), X, y, cv=cv)
        assert len(scores) == cv.get_n_splits()
        assert np.all(scores > 0.85)  # true R² ≈ 0.95
    # coordinates passed as groups give the same folds as at construction
    s1 = cross_val_score(Ridge(), X, y, cv=BlockKFold(20_000, 4, coords=clustered_lonlat))
    s2 = cross_val_score(Ridge(), X, y, cv=BlockKFold(20_000, 4), groups=clustered_lonlat)
    np.testing.assert_allclose(s1, s2)


def test_metadata_routing_passes_coordinates_as_groups(clustered_lonlat):
    import sklearn

    rng = np.random.default_rng(1)
    X = rng.normal(size=(len(clustered_lonlat), 2))
    y = X[:, 0] + rng.normal(0, 0.1, len(X))
    plain = cross_val_score(Ridge(), X, y, cv=SiteGroupKFold(3), groups=clustered_lonlat)
    with sklearn.config_context(enable_metadata_routing=True):
        routed = cross_val_score(
            Ridge(), X, y, cv=SiteGroupKFold(3), params={"groups": clustered_lonlat}
        )
    np.testing.assert_allclose(plain, routed)


def test_repr_summarises_coordinates(clustered_lonlat):
    text = repr(BlockKFold(5_000, 3, coords=clustered_lonlat))
    assert text.startswith("BlockKFold(block_size_m=5000.0, n_splits=3")
    assert f"coords=<{len(clustered_lonlat)} points>" in text


# ------------------------------------------------------------------ every continent
#: (longitude, latitude) of a point on each continent: central Europe, Japan, New South Wales.
CONTINENTS = {"europe": (10.0, 50.0), "east_asia": (135.0, 35.0), "australia": (150.0, -33.0)}


@pytest.mark.parametrize("name", list(CONTINENTS))
@pytest.mark.parametrize("azimuth", [0.0, 90.0, 45.0], ids=["north", "east", "northeast"])
def test_site_radius_is_25_m_on_the_ground_on_every_continent(name, azimuth):
    lon0, lat0 = CONTINENTS[name]
    steps = [0.0, 25.0, 25.0 + 1000.0, 25.0 + 1000.0 + 30.0]  # geodesic distances from the start
    lon, lat, _ = GEOD.fwd(np.full(4, lon0), np.full(4, lat0), np.full(4, azimuth), steps)
    labels = site_groups(np.column_stack([lon, lat]))
    # 25 m apart link into one site; 30 m apart do not
    assert labels.tolist() == [0, 0, 1, 2]


def _block_edge_spacing_m(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Ground distance between successive block changes along a densely sampled line."""
    blocks = BlockKFold(50_000, site_distance_m=None).block_labels(np.column_stack([lon, lat]))
    _, _, step = GEOD.inv(lon[:-1], lat[:-1], lon[1:], lat[1:])
    along = np.concatenate([[0.0], np.cumsum(step)])
    change = np.flatnonzero(np.diff(blocks) != 0) + 1
    return np.diff((along[change - 1] + along[change]) / 2)


@pytest.mark.parametrize("name", list(CONTINENTS))
def test_50_km_blocks_are_50_km_on_the_ground_on_every_continent(name):
    lon0, lat0 = CONTINENTS[name]
    meridian = np.floor(lon0 / 6.0) * 6.0 + 3.0  # central meridian of the UTM zone
    epsg = 32600 + int((meridian + 180) // 6) + 1
    # an east-west line halfway between two block rows, so only columns change along it
    _, y0 = lonlat_to_crs([meridian], [lat0], epsg)
    _, lat_mid = crs_to_lonlat([500_000.0], [(np.floor(y0[0] / 50_000) + 0.5) * 50_000], epsg)
    lon = np.arange(meridian - 2.5, meridian + 2.5, 0.0005)
    ew = _block_edge_spacing_m(lon, np.full_like(lon, lat_mid[0]))
    # a north-south line between two block columns
    lat = np.arange(lat0 - 1.5, lat0 + 1.5, 0.0005)
    ns = _block_edge_spacing_m(np.full_like(lat, meridian + 0.2), lat)
    assert len(ew) >= 3 and len(ns) >= 3
    # within 1% (the zone's scale is within 0.1%; the lines are sampled every ~50 m)
    np.testing.assert_allclose(ew, 50_000, rtol=0.01)
    np.testing.assert_allclose(ns, 50_000, rtol=0.01)


def test_spatial_cv_on_samples_from_three_continents():
    rng = np.random.default_rng(3)
    parts, origin = [], []
    for k, (lon0, lat0) in enumerate(CONTINENTS.values()):
        n = 150
        lon, lat, _ = GEOD.fwd(
            np.full(n, lon0), np.full(n, lat0), rng.uniform(0, 360, n), rng.uniform(0, 150e3, n)
        )
        parts.append(np.column_stack([lon, lat]))
        origin += [k] * n
    lonlat, origin = np.vstack(parts), np.array(origin)
    cv = BlockKFold(50_000, n_splits=5, coords=lonlat)
    blocks = cv.block_labels(lonlat)
    for b in np.unique(blocks):  # no block holds samples of two continents
        assert np.unique(origin[blocks == b]).size == 1
    # sizes like Europe's on every continent: about (300 km / 50 km)^2 * pi / 4 blocks each
    per_continent = [np.unique(blocks[origin == k]).size for k in range(3)]
    assert max(per_continent) / min(per_continent) < 1.4
    folds = cv.fold_labels()
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    buffered = BufferedKFold(10_000, n_splits=3, block_size_m=50_000, coords=lonlat)
    for train, test in buffered.split(lonlat):
        assert geodesic_matrix(lonlat[train], lonlat[test]).min() > 10_000


def test_site_linking_is_fast_on_a_table_of_14k_samples():
    """The simulated study has ~14,000 samples; linking them must not slow a chapter."""
    import time

    rng = np.random.default_rng(0)
    n_plots = 5_000
    plots = np.column_stack([rng.uniform(-10, 30, n_plots), rng.uniform(36, 70, n_plots)])
    cores = rng.integers(1, 5, n_plots)
    lonlat = np.repeat(plots, cores, axis=0)
    lonlat = lonlat + rng.normal(0, 5e-5, lonlat.shape) * (rng.random(len(lonlat)) < 0.5)[:, None]
    start = time.perf_counter()
    labels = site_groups(lonlat)
    elapsed = time.perf_counter() - start
    assert labels.max() + 1 <= n_plots
    assert elapsed < 5.0, f"site_groups took {elapsed:.1f} s for {len(lonlat)} samples"


def test_spatial_cv_adapts_to_a_region_smaller_than_its_blocks():
    """Issue 16: a 20 km region under 50 km blocks used to fail with 'n_splits=5 is more than
    the 1 blocks'; now the splitter takes smaller blocks that fill the folds and says so."""
    import pandas as pd

    from fungi_ssl.validation.comparison import spatial_cv_note, spatial_splitter
    from fungi_ssl.validation.cv import fitting_block_size

    rng = np.random.default_rng(0)
    region = pd.DataFrame({"longitude": rng.uniform(-3.80, -3.47, 300),
                           "latitude": rng.uniform(57.00, 57.18, 300)})  # about 20 km square
    cv = spatial_splitter(region, block_size_m=50_000, n_splits=5)
    assert cv.block_size_m < 50_000 and cv.n_splits == 5 and cv.n_blocks >= 5
    folds = cv.fold_labels()
    assert len(np.unique(folds)) == 5
    note = spatial_cv_note(cv)
    assert note.startswith("The samples fill only") and f"{cv.block_size_m / 1000:g} km" in note
    # a study wide enough keeps its blocks, and no sentence
    wide = pd.DataFrame({"longitude": rng.uniform(-5, 15, 400), "latitude": rng.uniform(45, 60, 400)})
    assert spatial_cv_note(spatial_splitter(wide)) is None
    # one site: no spatial CV possible, said in one line
    with pytest.raises(ValueError, match="single 100 m block"):
        fitting_block_size(np.array([[-3.7, 57.0]] * 10), 50_000, 5)
