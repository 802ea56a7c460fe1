"""Checked downloads of the public real-data tables, on top of `pooch`_.

The book runs offline on its simulated study. A user who wants the real
tables fetches them once with :func:`download_real_tables` (or ``python -m
fungi_ssl.data.download DEST_DIR``); every file is checked against its published
sha256 before it is kept, so a changed or truncated file never reaches the
analysis. Nothing in the book or the tests downloads at run time.

The registry :data:`REAL_TABLES` records, for each table, the file name it is
saved under (the names :func:`fungi_ssl.data.io.find_real_tables` looks for), its
public URL and checksum; :data:`REGISTRY` is the same in pooch's form
(file name to ``"sha256:<hex>"``) and :func:`real_tables_pooch` a
:class:`pooch.Pooch` built from it.

What a download guarantees
--------------------------
pooch streams each file to a temporary file (``tmp*``, made by
:func:`tempfile.NamedTemporaryFile`) in the destination directory, checks its
sha256, and only then moves it to its final name; on a mismatch, an error or
Ctrl-C the temporary file is deleted. So a file under its final name is always
complete and verified; an interrupted run leaves nothing behind (a killed
process may leave a ``tmp*`` file, never a partial table).

*Resumable* means per file: a table already present with the right sha256 is
kept and not fetched again, so re-running after an interruption fetches only
what is missing. pooch does not resume a single file part-way through (no HTTP
range requests); the two tables are 0.6 and 3.6 MB, so a restart costs little.

``file://`` URLs (mirrors on disk, the doctests) are read by a small
downloader of this module, since pooch knows only HTTP(S), FTP, SFTP and DOI.

Notes on the sources
--------------------
``spun_covariates`` is ``data/20220630_ECM_validationdata.csv`` from the
history of ``SocietyProtectionUndergroundNetworks/richness_maps``. The primary
URL points at branch ``main``; if the file has been removed there, the URL in
``mirrors``, pinned to commit ``73d3e1a5704e4b92cd6e63e3c0fd9f8a42b05ce0`` (a
commit whose copy of the file has the same size and header as the published
table), is tried next. Either way the sha256 decides whether the file is kept.

.. _pooch: https://www.fatiando.org/pooch
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pooch
from tqdm import tqdm

__all__ = [
    "REAL_TABLES",
    "REGISTRY",
    "RealTable",
    "download_file",
    "download_real_tables",
    "real_tables_pooch",
    "sha256_of",
]

logger = logging.getLogger("fungi_ssl")

_CHUNK = 1 << 16

#: Seconds a connection may stay silent before an HTTP download fails.
HTTP_TIMEOUT_S = 60


@dataclass(frozen=True)
class RealTable:
    """One public table: where it comes from and how it is checked.

    Attributes
    ----------
    filename : str
        Name the file is saved under in a real data directory.
    url : str
        Public URL of the file.
    sha256 : str
        Published sha256 of the file (hex).
    description : str
        What the table holds.
    citation : str
        Whom to cite.
    mirrors : tuple of str
        Further URLs tried in order when ``url`` fails (same checksum).
    """

    filename: str
    url: str
    sha256: str
    description: str
    citation: str
    mirrors: tuple[str, ...] = field(default=())


REAL_TABLES: dict[str, RealTable] = {
    "globalfungi_europe": RealTable(
        filename="globalfungi_ecm_richness_europe.csv",
        url=(
            "https://raw.githubusercontent.com/rbnyng/btfm-spun-dataprep/main/"
            "data/spun_data/ECM_richness_europe.csv"
        ),
        sha256="7d304d56eb4ad7453208eb8871238bea8275c1a7bf13a54049416ae6cf8e4594",
        description=(
            "Rarefied ECM richness of 9,132 European GlobalFungi soil samples "
            "(8,321 with a value): the study's field table."
        ),
        citation=(
            "Vetrovsky et al. 2020, GlobalFungi, a global database of fungal occurrences "
            "from high-throughput-sequencing metabarcoding studies, Sci Data 7:228."
        ),
    ),
    "spun_covariates": RealTable(
        filename="spun_ecm_samples_1km_covariates.csv",
        url=(
            "https://raw.githubusercontent.com/SocietyProtectionUndergroundNetworks/"
            "richness_maps/main/data/20220630_ECM_validationdata.csv"
        ),
        sha256="4dbe525145005acf9ca680ce6adafce29d95d0d38a0a69aea7420eca92bd802c",
        description=(
            "9,061 soil samples worldwide with log ECM richness and 1 km (30 arc-second) "
            "climate, soil, land-cover and topography covariates (SPUN, 2022)."
        ),
        citation="Van Nuland et al. 2025, Nature 645:414 (SPUN richness maps, MIT licence).",
        mirrors=(
            (
                "https://raw.githubusercontent.com/SocietyProtectionUndergroundNetworks/"
                "richness_maps/73d3e1a5704e4b92cd6e63e3c0fd9f8a42b05ce0/"
                "data/20220630_ECM_validationdata.csv"
            ),
        ),
    ),
}


#: The registry in pooch's form: saved file name to ``"sha256:<hex>"``.
REGISTRY: dict[str, str] = {t.filename: f"sha256:{t.sha256}" for t in REAL_TABLES.values()}


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> _ = p.write_bytes(b"abc")
    >>> sha256_of(p)[:16]
    'ba7816bf8f01cfea'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check_sha256(sha256: str) -> str:
    s = str(sha256).strip().lower()
    s = s.removeprefix("sha256:")
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise ValueError(f"sha256: expected 64 hexadecimal characters, got {sha256!r}")
    return s


def _file_downloader(progress: bool) -> Callable[[str, str, object], None]:
    """A pooch downloader for ``file://`` URLs (pooch has none)."""

    def download(url: str, output_file: str, _pooch: object) -> None:
        with urllib.request.urlopen(url) as response, open(output_file, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            name = Path(urllib.request.url2pathname(url)).name
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=name, disable=not progress
            ) as bar:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))

    return download


