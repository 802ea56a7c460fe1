"""One interface to field data, simulated or real.

Every chapter starts with :func:`open_field_data`. With no data directory it
builds the embedded simulated study (sized by the book profile); with one it
reads the real tables found there. Either way the chapter receives the same
:class:`FieldData`: a sample table in the GlobalFungi schema, 1 km covariates
where there are any, and, for the simulation only, the truth.

The simulated tables are cached under ``data/cache/study/<key>/`` keyed by the
study's parameters, so the ten chapters do not each redraw them.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import pandas as pd

from fungi_ssl.core import config
from fungi_ssl.core.cache import cache_dir, temporary_path
from fungi_ssl.data.io import find_real_tables, read_samples, read_spun_covariates, validate_samples
from fungi_ssl.simulate import SimulatedStudy, StudyConfig

#: Bump when the simulator changes in a way that changes its output.
SIMULATOR_VERSION = 7

#: Source files whose text decides what the simulator draws.
_SIMULATOR_SOURCES = ("simulate/*.py", "core/hashing.py")
#: Simulator files that draw nothing a cache holds: the truth layers that maps
#: are scored against are computed fresh in every run.
_NOT_DRAWING = ("truth.py", "field_data.py")  # field_data.py: this module, outside the simulator


@lru_cache(maxsize=1)
def simulator_fingerprint() -> str:
    """The simulator's version and a hash of its source code.

    Cached study tables and SSL patches are keyed by this, so an edit to the
    simulator that forgets to bump :data:`SIMULATOR_VERSION` still
    invalidates them instead of pairing samples with another world's patches.

    Examples
    --------
    >>> simulator_fingerprint().startswith(f"v{SIMULATOR_VERSION}-")
    True
    """
    root = Path(__file__).resolve().parent.parent  # the fungi_ssl package
    digest = hashlib.sha256()
    for pattern in _SIMULATOR_SOURCES:
        for path in sorted(root.glob(pattern)):
            if path.name in _NOT_DRAWING:
                continue
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return f"v{SIMULATOR_VERSION}-{digest.hexdigest()[:12]}"


@dataclass
class FieldData:
    """Field samples and what is known about them.

    Attributes
    ----------
    samples : pandas.DataFrame
        Sample table (CONTRIBUTING.md schema), NA targets already dropped.
    covariates : pandas.DataFrame or None
        1 km covariates indexed by ``sample_id`` (SPUN names), if any.
    truth : pandas.DataFrame or None
        True richness and latent layers per sample: simulated study only.
    source : str
        ``"simulated"`` or the path of the table read.
    n_dropped_na : int
        Samples without a richness value that were dropped.
    study : SimulatedStudy or None
        The simulated study itself, for satellite cubes, maps and parks.
    """

    samples: pd.DataFrame
    covariates: pd.DataFrame | None
    truth: pd.DataFrame | None
    source: str
    n_dropped_na: int
    study: SimulatedStudy | None = None

    @property
    def is_simulated(self) -> bool:
        """True for the embedded simulated study."""
        return self.study is not None

    @property
    def n_sites(self) -> int:
        """Distinct sites (plot coordinates)."""
        return int(self.samples["site_id"].nunique())


def study_config(profile: str = "quick", seed: int = 0) -> StudyConfig:
    """The simulated study's parameters for a book profile and seed.

    Examples
    --------
    >>> study_config("quick", seed=2).seed
    2
    """
    prof = config.get_profile(profile)
    return replace(StudyConfig(), seed=int(seed), n_samples=prof.n_samples)


@lru_cache(maxsize=4)
def simulated_study(profile: str = "quick", seed: int = 0) -> SimulatedStudy:
    """The simulated study of a profile and seed, shared within one process."""
    return SimulatedStudy(study_config(profile, seed))


#: The study's drawn state cached beside its tables, so a later chapter that needs the
#: campaigns, plots or cores (maps, chapter 11's redraws) does not draw them again.
_STUDY_STATE = ("campaigns", "plots", "sites", "_cores")


def _tables_path(cfg: StudyConfig, create: bool = True) -> Path:
    """Where the study of ``cfg`` caches its tables (``create``: make its folder)."""
    params = {"config": cfg.as_dict(), "version": simulator_fingerprint()}
    return cache_dir("study", params, create=create) / "tables.pkl"


def cached_samples(cfg: StudyConfig) -> pd.DataFrame | None:
    """The sample table of the study of ``cfg`` when a chapter has cached it, else None.

    Reading it takes a fraction of a second; drawing the study again takes
    seconds (chapter 00's draws over seeds start with the book's own).
    """
    path = _tables_path(cfg, create=False)
    if not path.exists():
        return None
    with path.open("rb") as fh:
        return pickle.load(fh)["samples"]


def _cached_tables(study: SimulatedStudy) -> dict[str, pd.DataFrame]:
    path = _tables_path(study.config)
    if path.exists():
        with path.open("rb") as fh:
            tables = pickle.load(fh)
        for name, value in tables.get("state", {}).items():
            study.__dict__.setdefault(name, value)
        return tables
    tables = {"samples": study.samples, "truth": study.truth, "covariates": study.covariates,
              "state": {name: getattr(study, name) for name in _STUDY_STATE}}
    tmp = temporary_path(path)
    with tmp.open("wb") as fh:
        pickle.dump(tables, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return tables


def open_field_data(data_dir: str | Path | None = None, *, seed: int = 0,
                    profile: str = "quick", table: str = "samples",
                    target: str = "rarefied") -> FieldData:
    """Open the field data a chapter works on.

    Parameters
    ----------
    data_dir : str or pathlib.Path, optional
        Directory of real tables (e.g. ``../shared/data/real``). Empty or
        None means the embedded simulated study.
    seed : int
        Seed of the simulated study.
    profile : {"quick", "full"}
        Book profile, which sizes the simulated study.
    table : {"samples", "covariates"}
        For real data, which table to read: the GlobalFungi sample table
        (richness only), or the SPUN table with 1 km covariates. The
        simulated study has both in one.
    target : str
        Real sample table: the column of rarefied richness to read as
        ``rarefied`` (another guild's, e.g.; :func:`fungi_ssl.io.read_samples`).
        The simulated study and the SPUN table have one target only.

    Returns
    -------
    FieldData

    Examples
    --------
    >>> fd = open_field_data(None, seed=0, profile="quick")
    >>> fd.is_simulated, fd.samples["rarefied"].isna().any()
    (True, np.False_)
    """
    if table not in ("samples", "covariates"):
        raise ValueError(f"table must be 'samples' or 'covariates', got {table!r}")
    if not data_dir:
        study = simulated_study(profile, seed)
        t = _cached_tables(study)
        samples = validate_samples(t["samples"], source="simulated study")
        n_dropped = int(samples.attrs.get("n_dropped_na", 0))
        keep = samples["sample_id"]
        return FieldData(
            samples=samples.reset_index(drop=True),
            covariates=t["covariates"].loc[keep.to_numpy()],
            truth=t["truth"].set_index("sample_id").loc[keep.to_numpy()].reset_index(),
            source="simulated", n_dropped_na=n_dropped, study=study)
    tables = find_real_tables(data_dir)
    if table == "samples":
        if tables.samples is None:
            raise FileNotFoundError(
                f"{data_dir}: no sample table found (expected a CSV with columns "
                "sample_id, longitude, latitude and its richness)")
        samples = read_samples(tables.samples, target=target)
        return FieldData(samples=samples, covariates=None, truth=None,
                         source=str(tables.samples),
                         n_dropped_na=int(samples.attrs.get("n_dropped_na", 0)))
    if tables.spun_covariates is None:
        raise FileNotFoundError(
            f"{data_dir}: no covariate table found (expected spun_ecm_samples_1km_covariates.csv)")
    samples, covariates = read_spun_covariates(tables.spun_covariates)
    return FieldData(samples=samples, covariates=covariates.loc[samples["sample_id"].to_numpy()],
                     truth=None, source=str(tables.spun_covariates),
                     n_dropped_na=int(samples.attrs.get("n_dropped_na", 0)))
