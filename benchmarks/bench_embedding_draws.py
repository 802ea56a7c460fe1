"""How much one random draw of dates moves an embedding and a prediction.

The encoder sees ``T = 16`` dates per sensor, drawn at random from a pixel's
valid observations (:func:`fungi_ssl.embeddings.pixels.sample_timesteps`), so each
embedding is one draw of a random variable. On the simulated study's sites
(the 3 × 3 patches chapters 03–05 model), this benchmark measures

1. **embeddings**: the relative L2 distance ``|e_a - e_b| / |e_a|`` and the
   cosine similarity between two independent draws of the same pixel, beside
   the same quantities between a pixel and its four neighbours (same draw)
   and between the centre pixels of two random sites; and between two
   independent averages of ``n`` draws, for each ``n`` of ``--n-draws``;
2. **predictions**: chapter 04's ``ssl`` model (PCA of the patch to 32
   components fitted on the training part, LightGBM with early stopping on
   the validation part, the study's random 70/10/20 split, seed ``--seed``)
   is fitted once on the features of one draw (or one ``n``-draw average),
   then predicts the test samples from the features of several independent
   draws (averages). The spread of a sample's predicted log richness between
   draws (SD) is compared with the residual SD of the model on the test part;
3. **cost**: embedding time per pixel of
   :func:`fungi_ssl.embeddings.inference.embed_pixels` with ``n_draws = n``.

Draws are independent because they use different seeds of the counter-based
timestep draws. The ``n``-draw averages are formed from disjoint groups of
single draws, as ``embed_pixels(..., n_draws=n)`` averages them. Features are
quantised to int8 and read back, as the book stores them.

Usage::

    python benchmarks/bench_embedding_draws.py                 # quick profile, 12 draws
    python benchmarks/bench_embedding_draws.py --profile full
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _rel_l2_cos(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise relative L2 distance |a - b| / |a| and cosine similarity."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.linalg.norm(a - b, axis=1) / na, np.sum(a * b, axis=1) / (na * nb)


def _summary(rel: np.ndarray, cos: np.ndarray) -> dict[str, float]:
    return {
        "rel_l2_median": float(np.median(rel)),
        "rel_l2_mean": float(np.mean(rel)),
        "rel_l2_p90": float(np.quantile(rel, 0.9)),
        "cos_median": float(np.median(cos)),
        "cos_p10": float(np.quantile(cos, 0.1)),
    }


def _quantised(emb: np.ndarray) -> np.ndarray:
    from fungi_ssl.embeddings.inference import quantise
    from fungi_ssl.embeddings.tessera import dequantise

    ok = np.isfinite(emb).all(axis=1)
    out = np.full(emb.shape, np.nan, np.float32)
    q, s = quantise(emb[ok])
    out[ok] = dequantise(q, s)
    return out


def single_draws(trained, pixels, n: int, seed: int, threads: int | None) -> list[np.ndarray]:
    """``n`` independent single-draw float embeddings (draw ``m`` uses seed ``seed + m``)."""
    from tqdm.auto import tqdm

    from fungi_ssl.embeddings.inference import embed_pixels

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no-data pixels: NaN in every draw
        for m in tqdm(range(n), desc="draws"):
            out.append(embed_pixels(trained, pixels, seed=seed + m, n_threads=threads))
    return out


def embedding_spread(draws: list[np.ndarray], k: int, n_draws: list[int], seed: int) -> dict:
    """Between-draw, between-neighbour and between-site distances of embeddings."""
    rng = np.random.default_rng(seed)
    ok = np.all([np.isfinite(d).all(axis=1) for d in draws], axis=0)
    e0 = _quantised(draws[0])
    # between draws, one pair per pixel: draws (0, 1), (2, 3), ...
    rel, cos = [], []
    for a in range(0, len(draws) - 1, 2):
        r, c = _rel_l2_cos(_quantised(draws[a])[ok], _quantised(draws[a + 1])[ok])
        rel.append(r)
        cos.append(c)
    out = {"between_draws": _summary(np.concatenate(rel), np.concatenate(cos))}
    # neighbours: the centre of each patch against its 4 edge neighbours, same draw
    patch = e0.reshape(-1, k, k, e0.shape[1])
    pok = ok.reshape(-1, k, k).all(axis=(1, 2))
    h = k // 2
    centre = patch[pok, h, h]
    rel, cos = [], []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        r, c = _rel_l2_cos(centre, patch[pok, h + dr, h + dc])
        rel.append(r)
        cos.append(c)
    out["neighbour_pixels"] = _summary(np.concatenate(rel), np.concatenate(cos))
    other = rng.permutation(len(centre))
    out["random_sites"] = _summary(*_rel_l2_cos(centre, centre[other]))
    # two independent n-draw averages
    out["between_averages"] = {}
    for n in n_draws:
        if 2 * n > len(draws):
            continue
        a = _quantised(np.mean(draws[:n], axis=0))[ok]
        b = _quantised(np.mean(draws[n:2 * n], axis=0))[ok]
        out["between_averages"][str(n)] = _summary(*_rel_l2_cos(a, b))
    out["n_pixels"] = int(ok.sum())
    return out


def prediction_spread(field, site_ids: np.ndarray, draws: list[np.ndarray], k: int,
                      n_draws: list[int], seed: int, threads: int | None, split: str,
                      n_fits: int = 3) -> dict:
    """Spread of chapter 04's ssl LightGBM predictions between draws, per averaging level.

    ``split`` is ``"random"`` (the study's 70/10/20 split of samples, where cores of
    one site, which share one patch, fall on both sides) or ``"site"`` (70/10/20
    of whole sites, as for predictions at new places).
    """
    import pandas as pd

    from fungi_ssl.embeddings.embed import patch_features_frame
    from fungi_ssl.predictors.features import PatchReducer
    from fungi_ssl.validation.cv import RandomTrainValTest
    from fungi_ssl.validation.models import fit_model, make_model, regression_metrics

    samples = field.samples
    y_all = np.log1p(samples["rarefied"].to_numpy(float))
    sample_sites = samples["site_id"].astype(str).to_numpy()

    def features(emb: np.ndarray) -> pd.DataFrame:
        by_site = patch_features_frame(_quantised(emb).reshape(-1, k, k, emb.shape[1]), site_ids)
        return by_site.reindex(sample_sites).reset_index(drop=True)

    first = features(draws[0])
    keep = np.isfinite(first.to_numpy()).all(axis=1) & np.isfinite(y_all)
    y = y_all[keep]
    if split == "random":  # the study's protocol, chapter 04's random seeds
        train, val, test = next(iter(RandomTrainValTest(1, seed).split_train_val_test(y)))
    else:  # whole sites 70/10/20: no test sample shares its site (and patch) with training
        sites = sample_sites[keep]
        uniq = np.unique(sites)
        part = np.random.default_rng(seed).permutation(len(uniq)) / len(uniq)
        of_site = dict(zip(uniq, np.where(part < 0.7, 0, np.where(part < 0.8, 1, 2)), strict=True))
        code = np.array([of_site[s] for s in sites])
        train, val, test = (np.flatnonzero(code == c) for c in (0, 1, 2))
    shared = np.isin(sample_sites[keep][test], sample_sites[keep][train])
    out = {"split": split, "n_samples": int(keep.sum()), "n_train": len(train), "n_val": len(val),
           "n_test": len(test), "test_sharing_a_training_site": float(shared.mean()),
           "by_n_draws": {}}
    for n in n_draws:
        reps = len(draws) // n
        if reps < 2:
            continue
        X = [features(np.mean(draws[r * n:(r + 1) * n], axis=0)).loc[keep].reset_index(drop=True)
             for r in range(reps)]

        def fit(x):
            reducer = PatchReducer(n_components=32, seed=seed)
            Xtr = reducer.fit_transform(x.iloc[train], y[train])
            model = fit_model(make_model("lightgbm", seed=seed, n_jobs=threads or 2), Xtr,
                              y[train], reducer.transform(x.iloc[val]), y[val])
            return reducer, model

        reducer, model = fit(X[0])
        preds = np.stack([model.predict(reducer.transform(x.iloc[test])) for x in X])
        sd = preds.std(axis=0, ddof=1)                       # per test sample, between draws
        resid_sd = float(np.std(y[test] - preds[0], ddof=1))
        r2 = [regression_metrics(y[test], p)["r2"] for p in preds]
        # refitted on each of the first `n_fits` replicates, scored with the same replicate:
        # how much the draw moves the score of the whole pipeline
        refit_r2 = [r2[0]]
        for x in X[1:n_fits]:
            red_f, model_f = fit(x)
            refit_r2.append(regression_metrics(y[test], model_f.predict(red_f.transform(x.iloc[test])))["r2"])
        out["by_n_draws"][str(n)] = {
            "refit_r2": [float(v) for v in refit_r2],
            "refit_r2_mean": float(np.mean(refit_r2)),
            "refit_r2_sd": float(np.std(refit_r2, ddof=1)) if len(refit_r2) > 1 else None,
            "replicates": reps,
            "pred_sd_between_draws_rms": float(np.sqrt(np.mean(sd**2))),
            "pred_sd_between_draws_median": float(np.median(sd)),
            "pred_sd_between_draws_p90": float(np.quantile(sd, 0.9)),
            "residual_sd": resid_sd,
            "ratio_rms_sd_to_residual_sd": float(np.sqrt(np.mean(sd**2)) / resid_sd),
            "share_of_residual_variance": float(np.mean(sd**2) / resid_sd**2),
            "test_r2_mean": float(np.mean(r2)),
            "test_r2_same_draw": float(r2[0]),
            "test_r2_other_draws_mean": float(np.mean(r2[1:])),
            "test_r2_sd_between_draws": float(np.std(r2, ddof=1)),
            "best_iteration": int(getattr(model, "best_iteration_", 0) or 0),
        }
    return out


def embedding_cost(trained, pixels, n_draws: list[int], n_pixels: int, repeats: int,
                   threads: int | None) -> dict:
    """Wall and CPU time per pixel of embed_pixels at each n_draws (best of ``repeats``)."""
    from fungi_ssl.embeddings.inference import embed_pixels

    sub = pixels[:n_pixels] if len(pixels) > n_pixels else pixels
    embed_pixels(trained, sub[:512], n_draws=1)  # warm-up
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for n in n_draws:
            wall, cpu = [], []
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                embed_pixels(trained, sub, n_draws=n, n_threads=threads)
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            out[str(n)] = {"pixels": len(sub), "wall_s_best": min(wall),
                           "us_per_pixel": 1e6 * min(wall) / len(sub),
                           "pixels_per_s": len(sub) / min(wall),
                           "cpu_us_per_pixel": 1e6 * min(cpu) / len(sub)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="quick", choices=["quick", "full"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=12, help="independent single draws")
    ap.add_argument("--n-draws", default="1,2,4", help="averaging levels compared")
    ap.add_argument("--timing-pixels", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default 2; 1 on a machine others share)")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "embedding_draws.json")
    args = ap.parse_args()
    n_draws = [int(v) for v in args.n_draws.split(",")]

    from fungi_ssl.predictors.tables import pixel_series, pretrained_encoder
    from fungi_ssl.simulate.field_data import SIMULATOR_VERSION, open_field_data

    t0 = time.perf_counter()
    field = open_field_data(None, seed=args.seed, profile=args.profile, table="covariates")
    trained, _ = pretrained_encoder(field, args.profile, args.seed, n_threads=args.threads)
    k = 3
    arrays, index = field.study.site_patch_series(k=k)
    pixels = pixel_series(arrays)
    site_ids = index["site_id"].to_numpy()[:: k * k].astype(str)
    t_setup = time.perf_counter() - t0

    draws = single_draws(trained, pixels, args.draws, args.seed, args.threads)
    emb = embedding_spread(draws, k, n_draws, args.seed)
    pred = {split: prediction_spread(field, site_ids, draws, k, n_draws, args.seed, args.threads,
                                     split) for split in ("random", "site")}
    cost = embedding_cost(trained, pixels, n_draws, args.timing_pixels, args.repeats, args.threads)

    results = {
        "profile": args.profile, "seed": args.seed, "draws": args.draws,
        "n_timesteps": trained.config.n_timesteps, "n_sites": len(site_ids),
        "threads": args.threads, "simulator": SIMULATOR_VERSION,
        "machine": platform.platform(), "setup_s": t_setup,
        "embeddings": emb, "predictions": pred, "cost": cost,
    }
    print(f"\nembeddings of {emb['n_pixels']} site-patch pixels "
          f"(profile {args.profile}, T = {trained.config.n_timesteps} dates per sensor)")
    print(f"{'pair':<30}{'rel L2 median':>15}{'rel L2 p90':>12}{'cos median':>12}{'cos p10':>10}")
    rows = [("two draws, same pixel", emb["between_draws"]),
            ("neighbour pixels, one draw", emb["neighbour_pixels"]),
            ("random sites, one draw", emb["random_sites"])]
    rows += [(f"two {n}-draw averages", v) for n, v in emb["between_averages"].items()]
    for name, v in rows:
        print(f"{name:<30}{v['rel_l2_median']:>15.3f}{v['rel_l2_p90']:>12.3f}"
              f"{v['cos_median']:>12.4f}{v['cos_p10']:>10.4f}")
    for p in pred.values():
        _print_predictions(p, cost)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


def _print_predictions(pred: dict, cost: dict) -> None:
    print(f"\nchapter 04 ssl LightGBM, {pred['split']} split, fitted once; {pred['n_test']} test "
          f"samples ({100 * pred['test_sharing_a_training_site']:.0f}% share a site with training) "
          "predicted from independent draws")
    print(f"{'n_draws':>8}{'reps':>6}{'SD between draws':>18}{'residual SD':>13}{'ratio':>8}"
          f"{'share of var':>14}{'R2 same':>9}{'R2 other':>10}{'refit R2':>10}{'refit SD':>10}"
          f"{'us/pixel':>10}")
    for n, v in pred["by_n_draws"].items():
        c = cost.get(n, {})
        print(f"{n:>8}{v['replicates']:>6}{v['pred_sd_between_draws_rms']:>18.4f}"
              f"{v['residual_sd']:>13.4f}{v['ratio_rms_sd_to_residual_sd']:>8.3f}"
              f"{v['share_of_residual_variance']:>14.4f}{v['test_r2_same_draw']:>9.4f}"
              f"{v['test_r2_other_draws_mean']:>10.4f}{v['refit_r2_mean']:>10.4f}"
              f"{v['refit_r2_sd'] or float('nan'):>10.4f}{c.get('us_per_pixel', float('nan')):>10.1f}")
    print("R2 same: the model fitted on the first replicate, scored with it; R2 other: scored with "
          "the other replicates' features (mean); refit R2: fitted and scored on each of the first "
          "replicates (mean, SD)")


if __name__ == "__main__":
    main()