def _downloader(url: str, progress: bool) -> Callable:
    if url.lower().startswith("file:"):
        return _file_downloader(progress)
    return pooch.HTTPDownloader(progressbar=progress, timeout=HTTP_TIMEOUT_S)


def real_tables_pooch(
    dest_dir: str | os.PathLike,
    tables: dict[str, RealTable] | None = None,
    mirror: int = 0,
    retries: int = 0,
) -> pooch.Pooch:
    """A :class:`pooch.Pooch` that fetches the real tables into ``dest_dir``.

    Its registry is :data:`REGISTRY` (or the one of ``tables``); each file's
    URL is the table's ``url`` (``mirror=0``) or its ``mirrors[mirror - 1]``
    (tables without that mirror keep their ``url``). :func:`download_real_tables`
    adds what pooch lacks: ``file://`` URLs, falling back to the mirrors, and
    refusing to replace a file someone edited.

    Parameters
    ----------
    dest_dir : path-like
        The real data directory (created on the first fetch).
    tables : dict, optional
        Registry to use instead of :data:`REAL_TABLES`.
    mirror : int
        0 for the primary URLs, ``i`` for each table's ``i``-th mirror.
    retries : int
        Extra attempts of a failed download (pooch waits 1, 2, … s between them).

    Examples
    --------
    >>> import tempfile
    >>> p = real_tables_pooch(tempfile.mkdtemp())
    >>> sorted(p.registry) == sorted(REGISTRY)
    True
    >>> p.registry["globalfungi_ecm_richness_europe.csv"][:15]
    'sha256:7d304d56'
    """
    if not isinstance(mirror, (int,)) or mirror < 0:
        raise ValueError(f"mirror: expected an integer ≥ 0, got {mirror!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries: expected an integer ≥ 0, got {retries!r}")
    registry = REAL_TABLES if tables is None else tables
    urls = {}
    for table in registry.values():
        sources = (table.url, *table.mirrors)
        urls[table.filename] = sources[mirror] if mirror < len(sources) else table.url
    return pooch.create(
        path=Path(dest_dir),
        base_url="",
        registry={t.filename: f"sha256:{_check_sha256(t.sha256)}" for t in registry.values()},
        urls=urls,
        retry_if_failed=retries,
    )


