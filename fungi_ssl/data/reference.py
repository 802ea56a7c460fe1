"""The real table that the shipped reference summaries describe, and the checksum that names it.

Shared by :mod:`fungi_ssl.data.realism` (sample-table statistics) and
:mod:`fungi_ssl.data.variogram` (the semivariogram), so neither imports the other
for it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["REFERENCE_TABLE"]


#: The real table the shipped summary describes (its name in a real data directory).
REFERENCE_TABLE = "globalfungi_ecm_richness_europe.csv"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()
