"""The real table that the shipped reference summaries describe, and the checksum that names it.

Shared by :mod:`fungi_ssl.data.realism` (sample-table statistics) and
:mod:`fungi_ssl.data.variogram` (the semivariogram), so neither imports the other
for it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["REFERENCE_TABLE", "write_reference_main"]

#: The folder of the shipped reference summaries.
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reference"


#: The real table the shipped summary describes (its name in a real data directory).
REFERENCE_TABLE = "globalfungi_ecm_richness_europe.csv"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def write_reference_main(argv: Sequence[str] | None, *, module: str, output_name: str,
                         compute: Callable[[Path], dict[str, Any]]) -> int:
    """Recompute a shipped summary from the real table and write it, refusing another table.

    The ``main`` of ``python -m fungi_ssl.data.realism CSV`` and
    ``python -m fungi_ssl.data.variogram CSV``: ``compute(table)`` returns the
    summary with its ``provenance``; nothing is written unless the table has
    the published checksum. Returns the exit status (2 with one line on error).
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=f"Recompute fungi_ssl/reference/{output_name} from the real European "
                    "GlobalFungi table.")
    parser.add_argument("table", type=Path, help=REFERENCE_TABLE)
    parser.add_argument("--output", type=Path, default=REFERENCE_DIR / output_name)
    args = parser.parse_args(argv)
    try:
        ref = compute(args.table)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not ref["provenance"]["sha256_matches_published"]:
        print(f"error: {args.table} does not have the published sha256; not writing",
              file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(ref, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0