def download_file(
    url: str,
    dest: str | os.PathLike,
    sha256: str,
    overwrite: bool = False,
    progress: bool = True,
    retries: int = 0,
) -> Path:
    """Download ``url`` to ``dest`` with pooch and keep it only if its sha256 matches.

    pooch streams the file to a temporary file in the destination directory
    (with a progress bar), verifies its checksum, then moves it to ``dest``,
    so ``dest`` is never left half-written (see the module notes).

    Parameters
    ----------
    url : str
        Source URL (``https://``, ``http://`` or ``file://``).
    dest : path-like
        Where to save the file. Its directory is created if needed.
    sha256 : str
        Expected sha256 (hex, optionally prefixed ``sha256:``).
    overwrite : bool, default False
        Replace an existing ``dest`` whose checksum is wrong. An existing file
        with the right checksum is always kept and not downloaded again.
    progress : bool, default True
        Show a tqdm progress bar.
    retries : int, default 0
        Extra attempts after a failed or corrupted download.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    FileExistsError
        If ``dest`` exists with a different checksum and ``overwrite`` is False.
    ValueError
        If the downloaded file's checksum differs (names url, expected and
        actual hash; nothing is left behind), or ``sha256`` is malformed.
    OSError
        If the URL cannot be read: ``urllib.error.URLError`` naming the url
        (also for HTTP errors such as 404, and refused connections).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> src = d / "src.txt"
    >>> _ = src.write_bytes(b"abc")
    >>> digest = sha256_of(src)
    >>> out = download_file(src.as_uri(), d / "copy.txt", digest, progress=False)
    >>> out.read_bytes()
    b'abc'
    """
    import requests  # pooch's HTTP client

    expected = _check_sha256(sha256)
    dest = Path(dest)
    if dest.exists():
        actual = sha256_of(dest)
        if actual == expected:
            logger.info("%s already present with the right sha256; not downloaded", dest)
            return dest
        if not overwrite:
            raise FileExistsError(
                f"{dest} exists but its sha256 is {actual}, not the expected {expected}; "
                f"pass overwrite=True to replace it with a fresh download of {url}"
            )
    table = RealTable(dest.name, url, expected, description="", citation="")
    fetcher = real_tables_pooch(dest.parent, {"file": table}, retries=retries)
    try:
        fetcher.fetch(dest.name, downloader=_downloader(url, progress))
    except ValueError as err:
        if "does not match the known hash" not in str(err):
            raise
        raise ValueError(
            f"sha256 mismatch for {url}: {err} The download was discarded and {dest} "
            "left untouched."
        ) from err
    except urllib.error.URLError as err:
        raise urllib.error.URLError(f"could not open {url}: {err.reason}") from err
    except requests.exceptions.RequestException as err:
        raise urllib.error.URLError(f"could not download {url}: {err}") from err
    os.chmod(dest, 0o644)  # pooch's temporary file is private; a data file is world-readable
    logger.info("downloaded %s to %s (sha256 verified)", url, dest)
    return dest


def download_real_tables(
    dest_dir: str | os.PathLike,
    overwrite: bool = False,
    tables: dict[str, RealTable] | None = None,
    progress: bool = True,
    retries: int = 0,
) -> dict[str, Path]:
    """Download every table of :data:`REAL_TABLES` into ``dest_dir``, checked.

    Files already present with the right checksum are kept as they are, so a
    second run after an interruption fetches only the missing tables. When a
    table's URL fails (unreachable, or the wrong checksum) its mirrors are
    tried in order.

    Parameters
    ----------
    dest_dir : path-like
        The real data directory (created if needed); pass it to the notebooks.
    overwrite : bool, default False
        Replace files whose checksum is wrong (see :func:`download_file`).
    tables : dict, optional
        Registry to use instead of :data:`REAL_TABLES` (tests, mirrors).
    progress : bool, default True
        Show a progress bar per file.
    retries : int, default 0
        Extra attempts per URL before the next mirror is tried.

    Returns
    -------
    dict
        Table key to saved path.

    Raises
    ------
    urllib.error.URLError or ValueError
        From the last source of a table when every source failed.

    Examples
    --------
    >>> sorted(REAL_TABLES)                 # what would be downloaded
    ['globalfungi_europe', 'spun_covariates']
    """
    registry = REAL_TABLES if tables is None else tables
    dest_dir = Path(dest_dir)
    saved: dict[str, Path] = {}
    for key, table in registry.items():
        dest = dest_dir / table.filename
        urls = (table.url, *table.mirrors)
        for i, url in enumerate(urls):
            try:
                saved[key] = download_file(
                    url,
                    dest,
                    table.sha256,
                    overwrite=overwrite,
                    progress=progress,
                    retries=retries,
                )
                break
            except (urllib.error.URLError, ValueError) as err:
                if i == len(urls) - 1:
                    raise
                logger.warning("%s failed (%s); trying %s", url, err, urls[i + 1])
    return saved


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m fungi_ssl.data.download DEST_DIR [--overwrite]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m fungi_ssl.data.download",
        description="Download the public real-data tables, checked against their sha256.",
    )
    parser.add_argument("dest_dir", help="real data directory to create or fill")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace files with a wrong sha256"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for key, path in download_real_tables(args.dest_dir, overwrite=args.overwrite).items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main()
