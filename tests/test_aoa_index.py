"""Tests of fungi_ssl.uncertainty.aoa_index: the prototype dissimilarity index and its verdict bound."""

from __future__ import annotations

import numpy as np
import pytest

from fungi_ssl.uncertainty.aoa import AreaOfApplicability
from fungi_ssl.uncertainty.aoa_index import PrototypeIndex


@pytest.fixture(scope="module")
def fitted():
    """Training rows in clusters, a fitted AOA, and pixels around and beyond the training cloud."""
    rng = np.random.default_rng(3)
    dims = 12
    sd = 1 / np.sqrt(np.arange(1, dims + 1))
    centres = rng.normal(size=(40, dims)) * sd * 2
    train = centres[rng.integers(0, 40, 3000)] + rng.normal(size=(3000, dims)) * sd
    folds = rng.integers(0, 5, 3000)
    aoa = AreaOfApplicability(n_jobs=1).fit(train, folds=folds,
                                            weights=rng.permutation(1 / np.arange(1, dims + 1)))
    pixels = centres[rng.integers(0, 40, 20_000)] + rng.normal(size=(20_000, dims)) * sd * 1.6
    pixels[:50, 3] = np.nan  # no embedding
    return aoa, pixels


def test_refined_verdict_equals_the_exact_one(fitted):
    aoa, pixels = fitted
    idx = PrototypeIndex(aoa, n_prototypes=128)
    exact_di, exact_in = aoa.dissimilarity(pixels), aoa.predict(pixels)
    di, inside = idx.dissimilarity(pixels), idx.predict(pixels)
    assert np.array_equal(inside, exact_in)
    assert 0.05 < exact_in.mean() < 0.98  # both verdicts occur
    ok = np.isfinite(exact_di)
    assert np.array_equal(np.isfinite(di), ok) and ok.sum() == 20_000 - 50
    # DI never below the exact one; equal wherever the pixel was refined
    assert (di[ok] >= exact_di[ok] - 1e-12).all()
    s = idx.last
    assert s.n == ok.sum() and s.certain_inside + s.certain_outside + s.undecided == s.n
    assert s.refined == s.undecided and s.certain_inside > 0 and s.certain_outside > 0


def test_unrefined_verdict_changes_at_most_the_undecided_share(fitted):
    aoa, pixels = fitted
    exact_in = aoa.predict(pixels)
    for k in (16, 128):
        idx = PrototypeIndex(aoa, n_prototypes=k, refine=False)
        inside = idx.predict(pixels)
        changed = (inside != exact_in).mean()
        assert changed <= idx.last.undecided * 1.0 / len(pixels) + 1e-12
        assert idx.last.refined == 0
        # never inside when the exact index says outside: the upper bound only errs outward
        assert not (inside & ~exact_in).any()
    assert idx.n_prototypes == 128 and idx.centres.shape == (128, pixels.shape[1])


def test_unfitted_aoa_is_refused():
    with pytest.raises(ValueError, match="not fitted"):
        PrototypeIndex(AreaOfApplicability())


def test_stands_in_for_the_aoa_in_uncertainty_maps():
    """uncertainty_maps takes the index in place of the AOA and gives the same AOA layer."""
    import pandas as pd
    import xarray as xr

    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.uncertainty.bias_maps import map_aoa, uncertainty_maps

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 72)).astype(np.float32)
    m = MapModel("ridge", n_components=4).fit(X, np.expm1(3 + X[:, 36] / 2), encoder="e",
                                              embedding_dim=8)
    aoa = map_aoa(m, pd.DataFrame(X, columns=[f"ssl_{i:04d}" for i in range(72)]),
                  rng.integers(0, 5, 400), weights=None, n_jobs=1)
    ds = xr.Dataset(
        {"embedding": (("y", "x", "dim"), rng.integers(-127, 128, (30, 40, 8)).astype(np.int8)),
         "scale": (("y", "x"), np.full((30, 40), 0.02, np.float32))},
        coords={"y": 6e6 - 10 * np.arange(30) - 5, "x": 5e5 + 10 * np.arange(40) + 5},
        attrs={"encoder": "e", "year": 2020}).rio.write_crs(32630)
    kw = {"quantile": 0.5, "window": 16, "progress": False}
    exact = uncertainty_maps(m, ds, 2020, aoa=aoa, **kw).maps
    approx = uncertainty_maps(m, ds, 2020, aoa=PrototypeIndex(aoa, n_prototypes=32), **kw).maps
    np.testing.assert_array_equal(approx["aoa"].values, exact["aoa"].values)
    d, e = approx["dissimilarity"].values, exact["dissimilarity"].values
    ok = np.isfinite(e)
    assert (d[ok] >= e[ok] - 1e-6).all() and ok.sum() > 500
