"""Chapter 06's resolution module: scores worked out by hand, 1 km cells, a tiny region end to end."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from fungi_ssl.core import config
from fungi_ssl.maps import resolution as R
from fungi_ssl.maps import resolution_oracle as RO
from fungi_ssl.maps import resolution_regions as RG
from fungi_ssl.maps import resolution_scores as RS
from fungi_ssl.simulate import SimulatedStudy, Window

F = RG.CELL_PX


# ------------------------------------------------------------------ scores by hand
def test_r2_and_squared_correlation_by_hand():
    # truth 1, 2, 3 (mean 2, SST 2); prediction 1, 2, 4: SSE 1 -> R² 0.5
    assert RS.r2([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]) == pytest.approx(0.5)
    # NaN on either side drops the pair
    assert RS.r2([1.0, 2.0, 3.0, np.nan, 9.0], [1.0, 2.0, 4.0, 7.0, np.nan]) == pytest.approx(0.5)
    # a map off by a constant keeps r² = 1 but loses R²: 1 - 3·1 / 2
    assert RS.squared_correlation([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]) == pytest.approx(1.0)
    assert RS.r2([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]) == pytest.approx(-0.5)
    # r between (1, 2, 3) and (1, 3, 2) is 0.5
    assert RS.squared_correlation([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.25)
    assert np.isnan(RS.squared_correlation([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
    with pytest.raises(ValueError, match="differ in size"):
        RS.r2([1.0, 2.0], [1.0])


def test_cell_means_ignore_nan_and_respect_min_valid():
    a = np.array([[1.0, 3.0, 10.0, np.nan], [np.nan, 5.0, np.nan, np.nan]])
    np.testing.assert_allclose(RG.cell_means(a, f=2), [[3.0, 10.0]])
    out = RG.cell_means(a, f=2, min_valid=0.5)  # the second cell has 1 of 4 pixels
    assert out[0, 0] == 3.0 and np.isnan(out[0, 1])
    with pytest.raises(ValueError, match="multiple of 2"):
        RG.cell_means(np.zeros((3, 2)), f=2)


def test_within_cell_r2_by_hand():
    t = np.array([[1.0, 3.0], [2.0, 6.0]])       # cell mean 3: deviations -2, 0, -1, 3 (SS 14)
    p = np.array([[1.0, 3.0], [3.0, 5.0]])       # cell mean 3: deviations -2, 0, 0, 2
    assert RS.within_cell_r2(t, p, f=2) == pytest.approx(1 - 2 / 14)
    assert RS.within_cell_r2(t, t - 7.0, f=2) == pytest.approx(1.0)        # offsets do not count
    assert RS.within_cell_r2(t, np.full_like(t, 4.0), f=2) == pytest.approx(0.0)  # a 1 km map
    # a NaN pixel leaves the cell means of both maps over the same three pixels
    tn, pn = t.copy(), p.copy()
    pn[1, 1] = np.nan                            # truth 1, 3, 2 (mean 2); map 1, 3, 3 (mean 7/3)
    dt, dp = np.array([-1.0, 1.0, 0.0]), np.array([1, 3, 3]) - 7 / 3
    assert RS.within_cell_r2(tn, pn, f=2) == pytest.approx(1 - ((dt - dp) ** 2).sum() / 2)


def test_pixel_ratio():
    assert RS.pixel_ratio(1_000_000, 100) == 10_000.0
    with pytest.raises(ValueError, match="n_coarse > 0"):
        RS.pixel_ratio(10, 0)


def _products(truth, m10, m1, width_cells=2):
    w = Window(32630, 0, 0, width_cells * F, F, "T")
    region = RG.Region("T", w, "Europe", "forest", 0, 2020, 0.5, 0.0)
    run = type("Run", (), {"seconds": 2.0})()
    return R.RegionProducts(region=region, store=None, truth=truth, map_10m=m10, map_1km=m1,
                            map_path=None, run=run, covariates=pd.DataFrame(),
                            landcover=np.zeros(truth.shape, np.int8))


def test_score_products_on_maps_built_by_hand():
    """Truth = cell level + within-cell pattern: the exact 1 km means and a perfect 10 m map."""
    rng = np.random.default_rng(0)
    level = np.array([[2.0, 4.0]])
    within = rng.normal(0, 1, (F, 2 * F))
    within -= RG._expand(RG.cell_means(within))        # zero mean in each cell
    truth = RG._expand(level) + within
    truth[:10, :10] = np.nan                          # water: not scored
    p = _products(truth, truth.copy(), level.copy())
    s = RS.score_products([p])
    assert s["r2_10m_vs_truth"] == pytest.approx(1.0)
    assert s["within_cell_variance_captured"] == pytest.approx(1.0)
    assert s["within_cell_variance_captured_1km"] == pytest.approx(0.0, abs=1e-12)
    # 1 km map = cell means: its pixel R² is the between-cell share of the variance
    t = truth[np.isfinite(truth)]
    share_within = 1 - s["r2_1km_vs_truth"]
    assert share_within == pytest.approx(s["within_cell_share_of_truth"], rel=1e-3)
    assert share_within == pytest.approx(within[np.isfinite(truth)].var() / t.var(), rel=2e-3)
    assert s["r2_1km_vs_truth_1km"] == pytest.approx(1.0, abs=1e-3)  # means shift by the NaNs
    assert s["r2_10m_aggregated_vs_truth_1km"] == pytest.approx(1.0)
    assert (s["n_cells_1km"], s["n_pixels"], s["pixel_ratio"]) == (2, 2 * F * F, 10_000.0)
    assert s["n_pixels_scored"] == 2 * F * F - 100
    assert s["pixels_per_second"] == pytest.approx(2 * F * F / 2.0)
    # a 10 m map that misses the within-cell pattern is no better than the 1 km map
    s2 = RS.score_products([_products(truth, RG._expand(level), level)])
    assert s2["r2_10m_vs_truth"] == pytest.approx(s2["r2_1km_vs_truth"])
    table = RS.region_scores([p])
    assert list(table.index) == ["T"] and table.loc["T", "r2_10m_vs_truth"] == pytest.approx(1.0)


# ------------------------------------------------------------------ 1 km cells
def test_cell_covariates_are_the_samples_covariates():
    """Asking for a cell through a stand-in site gives what the samples in that cell get."""
    study = SimulatedStudy(n_samples=300, n_campaigns=8)
    site = study.sites.iloc[0]
    cc, cr = int(site["col"]) // F, int(site["row"]) // F
    w = Window(int(site["epsg"]), (cc - 1) * F, (cr - 1) * F, 2 * F, 2 * F, "C")
    region = RG.Region("C", w, "Europe", "forest", 0, 2020, 0.5, 0.0)
    cov = R.cell_covariates(study, region)
    assert len(cov) == 4 and list(cov["cell_row"]) == [0, 0, 1, 1]
    sample = study.samples.query("site_id == @site.site_id")["sample_id"].iloc[0]
    expected = study.covariates.loc[sample]
    got = cov.loc[f"{cr}_{cc}", expected.index].astype(np.float32)
    np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())
    assert (cov.loc[f"{cr}_{cc}", ["cell_row", "cell_col"]] == [1, 1]).all()
    # x/y are cell centres in the region's CRS
    assert cov["x"].min() == (cc - 1) * 1000 + 500 and cov["y"].max() == -((cr - 1) * 1000 + 500)
    with pytest.raises(ValueError, match="whole 1 km cells"):
        R.cell_covariates(study, RG.Region("D", Window(w.epsg, w.col0 + 1, w.row0, F, F), "Europe",
                                          "forest", 0, 2020, 0.5, 0.0))


def test_regions_are_whole_cells_in_different_landscapes():
    rs = RG.regions("quick", 0, n_regions=3, side_km=1)
    assert len(rs) == 3 and len({r.label for r in rs}) == 3
    assert {r.continent for r in rs} == {"Europe", "Asia"}
    assert len({(r.continent, r.focus) for r in rs}) == 3
    for r in rs:
        assert r.window.col0 % F == 0 and r.window.row0 % F == 0 and r.n_cells == 1
        assert RG.WOOD_RANGE[0] <= r.woodland_share <= RG.WOOD_RANGE[1]
    with pytest.raises(ValueError, match="profile must be one of"):
        RG.regions("huge", 0)
    with pytest.raises(ValueError, match="year must be one of"):
        RG.regions("quick", 0, year=1990)


# ------------------------------------------------------------------ a tiny region end to end
def test_tiny_region_end_to_end(tmp_path, monkeypatch):
    """One 1 km cell: embed (untrained encoder), 10 m and 1 km maps, truth, scores."""
    import torch

    from fungi_ssl.embeddings.embed import open_embeddings, raster_patches
    from fungi_ssl.embeddings.encoder import EncoderConfig, TesseraEncoder, TrainedEncoder
    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.simulate.field_data import simulated_study

    monkeypatch.setattr(config, "CACHE_DIR", tmp_path)
    # one cell where woodland meets open land: the first quick region, as regions() picks it
    region = RG.regions("quick", 0)[0]
    assert region.window.width == F and 0 < region.woodland_share < 1
    torch.manual_seed(0)
    enc = TesseraEncoder(EncoderConfig()).eval()  # untrained: features of the raw series
    trained = TrainedEncoder(enc, enc.config, enc.normaliser)
    store = RG.region_store(region, trained, "quick", 0, progress=False)
    assert store == RG.region_store(region, trained, "quick", 0, progress=False)  # cached
    ds = open_embeddings(store)
    assert ds.sizes["y"] == F + 2 * RG.MARGIN_PX and int(ds.attrs["complete"])
    truth = RG.region_truth(region, "quick", 0)
    assert truth.shape == (F, F) and truth.rio.crs.to_epsg() == region.window.epsg
    # a 10 m model fitted on every third pixel's truth (the map's skill is not the point)
    rows, cols = (a.ravel() for a in np.meshgrid(np.arange(0, F, 3), np.arange(0, F, 3),
                                                 indexing="ij"))
    w = region.window
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patches = raster_patches(ds, x=w.x[cols], y=w.y[rows]).values
    y = truth.values[rows, cols]
    ok = np.isfinite(patches).all(axis=(1, 2, 3)) & np.isfinite(y)
    m = MapModel("ridge", n_components=16).fit(patches[ok], y[ok], encoder=trained)
    run = R.predict_region_map(m, region, store, output=tmp_path / "m.tif")
    assert run.map.shape == (F, F) and run.n_nan == int(ds.attrs["n_nan"])  # margin: full patches
    assert (tmp_path / "m.tif").exists()
    # the 1 km model on a small study's samples, mapped on the region's one cell
    small = SimulatedStudy(n_samples=400, n_campaigns=10)
    frame = pd.concat([small.samples.reset_index(drop=True),
                       small.covariates.reset_index(drop=True)], axis=1)
    frame["log_richness"] = np.log1p(frame["rarefied"])
    one = R.fit_1km_model(frame, "rf", seed=0)
    assert one.n_samples == int(frame["rarefied"].notna().sum())
    assert not any(c.startswith("EarthEnv") for c in one.columns)  # climate, soil, land cover
    study = simulated_study("quick", 0)
    cov = R.cell_covariates(study, region)
    m1 = R.predict_1km_map(one, cov, region)
    assert m1.shape == (1, 1) and np.isfinite(m1.values).all()
    p = R.RegionProducts(region=region, store=store, truth=np.log1p(truth.values),
                         map_10m=run.map.values.astype(float), map_1km=m1.values.astype(float),
                         map_path=run.path, run=run, covariates=cov,
                         landcover=np.zeros((F, F), np.int8))
    s = RS.score_products([p])
    assert (s["n_cells_1km"], s["n_pixels"], s["pixel_ratio"]) == (1, F * F, 10_000.0)
    # a constant 1 km map captures nothing within the cell; the 10 m map does
    assert s["within_cell_variance_captured_1km"] == pytest.approx(0.0, abs=1e-9)
    assert s["within_cell_variance_captured"] > 0.05  # an untrained encoder: 0.16 measured
    assert s["pixels_per_second"] > 0
    # on equal terms: a 1 km model fitted on the same training pixels (their cell's 1 km
    # covariates, the same target), both scored on the pixels neither model saw
    train = np.zeros((F, F), bool)
    train[rows, cols] = True
    px = pd.DataFrame(np.repeat(cov[one.columns].to_numpy(float), int(ok.sum()), axis=0),
                      columns=one.columns)
    px["log_richness"], px["site_id"] = np.log1p(y[ok]), np.arange(int(ok.sum())).astype(str)
    one_px = R.fit_1km_model(px, "rf", seed=0)
    m1_px = R.predict_1km_map(one_px, cov, region).values.astype(float)
    test_truth = np.where(train, np.nan, np.log1p(truth.values))
    r2_10m = RS.r2(test_truth, run.map.values)
    r2_1km = RS.r2(test_truth, RG._expand(m1_px))
    assert r2_10m > 0.05 and r2_10m > r2_1km + 0.05


def test_edge_zoom_finds_the_woodland_edge():
    lc = np.full((200, 200), 3, np.int8)          # grassland
    lc[:, 130:] = 0                                # broadleaf east of column 130
    _, c = RG.edge_zoom(lc, size=100)
    assert c == 100  # 30% grass and 70% wood beats 80/20 (c = 50) and pure grass (c = 0)
    with pytest.raises(ValueError, match="does not fit"):
        RG.edge_zoom(lc, size=300)


def test_chapter04_model_reads_the_best_family(tmp_path):
    from fungi_ssl.core.results import write_results

    assert R.chapter04_model(tmp_path) == ("lightgbm", "default: chapter 04's results not found")
    write_results("04_predictor_comparison", {"random": {
        "ssl": {"rf": {"r2_mean": 0.5}, "xgboost": {"r2_mean": 0.45}},
        "soil": {"rf": {"r2_mean": 0.1}, "xgboost": {"r2_mean": 0.2}}}}, tmp_path)
    # mean over sets: rf 0.30, xgboost 0.325 (the best on ssl alone is not the choice)
    assert R.chapter04_model(tmp_path) == ("xgboost", "chapter 04")


def test_skip_reason_is_one_sentence_on_real_data():
    assert RG.skip_reason(None) is None and RG.skip_reason("") is None
    reason = RG.skip_reason("../shared/data/real")
    assert reason.endswith(".") and reason.count(". ") == 0 and "skipped" in reason
    assert "../shared" not in reason  # no path in the book's output


def test_edge_zoom_on_whole_cells():
    lc = np.full((2 * F, 2 * F), 3, np.int8)
    lc[F:, F + F // 2:] = 0                        # woodland in the lower right cell only
    assert RG.edge_zoom(lc, F, step=F) == (F, F)    # whole cells only: never straddles two


# ------------------------------------------------------------------ held-out regions, products
def test_withheld_rows_take_the_region_and_its_campaigns_nearby():
    study = SimulatedStudy(n_samples=600, n_campaigns=10)
    site = study.sites.iloc[0]
    cc, cr = int(site["col"]) // F, int(site["row"]) // F
    region = RG.Region("H", Window(int(site["epsg"]), cc * F, cr * F, F, F, "H"), "Europe",
                      "forest", int(site["campaign"]), 2020, 0.5, 0.0)
    frame = study.samples.reset_index(drop=True)
    out = R.withheld_rows(frame, study, region)
    sites = study.sites.set_index("site_id").loc[frame["site_id"]]
    same = (sites["epsg"] == region.window.epsg).to_numpy()
    col, row = sites["col"].to_numpy(), sites["row"].to_numpy()
    inside = same & (col // F == cc) & (row // F == cr)
    assert inside.any() and out[inside].all()          # the region's own samples
    # a sample of another campaign outside the region stays unless its campaign has a site inside
    camps = set(sites["campaign"][inside]) | {region.campaign}
    keep = ~sites["campaign"].isin(camps).to_numpy() & ~inside
    assert not out[keep].any()
    # the region's campaigns lose their samples within 10 km, keep those farther away
    d = np.hypot(np.maximum.reduce([cc * F - col, np.zeros_like(col), col - (cc + 1) * F]),
                 np.maximum.reduce([cr * F - row, np.zeros_like(row), row - (cr + 1) * F])) * 10.0
    theirs = sites["campaign"].isin(camps).to_numpy() & same
    assert out[theirs & (d <= 9_000)].all() and not out[theirs & (d > 11_000)].any()
    with pytest.raises(ValueError, match="site_id"):
        R.withheld_rows(frame.drop(columns="site_id"), study, region)


def _two_cell_products(seed, level_shift=0.0):
    rng = np.random.default_rng(seed)
    level = rng.normal(3.0, 0.5, (1, 2))
    within = rng.normal(0, 0.4, (F, 2 * F))
    truth = RG._expand(level) + within
    m10 = truth + rng.normal(0, 0.3, truth.shape) + level_shift
    p = _products(truth, m10, level + rng.normal(0, 0.2, level.shape))
    p.map_product = truth + rng.normal(0, 0.2, truth.shape)
    return p


def test_scores_pool_regions_and_bootstrap_over_them():
    ps = [_two_cell_products(s, shift) for s, shift in enumerate((0.0, 0.5, -0.3, 0.1))]
    s = RS.score_products(ps)
    # pooled scores equal the scores of the pixels put together
    t = np.concatenate([p.truth.ravel() for p in ps])
    assert s["r2_10m_vs_truth"] == pytest.approx(RS.r2(t, np.concatenate([p.map_10m.ravel() for p in ps])))
    assert s["r2_product_vs_truth"] == pytest.approx(
        RS.r2(t, np.concatenate([p.map_product.ravel() for p in ps])))
    assert s["r2_product_vs_truth"] > s["r2_10m_vs_truth"] > s["r2_1km_vs_truth"]
    ci = RS.bootstrap_scores(ps, n_boot=400, seed=1)
    for k in ("r2_10m_vs_truth", "r2_product_vs_truth", "within_cell_variance_captured"):
        lo, hi = ci[f"{k}_ci"]
        assert lo <= s[k] <= hi and lo < hi
    # the same region four times: every draw is that region, the interval collapses
    same = RS.bootstrap_scores([ps[0]] * 4, n_boot=50)
    assert same["r2_10m_vs_truth_ci"][0] == pytest.approx(same["r2_10m_vs_truth_ci"][1])
    table = RS.region_scores(ps)
    assert table["bias_10m"].iloc[0] == pytest.approx(float(np.mean(ps[0].map_10m - ps[0].truth)))
    assert "bias_product" in table and "r2_product_vs_truth" in table
    with pytest.raises(ValueError, match="at least 2 regions"):
        RS.bootstrap_scores(ps[:1])


def test_product_model_sees_both_scales():
    """A target made of a patch signal plus a covariate signal: the product model recovers
    both, better than either single-scale model."""
    from fungi_ssl.maps.mapmodel import MapModel

    rng = np.random.default_rng(3)
    n, dim = 1500, 8
    patch_signal = rng.normal(size=n)              # what the patch shows (its first PC)
    X = (np.outer(patch_signal, rng.normal(size=9 * dim)) + 0.3 * rng.normal(size=(n, 9 * dim))
         ).astype(np.float32)
    temp = rng.normal(size=n)
    frame = pd.DataFrame(X, columns=[f"ssl_{i:04d}" for i in range(9 * dim)])
    frame["CHELSA_BIO_Annual_Mean_Temperature"] = temp
    frame["SG_Soil_pH_H2O_005cm"] = rng.normal(size=n)
    frame["ConsensusLandCoverClass_Barren"] = rng.uniform(size=n)
    frame["log_richness"] = 3 + 0.5 * patch_signal + 0.5 * temp + rng.normal(0, 0.1, n)
    frame["site_id"] = np.arange(n).astype(str)
    tr, te = frame.iloc[:1200], frame.iloc[1200:]
    m10 = MapModel("lightgbm", n_components=4, seed=0, n_jobs=1).fit(tr, encoder="e",
                                                                    embedding_dim=dim)
    prod = R.fit_product_model(tr, m10, "lightgbm", seed=0)
    one = R.fit_1km_model(tr, "lightgbm", seed=0)
    y = te["log_richness"].to_numpy()
    r_prod = RS.r2(y, prod.predict_frame(te))
    r_10 = RS.r2(y, m10.predict_patches(te, output="log_richness"))
    r_1 = RS.r2(y, one.predict(te))
    assert r_prod > max(r_10, r_1) + 0.1
    resid = R.fit_residual_model(tr, m10, "lightgbm", seed=0)
    r_res = RS.r2(y, one.predict(te) + resid.predict_components(m10.project_patches(te)))
    assert r_res > max(r_10, r_1)
    with pytest.raises(ValueError, match="lacks covariates"):
        prod.predict_frame(te.drop(columns="SG_Soil_pH_H2O_005cm"))


# ------------------------------------------------------------------ composites, criteria, levels
def test_within_cell_deviations_keep_the_levels_and_take_the_pattern():
    rng = np.random.default_rng(5)
    level = rng.normal(3.0, 0.5, (1, 2))
    pattern = rng.normal(0.0, 1.0, (F, 2 * F)) + 7.0         # its own level is far off
    pattern[:5, :5] = np.nan
    product = RG._expand(level) + rng.normal(0, 0.3, (F, 2 * F))
    out = RG.with_within_cell_deviations(product, pattern)
    # cell means of the result are the product's; deviations inside a cell are the pattern's
    np.testing.assert_allclose(RG.cell_means(out), RG.cell_means(product))
    np.testing.assert_allclose(out - RG._expand(RG.cell_means(out)),
                               pattern - RG._expand(RG.cell_means(pattern)))
    assert np.isnan(out[:5, :5]).all() and np.isfinite(out[5:, 5:]).all()
    # a 1 km map's pixels: the chapter's "deviations" map, exactly as it was built
    m1 = RG._expand(level.astype(np.float32).astype(float))
    np.testing.assert_array_equal(RG.with_within_cell_deviations(m1, pattern),
                                  m1 + pattern - RG._expand(RG.cell_means(pattern)))
    with pytest.raises(ValueError, match="differ in shape"):
        RG.with_within_cell_deviations(product, pattern[:, :F])


def test_composite_of_product_levels_and_10m_pattern_scores_both():
    """Truth = levels + pattern; a product map with the right levels but a weak pattern and a
    10 m map with the right pattern but wrong levels: the composite keeps the best of each."""
    rng = np.random.default_rng(7)
    level = rng.normal(3.0, 0.6, (1, 2))
    within = rng.normal(0, 0.5, (F, 2 * F))
    within -= RG._expand(RG.cell_means(within))
    truth = RG._expand(level) + within
    m10 = truth + np.array([[0.8, -0.8]]).repeat(F, 0).repeat(F, 1) + rng.normal(0, 0.2, truth.shape)
    p = _products(truth, m10, level + rng.normal(0, 0.3, level.shape))
    p.map_product = RG._expand(level) + 0.3 * within + rng.normal(0, 0.05, truth.shape)
    p.alternatives = {"product_deviations": RG.with_within_cell_deviations(p.map_product, m10)}
    s = RS.score_products([p])
    assert s["within_cell_variance_captured_product_deviations"] == pytest.approx(
        s["within_cell_variance_captured"])
    assert s["r2_product_deviations_aggregated_vs_truth_1km"] == pytest.approx(
        s["r2_product_aggregated_vs_truth_1km"], abs=1e-9)
    assert s["r2_product_deviations_vs_truth"] > max(s["r2_product_vs_truth"],
                                                     s["r2_10m_vs_truth"])
    assert "bias_product_deviations" in RS.region_scores([p])


def test_blend_averages_two_independent_estimates_of_each_cells_level():
    """Two level estimates with independent errors of equal size: the blend's 1 km means
    (their average, the 10 m map's pattern inside) beat both, and the blend equals the
    composite model's arithmetic on labelled cells."""
    from fungi_ssl.maps.composite import LEVEL_WEIGHTS, cell_deviation_map

    rng = np.random.default_rng(11)
    n_cells = 16
    level = rng.normal(3.0, 0.6, (1, n_cells))
    within = rng.normal(0, 0.5, (F, n_cells * F))
    within -= RG._expand(RG.cell_means(within))
    truth = RG._expand(level) + within
    m10 = truth + RG._expand(rng.normal(0, 0.4, level.shape)) + rng.normal(0, 0.2, truth.shape)
    p = _products(truth, m10, level + rng.normal(0, 0.3, level.shape), width_cells=n_cells)
    p.map_product = RG._expand(level + rng.normal(0, 0.4, level.shape)) + 0.3 * within
    w = LEVEL_WEIGHTS["blend"]
    blend = RG.with_within_cell_deviations(p.map_product, m10, weight=w)
    p.alternatives = {"product_deviations": RG.with_within_cell_deviations(p.map_product, m10),
                      "blend": blend}
    np.testing.assert_allclose(RG.cell_means(blend),
                               w * RG.cell_means(p.map_product) + (1 - w) * RG.cell_means(m10))
    labels = RG._expand(np.arange(n_cells)[None, :])
    np.testing.assert_allclose(cell_deviation_map(p.map_product, m10, labels, weight=w), blend,
                               rtol=1e-12)
    s = RS.score_products([p])
    assert s["r2_blend_aggregated_vs_truth_1km"] > max(
        s["r2_product_deviations_aggregated_vs_truth_1km"], s["r2_10m_aggregated_vs_truth_1km"])
    assert s["within_cell_variance_captured_blend"] == pytest.approx(
        s["within_cell_variance_captured"])


def test_criteria_table_and_the_winner_by_hand():
    scores = {"r2_10m_vs_truth": 0.46, "r2_1km_vs_truth": 0.21, "r2_1km_vs_truth_1km": 0.47,
              "r2_10m_aggregated_vs_truth_1km": 0.47, "within_cell_variance_captured": 0.45,
              "within_cell_variance_captured_1km": 0.0}
    for c, (a, b, w) in {"product": (0.50, 0.69, 0.35), "deviations": (0.46, 0.46, 0.45),
                         "product_deviations": (0.55, 0.69, 0.45)}.items():
        scores.update({f"r2_{c}_vs_truth": a, f"r2_{c}_aggregated_vs_truth_1km": b,
                       f"within_cell_variance_captured_{c}": w})
    pr = pd.DataFrame({"bias_10m": [1.2, -0.2], "bias_1km": [0.5, 1.07],
                       "bias_product": [0.36, -0.5], "bias_deviations": [0.5, 1.07],
                       "bias_product_deviations": [0.36, -0.5]}, index=["R1", "R2"])
    t = RS.criteria_table(scores, pr)
    assert list(t.index) == ["10m", "1km", "product", "deviations", "product_deviations"]
    assert t.loc["product", "target_pixel"] == pytest.approx(0.49)
    assert t.loc["product", "target_cell"] == pytest.approx(0.45)
    assert t.loc["product", "target_within"] == pytest.approx(0.40)
    assert t.loc["product", "n_met"] == 2 and not t.loc["product", "met_within"]
    assert t.loc["product_deviations", "n_met"] == 3 and not t.loc["product_deviations", "met_bias"]
    assert t.loc["product_deviations", "worst_region"] == "R2"
    assert t.loc["10m", "n_met"] == 2 and not t.loc["10m", "met_pixel"]  # single-scale maps too
    assert RS.pick_product(t) == "product_deviations"
    # a tie in criteria met goes to R² over every pixel
    t2 = t.copy()
    t2.loc["product", "n_met"] = 3
    t2.loc["product", "r2_vs_truth"] = 0.6
    assert RS.pick_product(t2) == "product"
    assert RS.pick_product(t.loc[["10m", "deviations"]]) == "deviations"  # never a single scale
    with pytest.raises(ValueError, match="both scales"):
        RS.pick_product(t.loc[["10m", "1km"]])
    with pytest.raises(ValueError, match="no scores"):
        RS.criteria_table(scores, pr, ["residual"])


def test_level_shares_by_hand():
    pr = pd.DataFrame({"truth_mean": [2.0, 3.0, 4.0, 3.0],        # SS about the mean: 2
                       "bias_a": [0.1, -0.2, 0.3, 0.0],          # SS 0.14
                       "bias_b": [1.0, -1.0, 0.0, 0.0]})         # SS 2: no better than a constant
    t = RS.level_shares(pr)
    assert t.loc["a", "level_r2"] == pytest.approx(1 - 0.14 / 2)
    assert t.loc["b", "level_r2"] == pytest.approx(0.0)
    assert t.loc["a", "rms_bias"] == pytest.approx(np.sqrt(0.14 / 4))
    assert (t.loc["a", "regions_within"], t.loc["b", "regions_within"]) == (3, 2)
    assert t.loc["a", "max_abs_bias"] == pytest.approx(0.3) and t.loc["a", "n_regions"] == 4
    assert list(RS.level_shares(pr, ["b"]).index) == ["b"]


def test_estimand_at_samples_is_the_truth_at_the_plot():
    from fungi_ssl.simulate.truth import expected_log1p_rarefied

    study = SimulatedStudy(n_samples=300, n_campaigns=8)
    frame = study.samples.dropna(subset=["rarefied"]).reset_index(drop=True)
    est = RO.estimand_at_samples(frame, study)
    truth = study.truth.set_index("sample_id").loc[frame["sample_id"], "true_richness_pixel"]
    np.testing.assert_allclose(est, expected_log1p_rarefied(study, np.log(truth.to_numpy())))
    # the labels scatter about the estimand: cores, reads and campaign detection bias
    off = np.log1p(frame["rarefied"].to_numpy()) - est
    assert np.isfinite(est).all() and 0.1 < off.std() < 2.0
    bad = frame.assign(sample_id="nope")
    with pytest.raises(ValueError, match="not in the study's truth table"):
        RO.estimand_at_samples(bad, study)
    with pytest.raises(ValueError, match="no 'sample_id'"):
        RO.estimand_at_samples(frame.drop(columns="sample_id"), study)


def test_oracle_1km_biases_refit_on_noise_free_labels(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from fungi_ssl.simulate.truth import truth_layer

    study = SimulatedStudy(n_samples=600, n_campaigns=10)
    site = study.sites.iloc[0]
    cc, cr = int(site["col"]) // F, int(site["row"]) // F
    region = RG.Region("O", Window(int(site["epsg"]), cc * F, cr * F, F, F, "O"), "Europe",
                      "forest", int(site["campaign"]), 2020, 0.5, 0.0)
    frame = pd.concat([study.samples.reset_index(drop=True),
                       study.covariates.reset_index(drop=True)], axis=1)
    frame = frame.dropna(subset=["rarefied"]).reset_index(drop=True)
    frame["log_richness"] = np.log1p(frame["rarefied"])
    cov = R.cell_covariates(study, region)
    truth = np.log1p(truth_layer(study, region.window, 2020).values.astype(float))
    p = R.RegionProducts(region=region, store=None, truth=truth, map_10m=truth.copy(),
                         map_1km=np.array([[3.0]]), map_path=None, run=None, covariates=cov,
                         landcover=np.zeros((F, F), np.int8))
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path)
    out = RO.oracle_1km_biases([p], SimpleNamespace(frame=frame), study, "rf", 0)
    assert len(list(tmp_path.glob("resolution_oracle/*/biases.joblib"))) == 1
    pd.testing.assert_frame_equal(
        RO.oracle_1km_biases([p], SimpleNamespace(frame=frame), study, "rf", 0), out)  # cached
    assert list(out.index) == ["O"] and np.isfinite(out.loc["O", "bias_oracle_1km"])
    # the label offsets are those of the training rows only (the region's own are withheld)
    train = ~R.withheld_rows(frame, study, region)
    off = frame["log_richness"].to_numpy() - RO.estimand_at_samples(frame, study)
    assert out.loc["O", "label_offset_training"] == pytest.approx(off[train].mean())
    assert 0 < out.loc["O", "n_nearby"] <= train.sum()
    # the oracle's map is the 1 km model fitted on the estimand: its bias is its cell value
    # minus the truth's mean over the scored pixels
    m = R.fit_1km_model(frame.assign(estimand=RO.estimand_at_samples(frame, study)).loc[train]
                        .reset_index(drop=True), "rf", 0, target="estimand")
    ok = np.isfinite(truth)
    assert out.loc["O", "bias_oracle_1km"] == pytest.approx(
        float(m.predict(cov)[0]) - truth[ok].mean())
    with pytest.raises(ValueError, match="no held-out models"):
        RO.oracle_1km_biases([p], SimpleNamespace(frame=frame), study, "rf", 0, product=True)


def _site_region(study, i, name):
    site = study.sites.drop_duplicates("campaign").iloc[i]
    cc, cr = int(site["col"]) // F, int(site["row"]) // F
    return RG.Region(name, Window(int(site["epsg"]), cc * F, cr * F, F, F, name), "Europe",
                     "forest", int(site["campaign"]), 2020, 0.5, 0.0)


def test_holdout_groups_withhold_every_region_of_the_group():
    study = SimulatedStudy(n_samples=600, n_campaigns=10)
    a, b, c = (_site_region(study, i, n) for i, n in enumerate("ABC"))
    frame = study.samples.reset_index(drop=True)
    groups = RG.holdout_groups([a, b, c], n_groups=2)
    assert groups["A"] == groups["B"] == (a, b) and groups["C"] == (c,)
    assert all(len(g) == 1 for g in RG.holdout_groups([a, b, c], "full").values())
    assert [len(g) for g in RG.holdout_groups(RG.regions("quick", 0), "quick").values()] == [4] * 8
    one, two = R.withheld_rows(frame, study, a), R.withheld_rows(frame, study, b)
    both = R.withheld_rows(frame, study, groups["A"])
    assert one.any() and two.any() and (both == (one | two)).all() and both.sum() > one.sum()
    with pytest.raises(ValueError, match="empty"):
        R.withheld_rows(frame, study, [])


def test_regions_of_a_group_share_models_fitted_without_all_of_them(tmp_path, monkeypatch):
    """heldout_models with a group: one cache entry, the same models for each of its
    regions, fitted on the rows of neither region."""
    from types import SimpleNamespace

    import torch

    from fungi_ssl.embeddings.encoder import EncoderConfig, TesseraEncoder, TrainedEncoder

    monkeypatch.setattr(config, "CACHE_DIR", tmp_path)
    study = SimulatedStudy(n_samples=600, n_campaigns=10)
    monkeypatch.setattr("fungi_ssl.simulate.field_data.simulated_study", lambda *a, **k: study)
    a, b = _site_region(study, 0, "A"), _site_region(study, 1, "B")
    frame = pd.concat([study.samples.reset_index(drop=True),
                       study.covariates.reset_index(drop=True)], axis=1)
    frame = frame.dropna(subset=["rarefied"]).reset_index(drop=True)
    frame["log_richness"] = np.log1p(frame["rarefied"])
    torch.manual_seed(0)
    enc = TesseraEncoder(EncoderConfig()).eval()
    trained = TrainedEncoder(enc, enc.config, enc.normaliser)
    # stand-in 3 x 3 patch features (the models' skill is not the point)
    n_cols = 9 * enc.config.embed_dim
    patches = np.random.default_rng(0).normal(size=(len(frame), n_cols)).astype(np.float32)
    frame = pd.concat([frame, pd.DataFrame(patches, columns=[f"ssl_{k:04d}" for k in
                                                             range(n_cols)])], axis=1)
    table = SimpleNamespace(frame=frame, source="test")
    out = R.withheld_rows(frame, study, (a, b))
    ma = R.heldout_models(table, trained, a, "ridge", 0, "quick", group=(a, b))
    mb = R.heldout_models(table, trained, b, "ridge", 0, "quick", group=(a, b))
    assert len(list(tmp_path.glob("resolution_heldout/*/models.joblib"))) == 1
    assert ma.n_withheld == mb.n_withheld == int(out.sum())
    assert ma.map_model.fingerprint == mb.map_model.fingerprint
    assert ma.model_1km.n_samples == int((~out).sum())
    with pytest.raises(ValueError, match="not in its hold-out group"):
        R.heldout_models(table, trained, a, "ridge", 0, "quick", group=(b,))


def test_oracle_fits_once_per_group_and_scores_each_region(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from fungi_ssl.simulate.truth import truth_layer

    study = SimulatedStudy(n_samples=600, n_campaigns=10)
    a, b = _site_region(study, 0, "A"), _site_region(study, 1, "B")
    frame = pd.concat([study.samples.reset_index(drop=True),
                       study.covariates.reset_index(drop=True)], axis=1)
    frame = frame.dropna(subset=["rarefied"]).reset_index(drop=True)
    frame["log_richness"] = np.log1p(frame["rarefied"])

    def products(r, group):
        truth = np.log1p(truth_layer(study, r.window, 2020).values.astype(float))
        return R.RegionProducts(region=r, store=None, truth=truth, map_10m=truth.copy(),
                                map_1km=np.array([[3.0]]), map_path=None, run=None,
                                covariates=R.cell_covariates(study, r),
                                landcover=np.zeros((F, F), np.int8),
                                extra={"holdout_group": group})

    fits = []
    real_fit = R.fit_1km_model
    monkeypatch.setattr(RO, "fit_1km_model", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path)
    ps = [products(a, (a, b)), products(b, (a, b))]
    out = RO.oracle_1km_biases(ps, SimpleNamespace(frame=frame), study, "rf", 0)
    assert len(fits) == 1 and list(out.index) == ["A", "B"]
    train = ~R.withheld_rows(frame, study, (a, b))
    m = real_fit(frame.assign(estimand=RO.estimand_at_samples(frame, study)).loc[train]
                 .reset_index(drop=True), "rf", 0, target="estimand")
    for p in ps:
        ok = np.isfinite(p.truth)
        assert out.loc[p.region.name, "bias_oracle_1km"] == pytest.approx(
            float(m.predict(p.covariates)[0]) - p.truth[ok].mean())
