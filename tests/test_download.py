"""Tests for fungi_ssl.data.download, offline.

Downloads come from a local HTTP server on 127.0.0.1 (``http.server`` in a
thread, the path pooch's HTTP downloader takes) or from ``file://`` URLs; the
real tables are read only from ``--real-data DIR``.
"""

from __future__ import annotations

import hashlib
import http.server
import stat
import threading
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fungi_ssl.data.download import (
    REAL_TABLES,
    REGISTRY,
    RealTable,
    download_file,
    download_real_tables,
    real_tables_pooch,
    sha256_of,
)

PAYLOAD = b"sample_id,longitude,latitude,raw_obs_div,rarefied\nA,1.0,2.0,3,4.5\n" * 50
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class Server:
    """A local HTTP server over ``root``; ``requests`` lists the paths asked for."""

    root: Path
    base: str
    requests: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    root = tmp_path / "remote"
    root.mkdir()
    (root / "table.csv").write_bytes(PAYLOAD)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a CI proxy must not intercept
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            seen.append(self.path)
            if self.path == "/truncated.csv":  # the connection drops half-way
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            super().do_GET()

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield Server(root, f"http://127.0.0.1:{httpd.server_address[1]}", seen)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _others(directory: Path, *keep: str) -> list[str]:
    """Files in ``directory`` besides ``keep``: partial or temporary leftovers."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# --------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------
def test_registry_matches_published_checksums_and_names():
    assert REAL_TABLES["globalfungi_europe"].filename == "globalfungi_ecm_richness_europe.csv"
    assert REAL_TABLES["globalfungi_europe"].sha256 == (
        "7d304d56eb4ad7453208eb8871238bea8275c1a7bf13a54049416ae6cf8e4594"
    )
    assert "rbnyng/btfm-spun-dataprep/main/data/spun_data/ECM_richness_europe.csv" in (
        REAL_TABLES["globalfungi_europe"].url
    )
    spun = REAL_TABLES["spun_covariates"]
    assert spun.filename == "spun_ecm_samples_1km_covariates.csv"
    assert spun.sha256 == "4dbe525145005acf9ca680ce6adafce29d95d0d38a0a69aea7420eca92bd802c"
    assert spun.url.endswith("richness_maps/main/data/20220630_ECM_validationdata.csv")
    for table in REAL_TABLES.values():
        assert len(table.sha256) == 64 and "{" not in table.url
    # pooch's form of the same registry
    assert REGISTRY == {t.filename: f"sha256:{t.sha256}" for t in REAL_TABLES.values()}


def test_real_tables_pooch_has_the_registry_and_picks_mirrors(tmp_path):
    primary = real_tables_pooch(tmp_path)
    assert primary.registry == REGISTRY
    spun = REAL_TABLES["spun_covariates"]
    assert primary.get_url(spun.filename) == spun.url
    mirrored = real_tables_pooch(tmp_path, mirror=1)
    assert mirrored.get_url(spun.filename) == spun.mirrors[0]
    europe = REAL_TABLES["globalfungi_europe"]  # no mirror: keeps its URL
    assert mirrored.get_url(europe.filename) == europe.url
    with pytest.raises(ValueError, match="mirror"):
        real_tables_pooch(tmp_path, mirror=-1)


def test_registry_checksums_match_the_real_tables(real_data_dir):
    present = [t for t in REAL_TABLES.values() if (real_data_dir / t.filename).exists()]
    if not present:
        pytest.skip(f"--real-data {real_data_dir} holds none of the registry's tables")
    for table in present:
        assert sha256_of(real_data_dir / table.filename) == table.sha256, table.filename


def test_download_real_tables_from_the_real_directory_as_a_mirror(real_data_dir, tmp_path):
    """The real files, served by file:// URLs, pass the published checksums end to end."""
    registry = {
        key: RealTable(t.filename, (real_data_dir / t.filename).as_uri(), t.sha256, "d", "c")
        for key, t in REAL_TABLES.items()
        if (real_data_dir / t.filename).exists()
    }
    if not registry:
        pytest.skip(f"--real-data {real_data_dir} holds none of the registry's tables")
    saved = download_real_tables(tmp_path / "real", tables=registry, progress=False)
    for key, path in saved.items():
        assert sha256_of(path) == REAL_TABLES[key].sha256


