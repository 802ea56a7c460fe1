"""Why no map of chapter 06 gets every region's level right: the 1 km model refitted on noise-free labels.

:func:`oracle_1km_biases` refits the 1 km model (and optionally the product
model) of each held-out region on the estimand at the training samples
(:func:`estimand_at_samples`: the truth layer there, no field noise) instead
of the observed labels, and reports each region's mean error of these oracle
maps next to the level error the labels near the region carry. Cached under
``data/cache/resolution_oracle``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fungi_ssl.core.cache import cache_dir
from fungi_ssl.maps.resolution import (
    HOLDOUT_KM,
    _product_map,
    fit_1km_model,
    fit_product_model,
    region_components,
    withheld_rows,
)
from fungi_ssl.maps.resolution_regions import _expand
from fungi_ssl.maps.resolution_scores import _scored_mask

if TYPE_CHECKING:
    from fungi_ssl.maps.resolution import RegionProducts
    from fungi_ssl.maps.resolution_regions import Region
    from fungi_ssl.predictors.tables import PredictorTable
    from fungi_ssl.simulate import SimulatedStudy

__all__ = [
    "estimand_at_samples",
    "oracle_1km_biases",
]


def estimand_at_samples(frame: pd.DataFrame, study: SimulatedStudy) -> np.ndarray:
    """The noise-free label of each sample: the estimand at its plot's pixel in its year.

    The mean ``log1p(rarefied)`` of a core taken at the sample's true pixel
    (:func:`fungi_ssl.simulate.truth.expected_log1p_rarefied` of the pixel's
    true log richness), which is what the truth layer holds at that pixel.
    The sample's own ``log_richness`` differs from it by its core's
    micro-habitat, its reads and its campaign's detection bias, which no
    predictor sees.
    """
    from fungi_ssl.simulate.truth import expected_log1p_rarefied

    if "sample_id" not in frame:
        raise ValueError("estimand_at_samples: the sample table has no 'sample_id' column")
    truth = study.truth.set_index("sample_id")["true_richness_pixel"]
    pix = frame["sample_id"].map(truth).to_numpy(float)
    if np.isnan(pix).any():
        raise ValueError(f"estimand_at_samples: {int(np.isnan(pix).sum())} samples are not in "
                         "the study's truth table")
    return expected_log1p_rarefied(study, np.log(pix))


def _members(p: RegionProducts) -> tuple[Region, ...]:
    """The regions held out together with ``p``'s (its hold-out group; itself alone by default)."""
    return tuple(p.extra.get("holdout_group") or (p.region,))


#: Worker processes of :func:`oracle_1km_biases` (one hold-out group each, one thread each).
ORACLE_WORKERS = 2


def _oracle_rows(group: Sequence[RegionProducts], train: np.ndarray, data: pd.DataFrame,
                 offset: np.ndarray, lon: np.ndarray, lat: np.ndarray, model: str, seed: int,
                 nearby_km: float, product: bool) -> list[dict[str, Any]]:
    """The rows of :func:`oracle_1km_biases` of one hold-out group (regions that share
    their training rows), its models fitted once, on one thread."""
    from threadpoolctl import threadpool_limits

    from fungi_ssl.data.coordinates import crs_to_lonlat

    rows = []
    with threadpool_limits(1):
        fitted = data.loc[train].reset_index(drop=True)
        m = fit_1km_model(fitted, model, seed, target="estimand")
        prod = None
        if product:  # the group's held-out 10 m model is the same for all its regions
            prod = fit_product_model(fitted, group[0].extra["models"].map_model, model, seed,
                                     target="estimand")
        for p in group:
            grid = np.full(p.map_1km.shape, np.nan)
            grid[p.covariates["cell_row"].to_numpy(), p.covariates["cell_col"].to_numpy()] = \
                m.predict(p.covariates)
            ok = _scored_mask(p)
            w = p.region.window
            clon, clat = crs_to_lonlat(np.array([w.x.mean()]), np.array([w.y.mean()]), w.epsg)
            c0, c1 = np.radians(float(clon[0])), np.radians(float(clat[0]))
            d = 2 * 6371.0 * np.arcsin(np.sqrt(np.sin((lat - c1) / 2) ** 2 + np.cos(lat)
                                               * np.cos(c1) * np.sin((lon - c0) / 2) ** 2))
            near = train & (d <= nearby_km) & np.isfinite(offset)
            extra = {}
            if prod is not None:
                hm = p.extra["models"]
                mp = _product_map(prod, region_components(hm.map_model, p.store, p.region),
                                  p.covariates, p.region)
                sel = ok & np.isfinite(mp)
                extra["bias_oracle_product"] = float(np.mean(mp[sel] - p.truth[sel]))
            rows.append({"region": p.region.name,
                         "bias_oracle_1km": float(np.mean(_expand(grid)[ok] - p.truth[ok])),
                         **extra,
                         "label_offset_nearby": float(offset[near].mean()) if near.any()
                         else np.nan,
                         "n_nearby": int(near.sum()),
                         "label_offset_training": float(np.nanmean(offset[train]))})
    return rows


