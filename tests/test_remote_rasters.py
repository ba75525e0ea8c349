"""Remote and virtual rasters: http(s) URLs, ``/vsicurl/``, ``s3://`` and ``/vsis3/``, ``/vsizip/``.

A real HTTP server on 127.0.0.1 (a thread of this process) serves Cloud-Optimized GeoTIFFs and honours Range
requests; it counts the requests and bytes it serves, so the tests see that a windowed read fetches the header
and the blocks of that window, not the file. S3 reads go to the same server through GDAL's endpoint settings.
"""

from __future__ import annotations

import http.server
import re
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.transform import from_origin

from landformer.core import raster
from landformer.core.chips import ChipConfig, load_chips, make_chips
from landformer.core.errors import UserError
from landformer.core.raster import align_raster, open_raster, raster_info, raster_source, read_window

ALBERS = "EPSG:5070"
SIDE = 2048
BLOCK = 256


@dataclass
class Served:
    """What the server answered: (method, path, Range header) per request, and body bytes per path."""

    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    bytes_by_path: dict[str, int] = field(default_factory=dict)

    def clear(self) -> None:
        self.requests.clear()
        self.bytes_by_path.clear()


class RangeServer(http.server.ThreadingHTTPServer):
    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.root, self.served, self.lock = root, Served(), threading.Lock()
        self.failures_left = 0  # range requests still to answer "503 Service Unavailable", as a busy server does

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Files under the server's root, whole or by one ``Range: bytes=a-b`` (206), as object stores answer."""

    server: RangeServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _file(self) -> Path | None:
        path = self.server.root / self.path.split("?")[0].lstrip("/")
        return path if path.is_file() else None

    def _record(self, body: int) -> None:
        with self.server.lock:
            self.server.served.requests.append((self.command, self.path, self.headers.get("Range")))
            key = self.path.split("?")[0]
            self.server.served.bytes_by_path[key] = self.server.served.bytes_by_path.get(key, 0) + body

    def do_HEAD(self) -> None:
        path = self._file()
        self._record(0)
        self.send_response(200 if path else 404)
        self.send_header("Content-Length", str(path.stat().st_size if path else 0))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:
        path = self._file()
        if path is None:
            self._record(0)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        wanted = self.headers.get("Range")
        with self.server.lock:
            fail = wanted is not None and self.server.failures_left > 0
            self.server.failures_left -= fail
        if fail:
            self._record(0)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if wanted is None:
            body = data
            self.send_response(200)
        else:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted)
            if match is None:  # several ranges in one request: not what these tests expect GDAL to send
                self._record(0)
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(match[1])
            stop = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            body = data[start : stop + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{stop}/{len(data)}")
        self._record(len(body))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)


def write_cog(path: Path, values: np.ndarray, crs: str | None = ALBERS) -> Path:
    """A COG (deflate, 256 px blocks) of ``values`` through a plain GeoTIFF and GDAL's COG driver."""
    plain = path.with_name(f"plain_{path.name}")
    profile = {"driver": "GTiff", "width": values.shape[1], "height": values.shape[0], "count": 1}
    profile.update(dtype=values.dtype.name, transform=from_origin(-1_000_000.0, 2_000_000.0, 30.0, 30.0))
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(plain, "w", **profile) as dst:
        dst.write(values, 1)
    rasterio.shutil.copy(plain, path, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=BLOCK)
    plain.unlink()
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RangeServer]:
    root = tmp_path_factory.mktemp("served")
    # Random bytes barely compress: every block of the 5 MiB file (4 MiB of pixels, then overviews) costs about
    # its raw size to fetch.
    values = np.random.default_rng(0).integers(0, 255, (SIDE, SIDE), dtype=np.uint8)
    write_cog(root / "noise.tif", values)
    (root / "bucket").mkdir()
    write_cog(root / "bucket" / "noise.tif", values)
    classes = np.random.default_rng(1).choice(np.array([11, 21, 41, 42, 82], dtype=np.uint8), (96, 96))
    write_cog(root / "classes.tif", classes)
    write_cog(root / "no_crs.tif", classes, crs=None)
    with zipfile.ZipFile(root / "rasters.zip", "w") as archive:
        archive.write(root / "classes.tif", "inner/classes.tif")
    httpd = RangeServer(root)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def served(server: RangeServer) -> Served:
    server.served.clear()
    return server.served


