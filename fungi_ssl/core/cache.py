"""Parameter-keyed cache for expensive results (trained encoders, embeddings).

A result is stored under ``data/cache/<kind>/<key>/`` where ``key`` is a short
hash of the parameters that produced it, written beside it as ``params.json``.
Changing any parameter changes the key, so a stale result is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from fungi_ssl.core import config


def _canonical(value: Any) -> Any:
    """Make parameters JSON-stable (tuples → lists, paths → str, sorted keys)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def cache_key(params: dict[str, Any]) -> str:
    """Short, stable hash of a parameter dictionary.

    Examples
    --------
    >>> cache_key({"a": 1, "b": (2, 3)}) == cache_key({"b": [2, 3], "a": 1})
    True
    >>> cache_key({"a": 1}) == cache_key({"a": 2})
    False
    """
    blob = json.dumps(_canonical(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir(kind: str, params: dict[str, Any], root: Path | None = None,
              create: bool = True) -> Path:
    """Directory for the result of ``kind`` computed with ``params``.

    The directory is created, and ``params.json`` written into it, so a reader
    can always tell what a cached result was made from. With ``create=False``
    only its path is returned (to look for an entry without making one).

    Parameters
    ----------
    kind : str
        What is cached, e.g. ``"encoder"`` or ``"embeddings"``.
    params : dict
        Everything that determines the result.
    root : pathlib.Path, optional
        Cache root; defaults to :data:`fungi_ssl.core.config.CACHE_DIR`.
    """
    root = Path(root) if root is not None else config.CACHE_DIR
    path = root / kind / cache_key(params)
    if not create:
        return path
    path.mkdir(parents=True, exist_ok=True)
    meta = path / "params.json"
    if not meta.exists():
        tmp = temporary_path(meta)
        tmp.write_text(json.dumps(_canonical(params), indent=2, sort_keys=True))
        os.replace(tmp, meta)
    return path


def temporary_path(path: str | Path) -> Path:
    """A name beside ``path`` to write it under before renaming it to ``path``.

    The name is this process's and this call's own and keeps ``path``'s
    suffix (NumPy adds ``.npz`` or ``.npy`` to a name without it). Two
    processes that make one cache entry at once (two chapters of a book run
    side by side, or worker processes) then each write a whole file and rename
    it; the last rename wins and readers never see a part-written file.

    Examples
    --------
    >>> a, b = temporary_path("d/maps.npz"), temporary_path("d/maps.npz")
    >>> a != b and a.parent == Path("d") and a.name.startswith(".maps.") and a.suffix == ".npz"
    True
    """
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def clear(kind: str | None = None, root: Path | None = None) -> None:
    """Remove cached results of one ``kind``, or all of them."""
    root = Path(root) if root is not None else config.CACHE_DIR
    target = root / kind if kind else root
    if target.exists():
        shutil.rmtree(target)
