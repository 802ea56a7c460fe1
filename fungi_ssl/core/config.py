"""Every path and default in one place.

Data roots move with environment variables, never by editing code:

``FUNGI_SSL_DATA``
    Root for generated data and caches (default: ``data/`` in the repository).
``FUNGI_SSL_REAL_DATA``
    Default directory of real field tables (default: unset, i.e. simulated study).

A *profile* sizes the book: ``quick`` is small and used by CI, ``full`` is the
real book. Notebooks receive the profile name as a papermill parameter and look
up their sizes here, so one edit resizes the whole book. :data:`DEFAULT_PROFILE`
is the one default: ``make book`` and ``python -m fungi_ssl.book.runner`` use it
when no profile is given, and every notebook's ``parameters`` cell declares the
same value (``tests/test_bookrun.py`` checks it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DATA_DIR = Path(os.environ.get("FUNGI_SSL_DATA", REPO_ROOT / "data"))
CACHE_DIR = DATA_DIR / "cache"
BOOK_DIR = REPO_ROOT / "book"
RESULTS_DIR = BOOK_DIR / "results"
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
#: The realism report shipped beside the repository (``../shared/tools``).
REALISM_REPORT = REPO_ROOT.parent / "shared" / "tools" / "realism_report.py"

YEARS = tuple(range(2017, 2025))


@dataclass(frozen=True)
class Profile:
    """Sizes that trade run time for precision in the book.

    Attributes
    ----------
    name : str
        ``"quick"`` or ``"full"``.
    n_samples : int
        Field samples in the simulated study.
    n_seeds : int
        Random-split seeds in the predictor comparison.
    pretrain_steps : int
        Barlow Twins optimisation steps for the encoder.
    map_tile_px : int
        Side of the square tiles mapped at 10 m (pixels).
    pretrain_pixels : int
        Pixel time series the encoder is pre-trained on.
    probe_pixels : int
        Held-out pixels for the linear probes of chapter 02.
    encoder : dict
        :class:`fungi_ssl.embeddings.encoder.EncoderConfig` fields that differ from its default.
    pretrain_options : dict
        Extra keywords of :func:`fungi_ssl.embeddings.encoder.pretrain` (``lr``, ``warmup`` …).
    model_params : dict
        Model family → overrides of the book's parameters
        (:data:`fungi_ssl.validation.pipelines.BOOK_MODEL_PARAMS`) in chapter 04's
        Table 1 and chapter 07's checks of its held-out predictions
        (:func:`fungi_ssl.validation.pipelines.profile_model_params`).
    """

    name: str
    n_samples: int
    n_seeds: int
    pretrain_steps: int
    map_tile_px: int
    pretrain_pixels: int = 16_384
    probe_pixels: int = 8_192
    encoder: dict = field(default_factory=dict)
    pretrain_options: dict = field(default_factory=dict)
    model_params: dict = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "quick": Profile("quick", n_samples=14_000, n_seeds=3, pretrain_steps=450, map_tile_px=128,
                     pretrain_pixels=16_384, probe_pixels=16_384,
                     # Table 1 lies on the quick book's longest chain of chapters: half the
                     # book's trees, and boosting at the libraries' usual step of 0.1 rather
                     # than 0.05 (README, run time: R² moved by at most 0.008 and 0.03)
                     model_params={"rf": {"n_estimators": 50},
                                   "lightgbm": {"learning_rate": 0.1},
                                   "xgboost": {"learning_rate": 0.1}}),
    "full": Profile("full", n_samples=14_000, n_seeds=10, pretrain_steps=2_500, map_tile_px=256,
                    pretrain_pixels=32_768, probe_pixels=32_768),
}


#: The profile the book is built with when none is given (the real book).
DEFAULT_PROFILE = "full"


def get_profile(name: str) -> Profile:
    """Look up a profile by name, with a clear error for an unknown one.

    Examples
    --------
    >>> get_profile("quick").name
    'quick'
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"profile must be one of {sorted(PROFILES)}, got {name!r}"
        ) from None