# ------------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("given", "gdal_path", "name"),
    [
        ("https://example.org/a/x.tif", "/vsicurl/https://example.org/a/x.tif", "https://example.org/a/x.tif"),
        (Path("https://example.org/a/x.tif"), "/vsicurl/https://example.org/a/x.tif", "https://example.org/a/x.tif"),
        ("/vsicurl/https://example.org/x.tif", "/vsicurl/https://example.org/x.tif", "https://example.org/x.tif"),
        (Path("/vsicurl/https://example.org/x.tif"), "/vsicurl/https://example.org/x.tif", "https://example.org/x.tif"),
        ("s3://bucket/dir/x.tif", "/vsis3/bucket/dir/x.tif", "s3://bucket/dir/x.tif"),
        (Path("s3://bucket/dir/x.tif"), "/vsis3/bucket/dir/x.tif", "s3://bucket/dir/x.tif"),
        ("gs://bucket/x.tif", "/vsigs/bucket/x.tif", "gs://bucket/x.tif"),
        ("/vsis3/bucket/x.tif", "/vsis3/bucket/x.tif", "/vsis3/bucket/x.tif"),
        (
            Path("/vsizip//vsicurl/https://example.org/a.zip/x.tif"),
            "/vsizip//vsicurl/https://example.org/a.zip/x.tif",
            "/vsizip//vsicurl/https://example.org/a.zip/x.tif",
        ),
    ],
)
def test_urls_map_to_gdal_handlers_even_after_a_path_collapsed_their_slashes(
    given: str | Path, gdal_path: str, name: str
) -> None:
    source = raster_source(given)
    assert (source.gdal_path, source.name, source.remote) == (gdal_path, name, True)


def test_an_absolute_archive_path_keeps_its_root_slash(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"")
    written = f"/vsizip/{archive}/x.tif"  # /vsizip//tmp/.../a.zip/x.tif
    for given in (written, Path(written)):
        source = raster_source(given)
        assert source.gdal_path == written
        assert not source.remote


# ------------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("form", ["url", "vsicurl", "collapsed"])
def test_a_window_of_a_remote_cog_reads_only_its_blocks(server: RangeServer, served: Served, form: str) -> None:
    name = f"noise.tif?{form}"  # one URL per case: GDAL caches what it fetched from a URL
    url = f"{server.url}/{name}"
    given = {"url": url, "vsicurl": f"/vsicurl/{url}", "collapsed": Path(url)}[form]
    size = (server.root / "noise.tif").stat().st_size
    with open_raster(given) as dataset:
        assert dataset.source_name == url
        window = read_window(dataset, 1024, 1280, BLOCK, BLOCK, bands=1)
    with rasterio.open(server.root / "noise.tif") as local:
        expected = local.read(1, window=((1024, 1024 + BLOCK), (1280, 1280 + BLOCK)))
    np.testing.assert_array_equal(window, expected)
    fetched = served.bytes_by_path["/noise.tif"]
    # The header (GDAL's first 16 KiB request) plus one 64 KiB block and what GDAL reads around it.
    assert fetched < 0.05 * size, f"{fetched} of {size} bytes fetched for one block"
    gets = [request for request in served.requests if request[0] == "GET"]
    assert gets and all(header is not None for _, _, header in gets), "every GET is a range request"
    assert all(path == f"/{name}" for _, path, _ in served.requests), "no folder listing, no sidecar probes"


def test_s3_url_reads_through_vsis3(server: RangeServer, served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_S3_ENDPOINT", server.url.removeprefix("http://"))
    monkeypatch.setenv("AWS_HTTPS", "NO")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
    monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "YES")
    info = raster_info("s3://bucket/noise.tif")
    assert (info["path"], info["width"], info["height"], info["crs"]) == ("s3://bucket/noise.tif", SIDE, SIDE, ALBERS)
    assert info["remote"] and info["cog_problems"] is None and info["overviews"] == [2, 4, 8]
    size = (server.root / "bucket" / "noise.tif").stat().st_size
    assert 0 < served.bytes_by_path["/bucket/noise.tif"] < 0.05 * size


def test_a_raster_inside_a_zip_served_over_http(server: RangeServer) -> None:
    with open_raster(f"/vsizip//vsicurl/{server.url}/rasters.zip/inner/classes.tif") as dataset:
        remote = dataset.read(1)
    with rasterio.open(server.root / "classes.tif") as local:
        np.testing.assert_array_equal(remote, local.read(1))


