"""``fungi-ssl fit``: fit the map model on a sample table and embeddings, and save it (:class:`fungi_ssl.maps.mapmodel.MapModel`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from fungi_ssl.cli.app import (
    DEFAULT_GUILD,
    DEFAULT_TARGET,
    CommandError,
    EmbeddingsOption,
    _covariate_stack,
    _existing,
    _writable,
    app,
)


# --------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------
@app.command()
def fit(
    samples: Annotated[
        Path,
        typer.Option(
            "--samples",
            metavar="CSV",
            help="Sample table in the GlobalFungi schema (sample_id, longitude, latitude, "
            "raw_obs_div, rarefied; optional year, site_id).",
        ),
    ],
    embeddings: EmbeddingsOption,
    out: Annotated[
        Path,
        typer.Option("--out", metavar="MODEL", help="Model file to write."),
    ],
    target: Annotated[
        str,
        typer.Option(
            "--target",
            metavar="COLUMN",
            help="Column of the sample table holding the richness to model (≥ 0).",
        ),
    ] = DEFAULT_TARGET,
    guild: Annotated[
        str,
        typer.Option(
            "--guild",
            metavar="NAME",
            help="Fungal guild the target counts (recorded in the model).",
        ),
    ] = DEFAULT_GUILD,
    year: Annotated[
        int | None,
        typer.Option(
            "--year",
            metavar="YEAR",
            help="Read every sample's patch from this embedding year.",
            show_default="each sample's year, or the nearest year held",
        ),
    ] = None,
    model: Annotated[
        Literal["lightgbm", "xgboost", "rf", "ridge"],
        typer.Option("--model", help="Regressor fitted on the patch PCA (chapter 10's families)."),
    ] = "lightgbm",
    covariates: Annotated[
        Path | None,
        typer.Option(
            "--covariates",
            metavar="STACK",
            help="1 km covariates: a GeoTIFF (band descriptions = covariate names) or a Zarr "
            "store (one variable per covariate), sampled at each sample's coordinate; fits the "
            "blend map model (see --map-model).",
            show_default="none: the ssl-only model",
        ),
    ] = None,
    map_model: Annotated[
        Literal["blend", "product_deviations", "product", "ssl"] | None,
        typer.Option(
            "--map-model",
            help="blend: chapter 06's map, each 1 km cell's level the mean of the product "
            "model's and the ssl map's cell means, plus the ssl map's within-cell deviations "
            "(both models in one file; needs --covariates); product_deviations: the same with "
            "the product model's cell means as the level; product: one regressor on the patch "
            "PCA and the 1 km covariates (needs --covariates); ssl: the study's patch-only model.",
            show_default="blend with --covariates, else ssl",
        ),
    ] = None,
    components: Annotated[
        int,
        typer.Option("--components", metavar="N", help="PCA components of the 3×3 patch."),
    ] = 32,
    seed: Annotated[
        int,
        typer.Option("--seed", metavar="SEED", help="Seed of the PCA, hold-out and model."),
    ] = 0,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an existing model file (default: refuse)."),
    ] = False,
    progress: Annotated[
        bool,
        typer.Option("--progress/--no-progress", help="Show progress bars while reading patches."),
    ] = True,
) -> None:
    """Fit the map model (3×3 patch → PCA → regressor) on every sample and save it.

    Patches are read at each sample's plot coordinate from the embeddings of
    its sampling year; a year the embeddings lack takes the nearest year held
    (TESSERA starts in 2017), and a sample without a year the first year
    held. Samples without a complete patch are left out and counted. With
    --covariates the regressor also sees the 1 km covariates of each
    sample's cell (the product model); samples outside the stack are left
    out of it and counted. The default with --covariates is chapter 06's map,
    blend: the product model and the ssl-only model, each fitted as its own
    --map-model would fit it, saved in one file that predict-map combines
    per 1 km cell (as product_deviations does, with another cell level).
    """
    import numpy as np

    from fungi_ssl.data.io import read_samples, target_values
    from fungi_ssl.maps.composite import DEFAULT_MAP_MODEL, KINDS, CompositeMapModel
    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.predictors.tables import PATCH_SIZE, embedding_patches
    from fungi_ssl.region.workflow import map_model_skill

    kind = map_model or (DEFAULT_MAP_MODEL if covariates is not None else "ssl")
    if kind != "ssl" and covariates is None:
        raise CommandError(
            f"--map-model {kind} needs --covariates STACK: the 1 km covariates it is fitted on"
        )
    _writable(out, overwrite, "--out")
    stack = None
    if covariates is not None:
        _existing(covariates, "--covariates")
        if kind != "ssl":
            stack = _covariate_stack(covariates)
        else:
            typer.echo(f"note: --map-model ssl: the covariates in {covariates} are not used",
                       err=True)
    table = read_samples(samples)
    richness = target_values(table, target)
    cov = None
    if stack is not None:
        cov = stack.at_lonlat(table["longitude"].to_numpy(float),
                              table["latitude"].to_numpy(float))
        if not np.isfinite(cov.to_numpy()).all(axis=1).any():
            raise ValueError(
                f"--covariates {covariates} covers none of the {len(table)} samples in {samples} "
                f"(with a value in every band); it spans {stack.bounds} in {stack.crs.to_string()}"
            )
    patches, encoder, which = embedding_patches(
        table, embeddings, year=year, k=PATCH_SIZE, progress=progress
    )
    typer.echo(which.describe(), err=True)
    X = patches.reshape(len(patches), -1)
    complete = np.isfinite(X).all(axis=1)
    has_cov = np.ones(len(X), bool) if cov is None else np.isfinite(cov.to_numpy()).all(axis=1)
    usable = complete & np.isfinite(richness) & has_cov
    if usable.sum() < 10:
        raise CommandError(
            f"only {int(usable.sum())} of {len(table)} samples in {samples} have a complete "
            f"{PATCH_SIZE}×{PATCH_SIZE} patch in the embeddings under {embeddings}"
            + ("" if cov is None else f", every covariate in {covariates}")
            + f" and a {target!r} value; need at least 10 (do the embeddings"
            + ("" if cov is None else " and covariates") + " cover the samples?)"
        )
    lonlat = table[["longitude", "latitude"]].to_numpy(dtype=float)
    common = {
        "target_column": target,
        "guild": guild,
        "embedding_years": sorted(int(y) for y in np.unique(which.years)),
    }

    def fitted_one(member_cov):
        """One MapModel as --map-model product (covariates) or ssl (none) fits it."""
        m = MapModel(model, n_components=components, seed=seed).fit(
            X, richness, encoder=encoder, groups=table["site_id"].to_numpy(),
            embedding_dim=patches.shape[-1], covariates=member_cov)
        rows = (complete & np.isfinite(richness)
                & (has_cov if member_cov is not None else True))
        skill = map_model_skill(X[rows], richness[rows], lonlat[rows], model=model,
                                n_components=components, seed=seed,
                                embedding_dim=patches.shape[-1],
                                covariates=None if member_cov is None else member_cov.loc[rows])
        m.settings.update({"map_model": "ssl" if member_cov is None else "product"})
        if member_cov is not None:
            m.settings.update({"covariate_stack": str(covariates)})
        m.settings.update({**common, "cv_skill": skill})
        return m

    fitted = fitted_one(cov)  # the product model, or the ssl model for --map-model ssl
    if kind in KINDS:
        saved = CompositeMapModel(fitted, fitted_one(None),
                                  {**common, "covariate_stack": str(covariates)}, kind=kind)
    else:
        saved = fitted
    saved.save(out, overwrite=overwrite)
    site, block = fitted.settings["cv_skill"]["site"], fitted.settings["cv_skill"]["block"]
    with_cov = (f" + {len(fitted.covariate_columns)} 1 km covariates from {covariates}"
                if fitted.covariate_columns else "")
    members = ""
    if kind in KINDS:
        ssl = saved.ssl
        level = ("the mean of the two models' 1 km cell means" if kind == "blend"
                 else "the product model's 1 km cell means")
        members = (f"; with the ssl-only model on {ssl.n_samples} samples (cross-validated R² "
                   f"{ssl.settings['cv_skill']['site']['r2']:.2f} over site groups), whose "
                   f"within-cell deviations predict-map adds to {level}")
    typer.echo(
        f"wrote {out}: {kind} model, {fitted.model} on {fitted.n_samples} samples "
        f"({int((~complete).sum())} without a complete patch, "
        f"{int((complete & ~np.isfinite(richness)).sum())} without {target!r}"
        + ("" if cov is None else
           f", {int((complete & np.isfinite(richness) & ~has_cov).sum())} outside the covariates")
        + f"), {guild} {target}, {PATCH_SIZE}×{PATCH_SIZE}×{patches.shape[-1]} patches from "
        f"{encoder}{with_cov}; "
        f"cross-validated R² of log1p({target}): {site['r2']:.2f} over {site['n_folds']} folds "
        f"of 25 m site groups, {block['r2']:.2f} over {block['n_folds']} folds of "
        f"{block['block_km']:g} km blocks (in the model's settings, cv_skill)" + members
    )