def oracle_1km_biases(products: Sequence[RegionProducts], table: PredictorTable,
                      study: SimulatedStudy, model: str = "lightgbm", seed: int = 0,
                      radius_km: float = HOLDOUT_KM, nearby_km: float = 300.0,
                      product: bool = False) -> pd.DataFrame:
    """Where the regions' level errors come from: a 1 km model fitted on noise-free labels.

    For each held-out region the SPUN-style 1 km model is refitted on the
    same training rows (:func:`withheld_rows`) with the estimand at each
    sample (:func:`estimand_at_samples`) as the target, instead of the
    sample's own ``log1p(rarefied)``: a model that sees the same covariates
    and the same places, but whose labels carry no core noise and no
    campaign detection bias. Its mean error per region (over the pixels
    :func:`region_scores` scores) is what the 1 km covariates alone leave
    of the region's level; the gap to the real 1 km map's is what the
    labels add. The result is cached under ``data/cache/resolution_oracle``,
    keyed by the study, the table's labels, the model, the regions and their
    withheld rows (and the held-out 10 m models, with ``product``).

    Parameters
    ----------
    products : sequence of RegionProducts
        :func:`region_products` with ``held_out``.
    table : PredictorTable
    study : SimulatedStudy
    model : str
    seed : int
    radius_km : float
        As :func:`withheld_rows`.
    nearby_km : float
        Radius of ``label_offset_nearby``.
    product : bool
        Also refit the region's product model (:func:`fit_product_model`, on
        its held-out 10 m model's patch PCA, ``p.extra["models"]``) on the
        noise-free labels and map it: ``bias_oracle_product``.

    Returns
    -------
    pandas.DataFrame
        Indexed by region: ``bias_oracle_1km`` (and ``bias_oracle_product``);
        ``label_offset_nearby``, the
        mean of ``log_richness − estimand`` over the training samples within
        ``nearby_km`` of the region's centre (the level error the labels
        near it carry), and ``n_nearby``; ``label_offset_training``, the same
        over every training sample.
    """
    import hashlib

    import joblib

    from fungi_ssl.maps.modelspec import library_versions
    from fungi_ssl.simulate.field_data import simulator_fingerprint

    frame = table.frame.reset_index(drop=True)
    keys = []
    # each hold-out group's withheld rows, once: the cache key and the fits both use them
    groups: dict[tuple[str, ...], list[RegionProducts]] = {}
    for p in products:
        groups.setdefault(tuple(r.name for r in _members(p)), []).append(p)
    withheld = {k: withheld_rows(frame, study, _members(g[0]), radius_km)
                for k, g in groups.items()}
    for p in products:
        hm = p.extra.get("models")
        w = p.region.window
        out = withheld[tuple(r.name for r in _members(p))]
        keys.append([w.epsg, w.col0, w.row0, w.width, w.height, p.region.year,
                     hashlib.sha1(np.packbits(out).tobytes()).hexdigest(),
                     None if hm is None or not product else hm.map_model.fingerprint])
    params = {"study": study.config.as_dict(), "simulator": simulator_fingerprint(),
              "source": getattr(table, "source", None), "n_rows": len(frame),
              "frame": pd.util.hash_pandas_object(frame[["sample_id", "log_richness"]],
                                                  index=False).sum().item(),
              "model": model, "seed": int(seed), "versions": library_versions(),
              "regions": keys, "radius_km": radius_km, "nearby_km": nearby_km,
              "product": bool(product), "layout": 2}  # 2: one BLAS thread
    path = cache_dir("resolution_oracle", params) / "biases.joblib"
    if path.exists():
        return joblib.load(path)
    est = estimand_at_samples(frame, study)
    data = frame.assign(estimand=est)
    offset = frame["log_richness"].to_numpy(float) - est
    lon, lat = np.radians(frame["longitude"].to_numpy(float)), np.radians(
        frame["latitude"].to_numpy(float))
    for p in products:
        if product and p.extra.get("models") is None:
            raise ValueError(f"oracle_1km_biases: region {p.region.name} has no held-out "
                             "models (region_products with held_out)")
    # one fit per hold-out group: its regions share their training rows (and, with
    # ``product``, their held-out 10 m model)
    trains = [~withheld[k] for k in groups]
    workers = max(1, min(ORACLE_WORKERS, len(groups), os.cpu_count() or 1))
    jobs = (joblib.delayed(_oracle_rows)(g, train, data, offset, lon, lat, model, seed,
                                         nearby_km, product)
            for g, train in zip(groups.values(), trains))
    parts = (joblib.Parallel(n_jobs=workers, backend="loky")(jobs) if workers > 1
             else [job[0](*job[1], **job[2]) for job in jobs])
    order = {p.region.name: i for i, p in enumerate(products)}
    rows = sorted((row for part in parts for row in part), key=lambda r: order[r["region"]])
    result = pd.DataFrame(rows).set_index("region")
    joblib.dump(result, path)
    return result