def test_assume_crs_applies_to_a_remote_raster(server: RangeServer) -> None:
    with open_raster(f"{server.url}/no_crs.tif", assume_crs="EPSG:5070") as dataset:
        assert dataset.crs.to_epsg() == 5070
        assert dataset.read(1).shape == (96, 96)


def test_chips_cut_from_a_url_equal_chips_cut_from_the_file(server: RangeServer, tmp_path: Path) -> None:
    def chips_of(raster: str | Path, out: str) -> tuple[np.ndarray, np.ndarray, dict]:
        config = ChipConfig(class_raster=Path(raster), chip_size=16, count=20, block_size=32, seed=3)
        chips = load_chips(make_chips(config, tmp_path / out))
        return chips.train_data, chips.test_data, chips.metadata["sources"]

    url = f"{server.url}/classes.tif"
    remote_train, remote_test, sources = chips_of(url, "remote.npz")
    local_train, local_test, _ = chips_of(server.root / "classes.tif", "local.npz")
    np.testing.assert_array_equal(remote_train, local_train)
    np.testing.assert_array_equal(remote_test, local_test)
    assert sources["class_raster"] == url


# ------------------------------------------------------------------------------------------------ errors


def test_a_missing_url_is_one_line_naming_it(server: RangeServer) -> None:
    expected = r"^http://127\.0\.0\.1:\d+/nope\.tif cannot be opened: HTTP response code: 404$"
    with pytest.raises(UserError, match=expected):
        open_raster(f"{server.url}/nope.tif")


def test_an_unreachable_host_is_one_line_naming_it() -> None:
    with pytest.raises(UserError, match=r"^http://127\.0\.0\.1:1/x\.tif cannot be opened: .*connect") as caught:
        open_raster("http://127.0.0.1:1/x.tif")
    assert "\n" not in str(caught.value)


def test_s3_without_credentials_is_one_line_saying_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN", "PROFILE", "NO_SIGN_REQUEST"):
        monkeypatch.delenv(f"AWS_{name}", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/credentials
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("CPL_AWS_AUTODETECT_EC2", "NO")  # never ask an instance-metadata service
    with pytest.raises(UserError, match=r"^s3://bucket/x\.tif cannot be opened: .*AWS_NO_SIGN_REQUEST") as caught:
        open_raster(Path("s3://bucket/x.tif"))
    assert "\n" not in str(caught.value)


def test_errors_about_a_remote_raster_name_its_url(server: RangeServer, tmp_path: Path) -> None:
    elsewhere = write_cog(tmp_path / "elsewhere.tif", np.ones((64, 64), np.uint8), crs="EPSG:32633")
    url = f"{server.url}/classes.tif"
    with pytest.raises(UserError, match=rf"^{re.escape(url)} does not overlap the reference grid"):
        align_raster(url, elsewhere, tmp_path / "aligned.tif")


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    quick = raster._REMOTE_OPEN_OPTIONS | {"GDAL_HTTP_MAX_RETRY": 2, "GDAL_HTTP_RETRY_DELAY": 0.01}
    monkeypatch.setattr(raster, "_REMOTE_OPEN_OPTIONS", quick)


def test_a_read_outlasts_a_server_busy_for_a_moment(server: RangeServer, served: Served, quick_retries: None) -> None:
    with open_raster(f"{server.url}/noise.tif?busy") as dataset:
        server.failures_left = 2
        window = read_window(dataset, 0, 0, BLOCK, BLOCK, bands=1)
    with rasterio.open(server.root / "noise.tif") as local:
        np.testing.assert_array_equal(window, local.read(1, window=((0, BLOCK), (0, BLOCK))))
    assert server.failures_left == 0


def test_a_read_that_keeps_failing_is_one_line_naming_the_url(server: RangeServer, quick_retries: None) -> None:
    url = f"{server.url}/noise.tif?down"
    with open_raster(url) as dataset:
        server.failures_left = 1000
        expected = rf"^{re.escape(url)}: band 1, rows 256\.\.512, cols 0\.\.256 cannot be read; the transfer failed"
        try:
            with pytest.raises(UserError, match=expected) as caught:
                read_window(dataset, 256, 0, BLOCK, BLOCK, bands=1)
        finally:
            server.failures_left = 0
    assert "\n" not in str(caught.value)


def test_a_missing_local_archive_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.zip/x\.tif is not a raster GDAL can open"):
        open_raster(f"/vsizip/{tmp_path}/nope.zip/x.tif")
