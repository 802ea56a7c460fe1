"""The simulator's values, pinned bit for bit.

The book's numbers are being finalised: a change that makes the simulator
faster must not change one bit of what it draws for a seed. The digests
below were computed by simulator version 7 (issue 15's study structure: many
small campaigns, a regionally shared habitat focus and plot groups in one
land-cover class, which moved the three study cases; the landscape and sensor
cases are version 6's, whose pins were version 5's from before the speed-ups of
issue 20) and must stay equal; a change that moves them needs a version bump and new
pins, on purpose.

Covered: a park-like window's Sentinel cube (a drought year and another, with
ragged chunks), the null world's and a replicate world's cube (chapter 08),
every latent layer and the richness inputs, batched grids in three UTM zones
and years at once (the site-patch path), and a small study's site patches,
encoder training pixels, samples, truth and 1 km covariates.

The digests hold on the machine that computed them (x86-64, NumPy 2.4): a
NumPy or CPU whose ``exp`` or ``cos`` rounds differently in the last bit
would move them with or without a change here.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fungi_ssl.simulate import SimulatedStudy, Window
from fungi_ssl.simulate.sensors import sentinel_observations
from fungi_ssl.trends.replicates import ResensedLandscape
from fungi_ssl.trends.trendmaps import null_world

#: sha256 (16 hex digits) of each case, from simulator version 7.
PINNED = {
    "batched_grids": "762c528fff197694",
    "cube_2018": "589a7ec512b9fcf4",
    "cube_2021": "e34f6a594443c69c",
    "layers_2020": "65f599e4d14885e1",
    "null_cube_2022": "0347b28d84cf3ffb",
    "random_pixels": "90a5cf42acc04280",
    "replicate_cube_2019": "fa9634c0df82ca09",
    "samples_and_covariates": "b6fddb7fb9c777b5",
    "site_patches": "42267fa51a08d721",
}


def digest(arrays: dict) -> str:
    """sha256 of named arrays (name, dtype, shape and bytes), in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        if isinstance(a, dict):
            h.update(name.encode())
            h.update(digest(a).encode())
            continue
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{name}{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _cube(study: SimulatedStudy, window: Window, year: int, chunks: int = 16) -> dict:
    ds = study.cube(window, year, chunks=chunks).compute()
    return {v: ds[v].values for v in ("s2", "s2_valid", "s1", "s1_valid")}


@pytest.fixture(scope="module")
def study() -> SimulatedStudy:
    return SimulatedStudy(n_samples=300, n_campaigns=8)


#: A 24-pixel window in the Lake District, cut into ragged 16-pixel chunks.
WINDOW = Window.around(-3.08, 54.48, 24)


def _case(study: SimulatedStudy, name: str) -> dict:
    if name == "cube_2018":
        return _cube(study, WINDOW, 2018)
    if name == "cube_2021":
        return _cube(study, WINDOW, 2021)
    if name == "null_cube_2022":
        return _cube(null_world(study), WINDOW, 2022)
    if name == "replicate_cube_2019":
        other = SimulatedStudy(study.config)
        other.landscape = ResensedLandscape(study.landscape, 12345)
        return _cube(other, WINDOW, 2019)
    if name == "layers_2020":
        w = WINDOW
        return study.landscape.layers(np.array([w.epsg]), w.x[None], w.y[None], 2020)
    if name == "batched_grids":
        # three zones (UK, central Europe, Asia) and three years (one a drought year)
        wins = [Window.around(-3.65, 57.08, 5), Window.around(10.2, 50.1, 5),
                Window.around(87.5, 43.2, 5)]
        epsg = np.array([w.epsg for w in wins])
        xs, ys = np.stack([w.x for w in wins]), np.stack([w.y for w in wins])
        years = np.array([2017, 2022, 2024])
        layers = study.landscape.layers(epsg, xs, ys, years)
        obs = sentinel_observations(study.landscape, epsg, xs, ys, years, layers,
                                    model=study.config.sensors)
        return {"layers": layers, "obs": obs}
    if name == "site_patches":
        arrays, index = study.site_patch_series(k=3)
        return {**arrays, "site_year": index["year"].to_numpy()}
    if name == "random_pixels":
        arrays, _ = study.random_pixels(300, seed=1)
        return arrays
    if name == "samples_and_covariates":
        samples, cov = study.samples, study.covariates
        return {**{f"s_{c}": samples[c].to_numpy(dtype=float) for c in
                   ("longitude", "latitude", "raw_obs_div", "rarefied")},
                **{f"c_{c}": cov[c].to_numpy() for c in cov.columns},
                "truth": study.truth.select_dtypes("number").to_numpy(dtype=float)}
    raise KeyError(name)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_simulator_values_are_pinned(study, name):
    assert digest(_case(study, name)) == PINNED[name]


if __name__ == "__main__":  # print the digests (to pin them on purpose after a version bump)
    s = SimulatedStudy(n_samples=300, n_campaigns=8)
    for key in sorted(PINNED):
        print(f'    "{key}": "{digest(_case(s, key))}",')
