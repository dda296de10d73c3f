"""Tests of reptile_np.data.fetch against a real HTTP server on 127.0.0.1."""
import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from reptile_np import cli
from reptile_np.data import omniglot
from reptile_np.data.fetch import (OMNIGLOT_ZIPS, default_data_dir, download,
                                   fetch_omniglot)
from reptile_np.data.omniglot import load_omniglot

from conftest import record_omniglot_decodes
from reptile_np.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OMNIGLOT_DIR = SHARED_DATA / "omniglot"


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path, monkeypatch):
    """Point $REPTILE_NP_DATA, hence the default cache directories, at a fresh directory."""
    monkeypatch.setenv("REPTILE_NP_DATA", str(tmp_path / "reptile-np-data"))
    return tmp_path / "reptile-np-data"


def _md5(data):
    return hashlib.md5(data).hexdigest()


def _small_zip():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(50):
            archive.writestr(f"root/file{i:02d}.txt", f"payload {i}\n" * 200)
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.routes`: path -> (body, mode), mode "ok" or "truncate"."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path not in self.server.routes:
            self.send_error(404)
            return
        body, mode = self.server.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # "truncate" announces the full length, sends half, then drops the connection.
        self.wfile.write(body if mode == "ok" else body[: len(body) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.requests = {}, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_download_verifies_md5(server, tmp_path):
    body = _small_zip()
    server.routes["/a.zip"] = (body, "ok")
    path = download(f"{server.url}/a.zip", tmp_path / "a.zip", _md5(body))
    assert path.read_bytes() == body
    assert [p.name for p in tmp_path.iterdir()] == ["a.zip"]


def test_download_with_wrong_md5_leaves_nothing(server, tmp_path):
    body = _small_zip()
    server.routes["/a.zip"] = (body, "ok")
    with pytest.raises(DataError, match=f"^the download of .* has MD5 {_md5(body)}, not the "
                                        f"expected {'0' * 32}: "):
        download(f"{server.url}/a.zip", tmp_path / "a.zip", "0" * 32)
    assert not list(tmp_path.iterdir())


def test_truncated_download_leaves_nothing(server, tmp_path):
    body = _small_zip()
    server.routes["/a.zip"] = (body, "truncate")
    with pytest.raises(DataError, match=f"^the download of .* stopped after {len(body) // 2} "
                                        f"of {len(body)} bytes when the connection closed"):
        download(f"{server.url}/a.zip", tmp_path / "a.zip", _md5(body))
    assert not list(tmp_path.iterdir())


def test_http_error_leaves_nothing(server, tmp_path):
    with pytest.raises(DataError, match="^could not download .*/missing.zip \\(HTTP Error 404"):
        download(f"{server.url}/missing.zip", tmp_path / "a.zip", "0" * 32)
    assert not list(tmp_path.iterdir())


def test_download_keeps_existing_files(server, tmp_path):
    body = _small_zip()
    server.routes["/a.zip"] = (body, "ok")
    path = tmp_path / "a.zip"
    path.write_bytes(body)
    assert download(f"{server.url}/a.zip", path, _md5(body)) == path
    path.write_bytes(b"the user's own file")
    with pytest.raises(DataError, match=f"^{path} already exists with MD5 "
                                        f"{_md5(path.read_bytes())}, not the expected "
                                        f"{_md5(body)}; move it elsewhere"):
        download(f"{server.url}/a.zip", path, _md5(body))
    assert path.read_bytes() == b"the user's own file"
    assert server.requests == []


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("REPTILE_NP_DATA", str(tmp_path / "data"))
    assert default_data_dir() == tmp_path / "data"
    monkeypatch.delenv("REPTILE_NP_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "reptile-np"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "reptile-np"


# ---------------------------------------------------------------------------- Omniglot

@pytest.fixture(scope="module")
def shared_zips():
    if not all((OMNIGLOT_DIR / name).is_file() for name in OMNIGLOT_ZIPS):
        pytest.skip(f"no Omniglot zips in {OMNIGLOT_DIR}")
    pytest.importorskip("PIL")
    return {name: (OMNIGLOT_DIR / name).read_bytes() for name in OMNIGLOT_ZIPS}


@pytest.fixture(scope="module")
def imported_cache(tmp_path_factory):
    """The cache directory of `imported`."""
    return tmp_path_factory.mktemp("imported_cache")


@pytest.fixture(scope="module")
def imported(shared_zips, imported_cache, tmp_path_factory):
    """fetch-data omniglot --from the shared copy, done once for this module."""
    return fetch_omniglot(tmp_path_factory.mktemp("imported") / "omniglot", from_dir=OMNIGLOT_DIR,
                          cache_dir=imported_cache)


def test_fetch_from_dir_copies_and_builds_the_cache(imported, imported_cache, shared_zips):
    assert sorted(p.name for p in imported.iterdir()) == sorted(OMNIGLOT_ZIPS)
    for name, data in shared_zips.items():
        assert (imported / name).read_bytes() == data
    assert [p.name for p in imported_cache.iterdir()] == \
        [omniglot.cache_file(imported_cache, imported.resolve()).name]
    splits = load_omniglot(imported, cache_dir=imported_cache)
    assert (splits["train"].num_classes, splits["test"].num_classes) == (4800, 423)


def test_fetch_from_dir_twice_keeps_files(imported, imported_cache, monkeypatch):
    before = {p: p.stat().st_mtime_ns for d in (imported, imported_cache) for p in d.iterdir()}
    monkeypatch.setattr(omniglot, "decode_omniglot", None)  # a decode would fail
    assert fetch_omniglot(imported, from_dir=OMNIGLOT_DIR, cache_dir=imported_cache) == imported
    assert {p: p.stat().st_mtime_ns for d in (imported, imported_cache)
            for p in d.iterdir()} == before


def test_fetch_from_dir_rejects_wrong_content(shared_zips, tmp_path, own_data_dir):
    source = tmp_path / "source"
    source.mkdir()
    # The small background subset under the full set's name: same format, wrong content.
    (source / OMNIGLOT_ZIPS[0]).write_bytes(
        (OMNIGLOT_DIR / "images_background_small1.zip").read_bytes())
    (source / OMNIGLOT_ZIPS[1]).write_bytes(shared_zips[OMNIGLOT_ZIPS[1]])
    dest = tmp_path / "dest"
    # Its PNGs sit under images_background_small1/, so none is where the full set's are.
    with pytest.raises(DataError, match=f"^--from {source} holds no Omniglot images in "
                                        "images_background.zip: expected PNGs under "
                                        "images_background/<Alphabet>/characterNN/"):
        fetch_omniglot(dest, from_dir=source)
    assert not list(dest.iterdir())
    assert not own_data_dir.exists() or not list(own_data_dir.rglob("*.*"))


def test_fetch_from_dir_without_zips(tmp_path):
    with pytest.raises(DataError, match=f"^--from {tmp_path} has no images_background.zip; "):
        fetch_omniglot(tmp_path / "dest", from_dir=tmp_path)


def test_fetch_from_dir_refuses_to_replace_a_different_zip(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / OMNIGLOT_ZIPS[0]).write_bytes(b"the user's own file")
    with pytest.raises(DataError, match=f"^--dest {dest} already holds an images_background.zip "
                                        f"that differs from the one in --from {OMNIGLOT_DIR}; "
                                        "choose another --dest\\.$"):
        fetch_omniglot(dest, from_dir=OMNIGLOT_DIR)
    assert (dest / OMNIGLOT_ZIPS[0]).read_bytes() == b"the user's own file"


def _shared_decode(imported, imported_cache, monkeypatch):
    """Make the Omniglot decoder return the module's decode at once, recording each call."""
    decoded = omniglot.read_cache(omniglot.cache_file(imported_cache, imported.resolve()),
                                  omniglot.source_fingerprint(imported.resolve()))
    return record_omniglot_decodes(monkeypatch, decoded)


def test_fetch_omniglot_over_http(server, shared_zips, imported, imported_cache, tmp_path,
                                  monkeypatch):
    for name, data in shared_zips.items():
        server.routes[f"/python/{name}"] = (data, "ok")
    checksums = {name: _md5(data) for name, data in shared_zips.items()}
    dest = tmp_path / "omniglot"
    # Decoding from zips is tested through `imported` and tests/test_data.py; a third full
    # decode here would only cost time.
    calls = _shared_decode(imported, imported_cache, monkeypatch)
    assert fetch_omniglot(dest, base_url=f"{server.url}/python/", checksums=checksums) == dest
    assert sorted(server.requests) == sorted(f"/python/{name}" for name in OMNIGLOT_ZIPS)
    for name, data in shared_zips.items():
        assert (dest / name).read_bytes() == data
    assert calls == [dest.resolve()]
    assert load_omniglot(dest)["test"].num_classes == 423
    assert calls == [dest.resolve()]


def test_fetch_dest_then_train_data_dir_decodes_once(imported, imported_cache, tmp_path,
                                                     own_data_dir, monkeypatch, capsys):
    calls = _shared_decode(imported, imported_cache, monkeypatch)
    dest = tmp_path / "fetched"
    assert cli.main(["fetch-data", "omniglot", "--dest", str(dest),
                     "--from", str(OMNIGLOT_DIR)]) == 0
    assert f"--data-dir {dest}" in capsys.readouterr().out
    assert calls == [OMNIGLOT_DIR.resolve()]  # the import checks --from by decoding it
    caches = list(own_data_dir.rglob("*.npz"))
    assert len(caches) == 1
    splits = cli.load_splits("omniglot", str(dest), "paper", 0)
    assert calls == [OMNIGLOT_DIR.resolve()]
    assert (splits["train"].num_classes, splits["test"].num_classes) == (4800, 423)
    assert list(own_data_dir.rglob("*.npz")) == caches


def test_fetch_omniglot_refuses_repacked_zips_by_md5(server, shared_zips, tmp_path):
    # The shared zips are repacked, so the upstream MD5 (the default) must reject them.
    for name, data in shared_zips.items():
        server.routes[f"/{name}"] = (data, "ok")
    dest = tmp_path / "omniglot"
    with pytest.raises(DataError, match="^the download of .* has MD5 [0-9a-f]{32}, not the "
                                        "expected 68d2efa1b9178cc56df9314c21c6e718: "):
        fetch_omniglot(dest, base_url=server.url)
    assert not list(dest.iterdir())


def test_loaded_cache_equals_direct_decode(imported, imported_cache, shared_zips):
    images, names = omniglot.read_cache(omniglot.cache_file(imported_cache, imported.resolve()),
                                        omniglot.source_fingerprint(imported.resolve()))
    assert images.shape == (1623, 20, 28, 28) and len(names) == 1623
    assert names == tuple(sorted(names, key=lambda name: tuple(name.split("/"))))
    assert np.unique(images).tolist() == [0, 255]
