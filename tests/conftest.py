"""Shared fixtures.

Real field tables are never copied into the repository. Tests that need them
read the directory passed with ``--real-data DIR`` (``make test
DATA=../shared/data/real``) or the environment variable
``FUNGI_SSL_REAL_DATA``, and skip, saying why, when neither is given.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--real-data",
        default=os.environ.get("FUNGI_SSL_REAL_DATA", ""),
        help="directory of the real field tables (e.g. ../shared/data/real)",
    )


@pytest.fixture(scope="session")
def real_data_dir(request: pytest.FixtureRequest) -> Path:
    value = request.config.getoption("--real-data")
    if not value:
        pytest.skip("no real data directory: pass --real-data DIR or set FUNGI_SSL_REAL_DATA")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"--real-data {value}: not a directory")
    return path
