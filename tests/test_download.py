"""Tests for fungi_ssl.download, offline: file:// URLs to temporary files only."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from fungi_ssl.download import (
    REAL_TABLES,
    RealTable,
    download_file,
    download_real_tables,
    sha256_of,
)

PAYLOAD = b"sample_id,longitude,latitude,raw_obs_div,rarefied\nA,1.0,2.0,3,4.5\n" * 50


@pytest.fixture
def source(tmp_path: Path) -> tuple[str, str]:
    src = tmp_path / "remote" / "table.csv"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    return src.as_uri(), hashlib.sha256(PAYLOAD).hexdigest()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


def test_registry_matches_published_checksums_and_names():
    assert REAL_TABLES["globalfungi_europe"].filename == "globalfungi_ecm_richness_europe.csv"
    assert REAL_TABLES["globalfungi_europe"].sha256.startswith("7d304d56")
    assert "rbnyng/btfm-spun-dataprep/main/data/spun_data/ECM_richness_europe.csv" in (
        REAL_TABLES["globalfungi_europe"].url
    )
    spun = REAL_TABLES["spun_covariates"]
    assert spun.filename == "spun_ecm_samples_1km_covariates.csv"
    assert spun.sha256.startswith("4dbe5251")
    assert spun.url.endswith("richness_maps/main/data/20220630_ECM_validationdata.csv")
    for table in REAL_TABLES.values():
        assert len(table.sha256) == 64 and "{" not in table.url


def test_registry_checksums_match_the_shared_copies_when_present():
    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    if not real.is_dir():
        pytest.skip(f"no real data directory at {real}")
    for table in REAL_TABLES.values():
        path = real / table.filename
        if path.exists():
            assert sha256_of(path) == table.sha256


def test_download_success(tmp_path, source):
    url, digest = source
    dest = tmp_path / "out" / "table.csv"
    got = download_file(url, dest, digest, progress=False)
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == []


def test_download_mismatch_raises_and_leaves_nothing(tmp_path, source):
    url, _ = source
    wrong = "0" * 64
    dest = tmp_path / "out" / "table.csv"
    with pytest.raises(ValueError) as err:
        download_file(url, dest, wrong, progress=False)
    message = str(err.value)
    assert url in message and wrong in message and hashlib.sha256(PAYLOAD).hexdigest() in message
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_existing_file_with_right_hash_is_not_downloaded_again(tmp_path, source):
    _, digest = source
    dest = tmp_path / "table.csv"
    dest.write_bytes(PAYLOAD)
    missing = (tmp_path / "no_such_file.csv").as_uri()  # would fail if fetched
    assert download_file(missing, dest, digest, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD


def test_existing_file_with_wrong_hash_is_kept_unless_overwrite(tmp_path, source):
    url, digest = source
    dest = tmp_path / "table.csv"
    dest.write_bytes(b"a user's edited copy")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        download_file(url, dest, digest, progress=False)
    assert dest.read_bytes() == b"a user's edited copy"
    download_file(url, dest, digest, overwrite=True, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_missing_source_names_the_url(tmp_path):
    url = (tmp_path / "absent.csv").as_uri()
    with pytest.raises(urllib.error.URLError, match="absent.csv"):
        download_file(url, tmp_path / "out.csv", "0" * 64, progress=False)
    assert _leftovers(tmp_path) == []


def test_malformed_checksum_is_rejected(tmp_path, source):
    url, _ = source
    with pytest.raises(ValueError, match="sha256"):
        download_file(url, tmp_path / "out.csv", "abc", progress=False)


def test_download_real_tables_with_a_local_registry_and_mirror(tmp_path, source):
    url, digest = source
    broken = (tmp_path / "gone.csv").as_uri()
    registry = {
        "direct": RealTable("direct.csv", url, digest, "d", "c"),
        "via_mirror": RealTable("mirrored.csv", broken, digest, "d", "c", mirrors=(url,)),
    }
    dest_dir = tmp_path / "real"
    saved = download_real_tables(dest_dir, tables=registry)
    assert set(saved) == {"direct", "via_mirror"}
    for path in saved.values():
        assert path.parent == dest_dir and path.read_bytes() == PAYLOAD
    # second call: everything present and verified, nothing fetched (sources gone)
    Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)).unlink()
    again = download_real_tables(dest_dir, tables=registry)
    assert again == saved


def test_download_real_tables_raises_when_every_source_fails(tmp_path):
    registry = {"x": RealTable("x.csv", (tmp_path / "nope.csv").as_uri(), "0" * 64, "d", "c")}
    with pytest.raises(urllib.error.URLError):
        download_real_tables(tmp_path / "real", tables=registry)