# --------------------------------------------------------------------------
# download_file over HTTP (pooch's HTTP downloader)
# --------------------------------------------------------------------------
def test_http_download_with_matching_hash(tmp_path, server):
    dest = tmp_path / "out" / "table.csv"
    got = download_file(server.url("table.csv"), dest, DIGEST, progress=False)
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert _others(dest.parent, "table.csv") == []
    assert server.requests == ["/table.csv"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644  # not the temporary file's 0o600


def test_http_hash_mismatch_raises_and_keeps_nothing(tmp_path, server):
    wrong = "0" * 64
    dest = tmp_path / "out" / "table.csv"
    url = server.url("table.csv")
    with pytest.raises(ValueError) as err:
        download_file(url, dest, wrong, progress=False)
    message = str(err.value)
    assert url in message and wrong in message and DIGEST in message
    assert not dest.exists()
    assert _others(dest.parent) == []  # not even a temporary file


def test_existing_file_with_right_hash_is_not_downloaded_again(tmp_path, server):
    dest = tmp_path / "table.csv"
    dest.write_bytes(PAYLOAD)
    before = dest.stat().st_mtime_ns
    assert download_file(server.url("table.csv"), dest, DIGEST, progress=False) == dest
    assert server.requests == []  # the server was never asked
    assert dest.read_bytes() == PAYLOAD and dest.stat().st_mtime_ns == before


def test_existing_file_with_wrong_hash_is_kept_unless_overwrite(tmp_path, server):
    dest = tmp_path / "table.csv"
    dest.write_bytes(b"a user's edited copy")
    url = server.url("table.csv")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        download_file(url, dest, DIGEST, progress=False)
    assert dest.read_bytes() == b"a user's edited copy"
    assert server.requests == []
    download_file(url, dest, DIGEST, overwrite=True, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert _others(tmp_path, "table.csv", "remote") == []


def test_interrupted_download_leaves_no_partial_file(tmp_path, server):
    dest = tmp_path / "out" / "table.csv"
    url = server.url("truncated.csv")
    with pytest.raises(urllib.error.URLError, match="truncated.csv"):
        download_file(url, dest, DIGEST, progress=False)
    assert not dest.exists()
    assert _others(dest.parent) == []


def test_http_404_names_the_url(tmp_path, server):
    url = server.url("absent.csv")
    with pytest.raises(urllib.error.URLError, match="absent.csv"):
        download_file(url, tmp_path / "out.csv", DIGEST, progress=False)
    assert _others(tmp_path, "remote") == []


def test_unreachable_server_names_the_url(tmp_path, server):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/table.csv"
    with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
        download_file(url, tmp_path / "out.csv", DIGEST, progress=False)


def test_retries_fetch_again_after_a_corrupt_download(tmp_path, server):
    wrong = "1" * 64
    with pytest.raises(ValueError, match="sha256 mismatch"):
        download_file(server.url("table.csv"), tmp_path / "x.csv", wrong, progress=False, retries=1)
    assert server.requests == ["/table.csv", "/table.csv"]


# --------------------------------------------------------------------------
# file:// URLs (this module's downloader) and argument checks
# --------------------------------------------------------------------------
def test_file_url_download_and_mismatch(tmp_path):
    src = tmp_path / "src.csv"
    src.write_bytes(PAYLOAD)
    out = tmp_path / "out"
    assert download_file(src.as_uri(), out / "a.csv", DIGEST, progress=False).read_bytes() == (
        PAYLOAD
    )
    with pytest.raises(ValueError, match="sha256 mismatch"):
        download_file(src.as_uri(), out / "b.csv", "f" * 64, progress=False)
    assert _others(out, "a.csv") == []


def test_missing_file_url_names_the_url(tmp_path):
    url = (tmp_path / "absent.csv").as_uri()
    with pytest.raises(urllib.error.URLError, match="absent.csv"):
        download_file(url, tmp_path / "out.csv", "0" * 64, progress=False)
    assert _others(tmp_path) == []


def test_malformed_checksum_is_rejected(tmp_path, server):
    with pytest.raises(ValueError, match="sha256"):
        download_file(server.url("table.csv"), tmp_path / "out.csv", "abc", progress=False)
    assert server.requests == []
    # the pooch-style prefix is accepted
    out = download_file(
        server.url("table.csv"), tmp_path / "ok.csv", f"sha256:{DIGEST}", False, False
    )
    assert out.read_bytes() == PAYLOAD


# --------------------------------------------------------------------------
# download_real_tables
# --------------------------------------------------------------------------
def test_download_real_tables_with_a_local_registry_and_mirror(tmp_path, server):
    url = server.url("table.csv")
    registry = {
        "direct": RealTable("direct.csv", url, DIGEST, "d", "c"),
        "via_mirror": RealTable(
            "mirrored.csv", server.url("gone.csv"), DIGEST, "d", "c", mirrors=(url,)
        ),
    }
    dest_dir = tmp_path / "real"
    saved = download_real_tables(dest_dir, tables=registry, progress=False)
    assert set(saved) == {"direct", "via_mirror"}
    for path in saved.values():
        assert path.parent == dest_dir and path.read_bytes() == PAYLOAD
    assert server.requests == ["/table.csv", "/gone.csv", "/table.csv"]
    # second call: everything present and verified, nothing fetched (resumes per file)
    (server.root / "table.csv").unlink()
    again = download_real_tables(dest_dir, tables=registry, progress=False)
    assert again == saved
    assert len(server.requests) == 3


def test_download_real_tables_resumes_after_a_failed_table(tmp_path, server):
    good = RealTable("good.csv", server.url("table.csv"), DIGEST, "d", "c")
    bad = RealTable("bad.csv", server.url("later.csv"), DIGEST, "d", "c")
    dest_dir = tmp_path / "real"
    with pytest.raises(urllib.error.URLError, match="later.csv"):
        download_real_tables(dest_dir, tables={"good": good, "bad": bad}, progress=False)
    assert _others(dest_dir) == ["good.csv"]  # the verified table stays, nothing partial
    (server.root / "later.csv").write_bytes(PAYLOAD)  # the source comes back
    saved = download_real_tables(dest_dir, tables={"good": good, "bad": bad}, progress=False)
    assert sorted(p.name for p in saved.values()) == ["bad.csv", "good.csv"]
    assert server.requests.count("/table.csv") == 1  # good.csv was not fetched again


def test_download_real_tables_raises_when_every_source_fails(tmp_path):
    registry = {"x": RealTable("x.csv", (tmp_path / "nope.csv").as_uri(), "0" * 64, "d", "c")}
    with pytest.raises(urllib.error.URLError):
        download_real_tables(tmp_path / "real", tables=registry, progress=False)
