"""Rasters: open anything GDAL reads, windowed reads, pixel lon/lat, alignment, GeoTIFF writing.

All reads are windowed so memory does not grow with the raster's size. Rasters opened here (and the aligned
views of them) read through :class:`CheckedReader`: a block that cannot be decoded (a truncated or corrupt file)
is a UserError naming the file, band and window, and so is a +-inf pixel, which landformer refuses everywhere
rather than guess whether it is data or nodata (NaN and the raster's nodata value are nodata).

Pixel positions are "array coordinates": row and column may be fractional, the top-left corner of the raster is
(0, 0) and the centre of pixel (i, j) is (i + 0.5, j + 0.5), so a chip of side ``s`` at top-left (r, c) has its
centre at (r + s / 2, c + s / 2).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import rasterio.warp
from numpy.lib.stride_tricks import sliding_window_view
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioIOError
from rasterio.io import DatasetReader
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from landformer.core.errors import UserError
from landformer.core.io import atomic_path, require_file
from landformer.core.legend import Legend

LONLAT = CRS.from_epsg(4326)
GEOTIFF_BLOCK = 256
COG_MIN_SIDE = 512  # outputs wider or taller than this are Cloud-Optimized GeoTIFFs with overviews


def parse_crs(text: str, what: str = "CRS") -> CRS:
    """A CRS from ``"EPSG:5070"``, a PROJ string or WKT; a UserError names the text if it is not one."""
    try:
        with rasterio.Env():  # GDAL's and PROJ's complaints go to the error below, not straight to stderr
            return CRS.from_user_input(text)
    except (CRSError, ValueError) as err:
        raise UserError(f"{what} {text!r} is not a coordinate reference system: {err}") from None


def open_raster(path: str | os.PathLike[str], assume_crs: str | None = None) -> rasterio.DatasetReader:
    """Open a raster for reading; a missing file, a non-raster or a raster without CRS is a UserError.

    ``path`` is a local file or anything GDAL opens remotely or inside an archive (see :func:`raster_source`).
    ``assume_crs`` (e.g. ``"EPSG:5070"``) is used for rasters that carry no CRS; without it they are refused.
    It is attached through GDAL's ``vrt://`` connection (``a_srs``), so the file is never modified. Reads of
    the returned dataset are checked (see :class:`CheckedReader`).
    """
    source = raster_source(path)
    dataset = open_any_raster(source)
    if dataset.crs is not None:
        return dataset
    georeferenced = not dataset.transform.is_identity
    dataset.close()
    if not georeferenced:
        raise UserError(f"{source} has neither a CRS nor a geotransform, so its pixels have no place on the ground")
    if assume_crs is None:
        raise UserError(f"{source} has no CRS; pass --assume-crs (e.g. EPSG:4326) if you know it")
    crs = parse_crs(assume_crs, "--assume-crs")
    target = source.gdal_path if source.remote else Path(source.gdal_path).resolve()
    with _remote_open_env(source):
        return checked(rasterio.open(f"vrt://{target}?a_srs={crs.to_string()}"), source.name, source.remote)


# GDAL's handlers for files behind a URL, by the scheme users write (``s3://bucket/key`` is ``/vsis3/bucket/key``).
_URL_HANDLERS = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/"}
_URL = re.compile(r"(?P<handler>/vsicurl(?:_streaming)?/)?(?P<scheme>[a-z][a-z0-9]*):/+(?P<rest>.+)", re.IGNORECASE)
_HANDLER = re.compile(r"/vsi(?P<kind>[a-z0-9_]+)/(?P<rest>.*)", re.IGNORECASE)
# Handlers whose path names an archive (or compressed file) and then, for archives, a member inside it.
_ARCHIVES = ("zip", "tar", "gzip", "7z", "rar")
# A remote open only needs the file itself: without this GDAL lists the "folder" (an HTTP or S3 listing request)
# and probes for .aux.xml/.ovr/.msk sidecars, several round trips before the first pixel. A dead host fails
# within the connect timeout instead of curl's five minutes. Servers and networks fail for a moment (HTTP 429,
# 5xx): the file's reads, for as long as it is open, retry those with growing delays (GDAL takes the setting
# when the file is opened).
_REMOTE_OPEN_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_CONNECTTIMEOUT": 20,
    "GDAL_HTTP_MAX_RETRY": 4,
    "GDAL_HTTP_RETRY_DELAY": 1,
}


@dataclass(frozen=True)
class RasterSource:
    """A raster input as GDAL opens it (``gdal_path``) and as errors name it (``name``).

    ``remote`` is true for files behind a URL (``/vsicurl/``, ``/vsis3/``, ...): no local checks apply to them.
    """

    gdal_path: str
    name: str
    remote: bool

    def __str__(self) -> str:
        return self.name

    def __fspath__(self) -> str:
        return self.gdal_path


def raster_source(path: str | os.PathLike[str]) -> RasterSource:
    """What GDAL should open for a raster input: a local file (which must exist), an ``http(s)://``, ``s3://`` or
    ``gs://`` URL (read by range requests through ``/vsicurl/``, ``/vsis3/``, ``/vsigs/``), or a GDAL virtual
    path such as ``/vsicurl/https://...``, ``/vsis3/bucket/key`` or ``/vsizip/archive.zip/member.tif``.

    ``pathlib.Path`` collapses the ``//`` of a URL (``https:/host/x.tif``) and of an absolute path inside an
    archive handler (``/vsizip//data/a.zip/x.tif``): inputs that went through a Path on their way here (argparse,
    YAML recipes) are mended, so a URL works wherever a raster path is taken.
    """
    if isinstance(path, RasterSource):
        return path
    text = os.fspath(path)
    url = _URL.fullmatch(text)
    if url is not None and (url["handler"] or url["scheme"].lower() in _URL_HANDLERS) and not Path(text).exists():
        scheme, rest = url["scheme"].lower(), url["rest"]
        if url["handler"]:
            return RasterSource(f"{url['handler']}{scheme}://{rest}", f"{scheme}://{rest}", remote=True)
        if _URL_HANDLERS[scheme] == "/vsicurl/":
            return RasterSource(f"/vsicurl/{scheme}://{rest}", f"{scheme}://{rest}", remote=True)
        return RasterSource(f"{_URL_HANDLERS[scheme]}{rest}", f"{scheme}://{rest}", remote=True)
    handler = _HANDLER.fullmatch(text)
    if handler is not None:
        kind, rest = handler["kind"].lower(), handler["rest"]
        if kind in _ARCHIVES:
            inner = _archive_path(rest)
            nested = f"/vsi{kind}/{inner.gdal_path}"
            return RasterSource(nested, nested, inner.remote)
        return RasterSource(text, text, remote=kind != "mem")
    return RasterSource(str(require_file(path, "raster")), str(path), remote=False)


def _archive_path(rest: str) -> RasterSource:
    """The archive part of ``/vsizip/REST`` (archive path, then member), its lost leading ``/`` restored.

    ``REST`` may itself be a handler or URL (``/vsizip//vsicurl/https://host/a.zip/x.tif``); otherwise the first
    prefix of it that is a file is the archive, looked for relative to the working folder, then from the root.
    """
    if rest.startswith("{"):  # GDAL's braces delimit the archive path explicitly
        return RasterSource(rest, rest, remote=False)
    if _URL.fullmatch(rest):
        return raster_source(rest)
    if _HANDLER.fullmatch("/" + rest.lstrip("/")):
        return raster_source("/" + rest.lstrip("/"))
    parts = rest.split("/")
    for end in range(1, len(parts) + 1):
        prefix = "/".join(parts[:end])
        if prefix and Path(prefix).is_file():
            return RasterSource(rest, rest, remote=False)
        if Path("/" + prefix.lstrip("/")).is_file():
            absolute = "/" + rest.lstrip("/")
            return RasterSource(absolute, absolute, remote=False)
    return RasterSource(rest, rest, remote=False)


def _remote_open_env(source: RasterSource) -> Any:
    return rasterio.Env(**_REMOTE_OPEN_OPTIONS) if source.remote else contextlib.nullcontext()


def open_any_raster(path: str | os.PathLike[str]) -> rasterio.DatasetReader:
    """Open a raster with or without georeferencing (image chips, tiles); reads are checked as in
    :func:`open_raster`. A missing file, an unreachable URL or a file GDAL cannot open is a UserError."""
    source = raster_source(path)
    try:
        with warnings.catch_warnings(), _remote_open_env(source):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # open_raster refuses it where it matters
            dataset = rasterio.open(source.gdal_path)
    except RasterioIOError as err:
        reason = str(err).splitlines()[0]
        if source.remote:  # GDAL's line says why: "HTTP response code: 404", a refused connection, no credentials
            raise UserError(f"{source} cannot be opened: {reason}") from None
        raise UserError(f"{source} is not a raster GDAL can open: {reason}") from None
    try:
        check_complete(dataset, source.gdal_path, last_blocks_only=True)
    except BaseException:
        dataset.close()
        raise
    return checked(dataset, source.name, source.remote)


def _window_text(window: Any, dataset: Any) -> str:
    """``rows 0..256, cols 512..768`` of a rasterio window (a Window, a pair of ranges, or None: all)."""
    if window is None:
        return f"rows 0..{dataset.height}, cols 0..{dataset.width}"
    if not isinstance(window, Window):
        window = Window.from_slices(*window)
    row, col = int(window.row_off), int(window.col_off)
    return f"rows {row}..{row + int(window.height)}, cols {col}..{col + int(window.width)}"


def _bands_text(indexes: Any) -> str:
    if indexes is None:
        return "all bands"
    if isinstance(indexes, int):
        return f"band {indexes}"
    return "bands " + ", ".join(str(index) for index in indexes)


def _gdal_reason(err: BaseException) -> str:
    """GDAL's own first line about a failed read (kept in the exception's cause), else rasterio's."""
    for candidate in (err.__cause__, err.__context__, err):
        text = str(candidate or "").strip()
        if text and "See previous exception" not in text:
            return text.splitlines()[0]
    return str(err).splitlines()[0] if str(err) else type(err).__name__


class CheckedReads:
    """Reads that fail in one line: an undecodable block and a +-inf pixel are UserErrors naming the file,
    the band(s) and the window. +-inf is allowed only where it is the raster's declared nodata value.

    A failed read of a ``remote`` raster is the transfer's failure, not the file's (GDAL has already retried).
    """

    source_name: str
    remote: bool = False

    def read(self, indexes: Any = None, *args: Any, **kwargs: Any) -> Any:
        window = kwargs.get("window", args[1] if len(args) > 1 else None)
        try:
            data = super().read(indexes, *args, **kwargs)  # type: ignore[misc]
        except RasterioIOError as err:
            cause = "the transfer failed" if self.remote else "the file is truncated or corrupt"
            raise UserError(
                f"{self.source_name}: {_bands_text(indexes)}, {_window_text(window, self)} cannot be read; {cause} "
                f"({_gdal_reason(err)})"
            ) from None
        values = np.ma.getdata(data)
        if values.dtype.kind == "f":
            nodata = getattr(self, "nodata", None)
            infinite = np.isinf(values)
            if nodata is not None and np.isinf(nodata):
                infinite &= values != nodata
            if infinite.any():
                where = np.argwhere(infinite)[0][-2:]
                row0, col0 = (0, 0) if window is None else _window_offsets(window)
                raise UserError(
                    f"{self.source_name}: {_bands_text(indexes)}, {_window_text(window, self)}: {int(infinite.sum())} "
                    f"infinite value(s) (first at row {row0 + int(where[0])}, col {col0 + int(where[1])}); landformer "
                    "refuses +-inf: mark missing pixels with the nodata value or NaN"
                )
        return data


def refuse_infinite(values: np.ndarray, source: str) -> None:
    """The same rule for arrays that do not come from a raster (chip files, .npy tiles): +-inf is refused.

    Checked in slices, so a memory-mapped chip file needs no temporary as large as itself.
    """
    if values.dtype.kind != "f":
        return
    flat = np.asarray(values).reshape(-1)
    step = 1 << 22
    count = sum(int(np.count_nonzero(np.isinf(flat[i : i + step]))) for i in range(0, flat.size, step))
    if count:
        raise UserError(
            f"{source} holds {count} infinite value(s); landformer refuses +-inf: mark missing values with NaN"
        )


def _window_offsets(window: Any) -> tuple[int, int]:
    if not isinstance(window, Window):
        window = Window.from_slices(*window)
    return int(window.row_off), int(window.col_off)


class CheckedReader(CheckedReads, DatasetReader):
    """A rasterio dataset whose reads are checked (see :class:`CheckedReads`)."""


class CheckedWarpedVRT(CheckedReads, WarpedVRT):
    """A warped view whose reads are checked; errors name the source raster."""

    def __init__(self, source: Any, **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self.source_name = display_name(source)
        self.remote = getattr(source, "remote", False)


def display_name(dataset: Any) -> str:
    """How errors name an open dataset: the path or URL the user gave, not GDAL's ``/vsicurl/`` form of it."""
    return getattr(dataset, "source_name", dataset.name)


def checked(dataset: Any, name: str, remote: bool = False) -> Any:
    """``dataset`` (an open :class:`rasterio.io.DatasetReader`) with checked reads, errors naming ``name``."""
    dataset.__class__ = CheckedReader
    dataset.source_name = name
    dataset.remote = remote
    return dataset


@dataclass(frozen=True)
class RasterGrid:
    """The pixel grid of a raster: where its pixels lie, independent of what they hold."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, dataset: Any) -> RasterGrid:
        return cls(dataset.crs, dataset.transform, dataset.width, dataset.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        xs, ys = _affine_xy(self.transform, np.array([0.0, self.height]), np.array([0.0, self.width]))
        return float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))


def _affine_xy(transform: Affine, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates of fractional array positions (vectorised affine, no rounding)."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    return a * cols + b * rows + c, d * cols + e * rows + f


def pixel_to_lonlat(
    transform: Affine, crs: CRS | str, rows: np.ndarray | float, cols: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Longitude/latitude (EPSG:4326, degrees) of fractional array positions; see the module docstring."""
    rows = np.atleast_1d(np.asarray(rows, dtype=np.float64))
    cols = np.atleast_1d(np.asarray(cols, dtype=np.float64))
    xs, ys = _affine_xy(transform, rows, cols)
    crs = CRS.from_user_input(crs)
    if crs == LONLAT:
        return xs, ys
    lon, lat = rasterio.warp.transform(crs, LONLAT, xs, ys)
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


def lonlat_to_pixel(
    transform: Affine, crs: CRS | str, lon: np.ndarray | float, lat: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Fractional array positions (rows, cols) of lon/lat points; the inverse of :func:`pixel_to_lonlat`."""
    lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    crs = CRS.from_user_input(crs)
    xs, ys = (lon, lat) if crs == LONLAT else map(np.asarray, rasterio.warp.transform(LONLAT, crs, lon, lat))
    cols, rows = _affine_xy(~transform, np.asarray(ys), np.asarray(xs))  # the inverse maps (x, y) -> (col, row)
    return rows, cols


def pixel_centre_lonlat(dataset: Any, rows: np.ndarray | int, cols: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of the centres of whole pixels (integer row, col) of an open dataset."""
    return pixel_to_lonlat(dataset.transform, dataset.crs, np.asarray(rows) + 0.5, np.asarray(cols) + 0.5)


def chip_centre_lonlat(
    grid: RasterGrid, rows: np.ndarray, cols: np.ndarray, chip_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of the centres of square chips whose top-left pixels are (rows, cols)."""
    half = chip_size / 2
    return pixel_to_lonlat(grid.transform, grid.crs, np.asarray(rows) + half, np.asarray(cols) + half)


def lonlat_bounds(grid: RasterGrid) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees enclosing the whole raster (edges densified, so curved edges fit)."""
    if grid.crs == LONLAT:
        return grid.bounds
    west, south, east, north = rasterio.warp.transform_bounds(grid.crs, LONLAT, *grid.bounds, densify_pts=101)
    return float(west), float(south), float(east), float(north)


def read_window(
    dataset: Any, row: int, col: int, height: int, width: int, bands: int | list[int] | None = None
) -> np.ndarray:
    """Read ``height`` x ``width`` pixels starting at (row, col); a window leaving the raster is a ValueError.

    Returns (bands, height, width), or (height, width) when ``bands`` is one band number.
    """
    if row < 0 or col < 0 or row + height > dataset.height or col + width > dataset.width:
        raise ValueError(
            f"window rows {row}..{row + height}, cols {col}..{col + width} leaves the "
            f"{dataset.height}x{dataset.width} raster {dataset.name}"
        )
    return dataset.read(bands, window=Window(col, row, width, height))


def iter_windows(height: int, width: int, tile: int) -> Iterator[Window]:
    """Row-major tiles of at most ``tile`` x ``tile`` pixels covering a raster; edge tiles are smaller."""
    for row in range(0, height, tile):
        for col in range(0, width, tile):
            yield Window(col, row, min(tile, width - col), min(tile, height - row))


def check_overlap(source: Any, reference: RasterGrid, source_name: str, reference_name: str) -> None:
    """Refuse a source raster that covers no part of the reference grid (it would align to all nodata)."""
    left, bottom, right, top = reference.bounds
    try:
        s_left, s_bottom, s_right, s_top = rasterio.warp.transform_bounds(
            source.crs, reference.crs, *source.bounds, densify_pts=101
        )
    except Exception as err:  # PROJ raises several types when the areas cannot be related at all
        raise UserError(f"{source_name} cannot be projected onto the CRS of {reference_name}: {err}") from None
    if s_left >= right or s_right <= left or s_bottom >= top or s_top <= bottom:
        raise UserError(
            f"{source_name} does not overlap {reference_name} (its bounds in the reference CRS are "
            f"{s_left:.6g}, {s_bottom:.6g}, {s_right:.6g}, {s_top:.6g}; the reference covers "
            f"{left:.6g}, {bottom:.6g}, {right:.6g}, {top:.6g})"
        )


def aligned_vrt(source: Any, reference: RasterGrid, categorical: bool = False) -> WarpedVRT:
    """A virtual view of ``source`` resampled onto ``reference``: pixel (i, j) of both now cover the same ground.

    Continuous data (elevation, ...) is resampled bilinearly into float32 with NaN where the source has no
    data; categorical data uses nearest neighbour and keeps its dtype and nodata, so no new codes appear.
    Reads of the view warp only the window asked for, so aligning costs no memory beyond that window.
    """
    check_overlap(source, reference, display_name(source), "the reference grid")
    common: dict[str, Any] = {
        "crs": reference.crs,
        "transform": reference.transform,
        "width": reference.width,
        "height": reference.height,
    }
    if categorical:
        return CheckedWarpedVRT(source, resampling=Resampling.nearest, **common)
    return CheckedWarpedVRT(source, resampling=Resampling.bilinear, nodata=np.nan, dtype="float32", **common)


class AlignedCovariate:
    """A continuous covariate (elevation, ...) read as chips on the pixel grid of a reference raster.

    Each chip pixel gets the bilinear sample of the covariate at the pixel's centre (float32, NaN = no data),
    the value GDAL's bilinear warp computes, but without warping whole VRT blocks for every small window:
    source positions come from an exact projection of a few lattice points per chip, refined until linear
    interpolation between them is within :attr:`tolerance` source pixels (GDAL's own default error
    threshold), and only the source window under a group of chips is read. As in GDAL, a point over a nodata
    pixel is nodata, and nodata neighbours are left out of the bilinear weights.

    A covariate finer than the reference grid (more than one of its pixels per reference pixel) would alias
    under point sampling, so it is read through GDAL's warper (:func:`aligned_vrt`), which widens the kernel.
    """

    tolerance = 0.125

    def __init__(self, source: Any, reference: RasterGrid, reference_name: str = "the reference grid") -> None:
        check_overlap(source, reference, display_name(source), reference_name)
        self.source, self.reference = source, reference
        self.count = source.count
        self.descriptions = source.descriptions
        self.name = source.name
        self.same_crs = CRS.from_user_input(source.crs) == CRS.from_user_input(reference.crs)
        # Same grid up to whole pixels (e.g. a DEM already aligned): chips are plain windows, copied exactly.
        self.pixel_offset = _whole_pixel_offset(source.transform, reference.transform) if self.same_crs else None
        finer = self.pixel_offset is None and self.source_pixels_per_pixel() > 1.0 + 1e-6
        self.vrt = aligned_vrt(source, reference) if finer else None

    def close(self) -> None:
        if self.vrt is not None:
            self.vrt.close()

    def source_positions(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact fractional source-array positions of fractional reference-array positions."""
        xs, ys = _affine_xy(self.reference.transform, np.ravel(rows), np.ravel(cols))
        if not self.same_crs:
            xs, ys = (np.asarray(v) for v in rasterio.warp.transform(self.reference.crs, self.source.crs, xs, ys))
        src_cols, src_rows = _affine_xy(~self.source.transform, ys, xs)
        return src_rows.reshape(np.shape(rows)), src_cols.reshape(np.shape(cols))

    def source_pixels_per_pixel(self) -> float:
        """Linear size of a reference pixel in source pixels, at the reference raster's centre."""
        r, c = self.reference.height / 2, self.reference.width / 2
        src_rows, src_cols = self.source_positions(np.array([r, r + 1, r]), np.array([c, c, c + 1]))
        jacobian = np.array(
            [
                [src_rows[1] - src_rows[0], src_rows[2] - src_rows[0]],
                [src_cols[1] - src_cols[0], src_cols[2] - src_cols[0]],
            ]
        )
        return float(np.sqrt(abs(np.linalg.det(jacobian))))

    def _shifted_chips(self, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
        """Chips at source pixels (rows, cols), read in one window; NaN outside the source or without data."""
        top, left = int(rows.min()), int(cols.min())
        bottom, right = int(rows.max()) + size, int(cols.max()) + size
        block = np.full((self.count, bottom - top, right - left), np.nan, dtype=np.float32)
        inner_top, inner_left = max(top, 0), max(left, 0)
        inner_bottom, inner_right = min(bottom, self.source.height), min(right, self.source.width)
        if inner_top < inner_bottom and inner_left < inner_right:
            window = Window(inner_left, inner_top, inner_right - inner_left, inner_bottom - inner_top)
            data = self.source.read(window=window).astype(np.float32)
            if self.source.nodata is not None and not np.isnan(self.source.nodata):
                data[data == np.float32(self.source.nodata)] = np.nan
            block[:, inner_top - top : inner_bottom - top, inner_left - left : inner_right - left] = data
        view = sliding_window_view(block, (size, size), axis=(1, 2))[:, rows - top, cols - left]
        return np.moveaxis(view, 0, 1)

    def chip_lattice(self, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray | None:
        """Source positions (n, 2, m, m) at m x m lattice points of each chip; None when reads go through GDAL.

        m starts at 3 (corners and middle) and doubles while bilinear interpolation between the lattice
        points misses the exact position of any cell midpoint by more than :attr:`tolerance` source pixels.
        """
        if self.vrt is not None or self.pixel_offset is not None:
            return None
        rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
        m = min(3, size)
        while True:
            nodes = np.linspace(0.5, size - 0.5, m)
            lattice = np.stack(self.source_positions(*_chip_points(rows, cols, nodes)), axis=1)
            if m >= size:
                return lattice
            middles = (nodes[:-1] + nodes[1:]) / 2
            exact = np.stack(self.source_positions(*_chip_points(rows, cols, middles)), axis=1)
            guess = (lattice[..., :-1, :-1] + lattice[..., 1:, :-1] + lattice[..., :-1, 1:] + lattice[..., 1:, 1:]) / 4
            error = np.abs(exact - guess)  # NaN where the projection fails: such points are left out of the chip
            if np.nan_to_num(error, nan=0.0).max(initial=0.0) <= self.tolerance:
                return lattice
            m = min(2 * m - 1, size)

    def read_chips(self, rows: np.ndarray, cols: np.ndarray, size: int, lattice: np.ndarray | None) -> np.ndarray:
        """Chips (n, bands, size, size) float32 at top-left reference pixels (rows, cols), given their lattice."""
        if self.vrt is not None:
            return _chips_from_window(self.vrt, rows, cols, size)
        if self.pixel_offset is not None:
            return self._shifted_chips(rows + self.pixel_offset[0], cols + self.pixel_offset[1], size)
        assert lattice is not None
        height, width = self.source.height, self.source.width
        out = np.full((len(rows), self.count, size, size), np.nan, dtype=np.float32)
        # Every pixel's position is a convex combination of its chip's lattice points, so the lattice's extremes
        # bound the source window (plus the next pixel that bilinear reads) and tell whether all are inside.
        # Points the projection cannot map (outside its domain) are NaN, hence outside the source.
        lattice = np.where(np.isfinite(lattice), lattice, np.nan)
        if np.isnan(lattice).all():
            return out
        low, high = np.nanmin(lattice, axis=(0, 2, 3)), np.nanmax(lattice, axis=(0, 2, 3))
        if high[0] < 0 or high[1] < 0 or low[0] >= height or low[1] >= width:
            return out
        row0, col0 = (max(int(np.floor(value - 0.5)), 0) for value in low)
        row1 = min(int(np.floor(high[0] - 0.5)) + 1, height - 1)
        col1 = min(int(np.floor(high[1] - 0.5)) + 1, width - 1)
        data = self.source.read(window=Window(col0, row0, col1 - col0 + 1, row1 - row0 + 1)).astype(np.float32)
        if self.source.nodata is not None and not np.isnan(self.source.nodata):
            data[data == np.float32(self.source.nodata)] = np.nan
        if data.shape[1] == 1 or data.shape[2] == 1:  # bilinear needs two neighbours per axis: repeat the edge
            data = np.pad(data, ((0, 0), (0, int(data.shape[1] == 1)), (0, int(data.shape[2] == 1))), mode="edge")
        # Positions relative to the window and to pixel centres: float32 stays exact to ~1e-5 pixel.
        weights = _interpolation_weights(lattice.shape[-1], size).astype(np.float32)
        u = weights @ (lattice[:, 0] - (row0 + 0.5)).astype(np.float32) @ weights.T
        v = weights @ (lattice[:, 1] - (col0 + 0.5)).astype(np.float32) @ weights.T
        if low[0] >= 0 and low[1] >= 0 and high[0] < height and high[1] < width and not np.isnan(lattice).any():
            out[:] = np.moveaxis(_bilinear(data, u.ravel(), v.ravel()).reshape(self.count, *u.shape), 0, 1)
            return out
        inside = (u >= -(row0 + 0.5)) & (u < height - row0 - 0.5) & (v >= -(col0 + 0.5)) & (v < width - col0 - 0.5)
        values = _bilinear(data, u[inside], v[inside])
        for band in range(self.count):
            out[:, band][inside] = values[band]
        return out


def _bilinear(data: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(bands, N) bilinear samples of ``data`` (bands, h, w) at array positions (u, v) of pixel centres.

    Clamping the neighbours and the fractions repeats the edge pixel within half a pixel of the raster's edge,
    which is what GDAL's renormalised weights give there. Pixels next to no data are redone by
    :func:`_bilinear_skipping_nodata`.
    """
    top = np.clip(np.floor(u), 0, data.shape[1] - 2)
    left = np.clip(np.floor(v), 0, data.shape[2] - 2)
    fr = np.clip(u - top, 0, 1)
    fc = np.clip(v - left, 0, 1)
    stride = data.shape[2]
    base = top.astype(np.intp) * stride + left.astype(np.intp)
    out = np.empty((data.shape[0], len(u)), dtype=np.float32)
    for band in range(data.shape[0]):
        flat = data[band].ravel()
        upper = flat[base]
        upper += (flat[base + 1] - upper) * fc
        lower = flat[base + stride]
        lower += (flat[base + stride + 1] - lower) * fc
        values = out[band]
        np.multiply(lower - upper, fr, out=values)
        values += upper
        holes = np.isnan(values)
        if holes.any():
            values[holes] = _bilinear_skipping_nodata(data[band], u[holes], v[holes])
    return out


def _bilinear_skipping_nodata(data: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear samples at (u, v) next to no data, by GDAL's warper rules: NaN when the source pixel under the
    point has no data; otherwise the valid neighbours' weights, renormalised (NaN if they sum to almost 0).

    ``data`` is one band (h, w); (u, v) are array positions of pixel centres, as in :func:`_bilinear`.
    """
    top, left = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fr, fc = u - top, v - left
    total = np.zeros(len(u))
    weight_sum = np.zeros(len(u))
    for d_row, d_col, weight in (
        (0, 0, (1 - fr) * (1 - fc)),
        (0, 1, (1 - fr) * fc),
        (1, 0, fr * (1 - fc)),
        (1, 1, fr * fc),
    ):
        rows, cols = np.clip(top + d_row, 0, data.shape[0] - 1), np.clip(left + d_col, 0, data.shape[1] - 1)
        values = data[rows, cols].astype(np.float64)
        valid = ~np.isnan(values)
        total += np.where(valid, values * weight, 0.0)
        weight_sum += np.where(valid, weight, 0.0)
    under_rows = np.clip(np.floor(u + 0.5).astype(np.int64), 0, data.shape[0] - 1)
    under_cols = np.clip(np.floor(v + 0.5).astype(np.int64), 0, data.shape[1] - 1)
    usable = (weight_sum > 1e-5) & ~np.isnan(data[under_rows, under_cols])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(usable, total / weight_sum, np.nan).astype(np.float32)


def _chip_points(rows: np.ndarray, cols: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, k, k) reference positions of the k x k points ``nodes`` (chip-relative) of chips at (rows, cols)."""
    shape = (len(rows), len(nodes), len(nodes))
    point_rows = np.broadcast_to(rows[:, None, None] + nodes[None, :, None], shape)
    point_cols = np.broadcast_to(cols[:, None, None] + nodes[None, None, :], shape)
    return point_rows, point_cols


def _interpolation_weights(m: int, size: int) -> np.ndarray:
    """(size, m) weights that linearly interpolate m evenly spaced lattice values onto ``size`` pixel centres."""
    if m == size:
        return np.eye(size)
    position = np.arange(size) * (m - 1) / (size - 1)
    lower = np.minimum(np.floor(position).astype(np.int64), m - 2)
    frac = position - lower
    weights = np.zeros((size, m))
    weights[np.arange(size), lower] = 1 - frac
    weights[np.arange(size), lower + 1] = frac
    return weights


def _whole_pixel_offset(source: Affine, reference: Affine) -> tuple[int, int] | None:
    """(rows, cols) to add to reference pixels to get source pixels, if the grids differ by whole pixels only."""
    same_shape = np.allclose(
        [source.a, source.b, source.d, source.e],
        [reference.a, reference.b, reference.d, reference.e],
        rtol=1e-9,
        atol=0,
    )
    if not same_shape or source.b or source.d:
        return None
    col, row = (reference.c - source.c) / source.a, (reference.f - source.f) / source.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


def _chips_from_window(dataset: Any, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Chips (n, bands, size, size) cut from ONE read of the bounding window of all of them."""
    top, left = int(rows.min()), int(cols.min())
    window = Window(left, top, int(cols.max()) + size - left, int(rows.max()) + size - top)
    block = dataset.read(window=window)
    view = sliding_window_view(block, (size, size), axis=(1, 2))[:, rows - top, cols - left]
    return np.moveaxis(view, 0, 1)


def _geotiff_profile(
    width: int, height: int, count: int, dtype: Any, transform: Affine, crs: CRS | str, nodata: float | None
) -> dict[str, Any]:
    tiled = height >= GEOTIFF_BLOCK and width >= GEOTIFF_BLOCK
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": np.dtype(dtype).name,
        "crs": CRS.from_user_input(crs),
        "transform": transform,
        "nodata": nodata,
        "compress": "deflate",
        "tiled": tiled,
        "BIGTIFF": "IF_SAFER",
    }
    if tiled:
        profile.update(blockxsize=GEOTIFF_BLOCK, blockysize=GEOTIFF_BLOCK)
    if np.dtype(dtype).kind == "f":
        profile["predictor"] = 3  # floating-point predictor: DEMs compress about twice as well
    return profile


def _cog_options(dtype: Any, categorical: bool) -> dict[str, Any]:
    """GDAL COG driver options matching :func:`_geotiff_profile`'s compression and block size."""
    return {
        "COMPRESS": "DEFLATE",
        "PREDICTOR": "FLOATING_POINT" if np.dtype(dtype).kind == "f" else "NO",
        "BLOCKSIZE": GEOTIFF_BLOCK,
        "BIGTIFF": "IF_SAFER",
        # Averaging class codes would invent classes (the mean of forest and water); a code is kept as it is.
        "OVERVIEW_RESAMPLING": "NEAREST" if categorical else "AVERAGE",
        "OVERVIEWS": "AUTO",
    }


def class_dtype(legend: Legend) -> np.dtype:
    """The smallest GeoTIFF type that holds ``legend``'s codes and carries a colour table (GDAL allows colour
    tables on Byte and UInt16 bands only); a legend with codes outside 0..65535 is a ValueError."""
    codes = [*legend.codes, *legend.nodata_codes]
    for dtype in (np.dtype(np.uint8), np.dtype(np.uint16)):
        if min(codes) >= 0 and max(codes) <= np.iinfo(dtype).max:
            return dtype
    raise ValueError(f"legend '{legend.name}' has codes outside 0..65535, which no GeoTIFF colour table can hold")


def legend_colormap(legend: Legend) -> dict[int, tuple[int, int, int, int]]:
    """Colour table entries by raw code: each class in its legend colour, nodata codes transparent."""
    entries = {code: (0, 0, 0, 0) for code in legend.nodata_codes}
    for code, (red, green, blue) in zip(legend.codes, legend.palette().tolist(), strict=True):
        entries[code] = (red, green, blue, 255)
    return entries


def pam_path(path: str | os.PathLike[str]) -> Path:
    """GDAL's sidecar of ``path`` (``NAME.tif.aux.xml``): where GeoTIFF category names live."""
    return Path(f"{os.fspath(path)}.aux.xml")


def category_names_xml(legend: Legend, band: int = 1) -> str:
    """A GDAL PAM document naming ``legend``'s classes by raw code (entry i names pixel value i), which GDAL,
    QGIS and ArcGIS read beside the GeoTIFF: GeoTIFF itself has no place for category names."""
    names = [""] * (max(legend.codes) + 1)
    for code, name in zip(legend.codes, legend.names, strict=True):
        names[code] = name
    root = ET.Element("PAMDataset")
    categories = ET.SubElement(ET.SubElement(root, "PAMRasterBand", band=str(band)), "CategoryNames")
    for name in names:
        ET.SubElement(categories, "Category").text = name
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


@contextlib.contextmanager
def geotiff_writer(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    count: int,
    dtype: Any,
    transform: Affine,
    crs: CRS | str,
    nodata: float | None = None,
    band_names: list[str] | None = None,
    tags: dict[str, Any] | None = None,
    legend: Legend | None = None,
    units: list[str] | None = None,
    categorical: bool = False,
) -> Iterator[Any]:
    """Open a tiled, deflate-compressed GeoTIFF for writing window by window: ``dst.write(block, window=w)``.

    GIS-ready: a ``legend`` (for a class raster of raw codes in band 1, of type :func:`class_dtype`) gives the
    band its colour table and category names (``NAME.tif.aux.xml``), so QGIS shows the classes coloured and
    named; ``band_names`` and ``units`` describe the bands. A raster wider or taller than :data:`COG_MIN_SIDE`
    becomes a Cloud-Optimized GeoTIFF with overviews (nearest for ``categorical`` data and legends, average
    otherwise) once the block exits.

    The file appears at ``path`` only when the block exits cleanly; an error leaves nothing behind. A grid whose
    pixels have no size (a zero, NaN or infinite pixel size) is refused before the file is created.
    """
    transform = transform if isinstance(transform, Affine) else Affine(*tuple(transform)[:6])
    coefficients = [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f]
    if not np.isfinite(coefficients).all() or transform.determinant == 0:
        raise UserError(
            f"cannot write {path}: pixel size {transform.a:g} x {-transform.e:g} gives pixels no area on the ground "
            "(give a positive, finite pixel size)"
        )
    if legend is not None and np.dtype(dtype) not in (np.uint8, np.uint16):
        raise ValueError(f"a colour table needs uint8 or uint16 codes (see class_dtype), got {np.dtype(dtype)}")
    profile = _geotiff_profile(width, height, count, dtype, transform, crs, nodata)
    cog = max(width, height) > COG_MIN_SIDE
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(path))
        categories = stack.enter_context(atomic_path(pam_path(path))) if legend is not None else None
        # A COG keeps its overviews before the full-resolution blocks, so it cannot be written window by window:
        # the windows go to a plain tiled GeoTIFF (named after the temporary file, so its cleanup removes it
        # too) that GDAL's COG driver then copies with overviews.
        target = tmp.with_name(f"{tmp.name}.tiled.tif") if cog else tmp
        with rasterio.open(target, "w", **profile) as dst:
            for band, name in enumerate(band_names or [], start=1):
                dst.set_band_description(band, name)
            for band, unit in enumerate(units or [], start=1):
                dst.set_band_unit(band, unit)
            if tags:
                dst.update_tags(**{key: str(value) for key, value in tags.items()})
            if legend is not None:
                dst.write_colormap(1, legend_colormap(legend))
            yield dst
        if cog:
            try:
                rasterio.shutil.copy(
                    target, tmp, driver="COG", **_cog_options(dtype, categorical or legend is not None)
                )
            except RasterioIOError as err:
                raise UserError(f"cannot write {path}: {str(err).splitlines()[0]}") from None
        if categories is not None:
            categories.write_text(category_names_xml(legend), encoding="utf-8")
    if legend is None:  # what a sidecar of an earlier file at this path says (categories, statistics) is stale
        pam_path(path).unlink(missing_ok=True)


def write_geotiff(
    path: str | os.PathLike[str],
    array: np.ndarray,
    transform: Affine,
    crs: CRS | str,
    nodata: float | None = None,
    band_names: list[str] | None = None,
    tags: dict[str, Any] | None = None,
    legend: Legend | None = None,
    units: list[str] | None = None,
    categorical: bool = False,
) -> Path:
    """Write a (bands, H, W) or (H, W) array as a tiled, compressed GeoTIFF, atomically; see
    :func:`geotiff_writer` for ``legend`` (raw codes, stored as :func:`class_dtype`), ``units`` and COGs."""
    data = array[None] if array.ndim == 2 else array
    if data.ndim != 3:
        raise ValueError(f"expected a (bands, H, W) or (H, W) array, got shape {array.shape}")
    if legend is not None:
        data = data.astype(class_dtype(legend), copy=False)
    bands, height, width = data.shape
    with geotiff_writer(
        path, width, height, bands, data.dtype, transform, crs, nodata, band_names, tags, legend, units, categorical
    ) as dst:
        dst.write(data)
    return Path(path)


def align_raster(
    source_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    categorical: bool = False,
    assume_crs: str | None = None,
    tile: int = 1024,
) -> Path:
    """Resample ``source_path`` onto the grid of ``reference_path`` and write it as a GeoTIFF, tile by tile.

    Bilinear into float32 (NaN nodata) for continuous data, nearest for categorical data; see :func:`aligned_vrt`.
    ``assume_crs`` applies to whichever of the two rasters lacks a CRS.
    """
    with open_raster(reference_path, assume_crs) as reference, open_raster(source_path, assume_crs) as source:
        grid = RasterGrid.of(reference)
        with aligned_vrt(source, grid, categorical) as vrt:
            names = [desc or "" for desc in source.descriptions]
            band_names = names if any(names) else None
            profile = (grid.width, grid.height, vrt.count, vrt.dtypes[0], grid.transform, grid.crs, vrt.nodata)
            with geotiff_writer(out_path, *profile, band_names=band_names, categorical=categorical) as dst:
                for window in iter_windows(grid.height, grid.width, tile):
                    dst.write(vrt.read(window=window), window=window)
    return Path(out_path)


def check_complete(
    dataset: Any, path: str | os.PathLike[str], verify: bool = False, last_blocks_only: bool = False
) -> int:
    """Refuse a truncated raster: every block of a GeoTIFF must lie inside the file, and the last block of any
    raster must decode. ``verify`` decodes every block (a corrupt one is named). Returns the blocks checked.

    ``last_blocks_only`` looks only at where the last block of each band is stored and decodes nothing: a file
    cut short loses the blocks written last, so this cheap check (every :func:`open_raster` makes it) catches most
    truncated GeoTIFFs before any work starts.
    """
    blocks = 0
    file_size = Path(path).stat().st_size if Path(path).is_file() else None
    if dataset.driver == "GTiff" and file_size is not None:
        for band in range(1, dataset.count + 1):
            block_rows, block_cols = dataset.block_shapes[band - 1]
            n_rows, n_cols = -(-dataset.height // block_rows), -(-dataset.width // block_cols)
            if last_blocks_only:
                positions: Any = [(n_rows - 1, n_cols - 1)]
            else:
                positions = itertools.product(range(n_rows), range(n_cols))
            for y, x in positions:
                blocks += 1
                offset = dataset.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=band)
                length = dataset.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=band)
                if offset is None or length is None:
                    continue  # a sparse block, never written: it reads as nodata
                end = int(offset) + int(length)
                if end > file_size:
                    raise UserError(
                        f"{path} is truncated: band {band}, rows {y * block_rows}..{(y + 1) * block_rows}, cols "
                        f"{x * block_cols}..{(x + 1) * block_cols} is stored up to byte {end:,} but the file "
                        f"has {file_size:,} bytes"
                    )
    if last_blocks_only:
        return blocks
    windows = [window for _, window in dataset.block_windows(1)] if verify else [_last_block(dataset)]
    for window in windows:
        dataset.read(window=window)
    return max(blocks, len(windows))


def _last_block(dataset: Any) -> Window:
    block_rows, block_cols = dataset.block_shapes[0]
    row = (dataset.height - 1) // block_rows * block_rows
    col = (dataset.width - 1) // block_cols * block_cols
    return Window(col, row, min(block_cols, dataset.width - col), min(block_rows, dataset.height - row))


def raster_info(path: str | os.PathLike[str], assume_crs: str | None = None, verify: bool = False) -> dict[str, Any]:
    """What a user wants to know before chipping a raster: size, CRS, bounds (also in lon/lat), dtype, nodata.

    A truncated file is refused (:func:`check_complete`); ``verify`` decodes every block as well.
    """
    source = raster_source(path)
    with open_raster(source, assume_crs) as dataset:
        grid = RasterGrid.of(dataset)
        blocks_checked = check_complete(dataset, source.gdal_path, verify)
        return {
            "blocks_checked": blocks_checked,
            "verified": verify,
            "path": source.name,
            "driver": dataset.driver,
            "width": dataset.width,
            "height": dataset.height,
            "bands": dataset.count,
            "dtype": dataset.dtypes[0],
            "nodata": dataset.nodata,
            "crs": crs_name(dataset.crs),
            "pixel_size": [abs(dataset.transform.a), abs(dataset.transform.e)],
            "bounds": list(grid.bounds),
            "lonlat_bounds": list(lonlat_bounds(grid)),
            "block_shape": list(dataset.block_shapes[0]),
            "band_names": [desc or "" for desc in dataset.descriptions],
            "units": [unit or "" for unit in dataset.units],
            "overviews": dataset.overviews(1),
            "remote": source.remote,
            # Local GeoTIFFs only: the checks read the file's first bytes directly.
            "cog_problems": cog_problems(source.gdal_path) if dataset.driver == "GTiff" and not source.remote else None,
        }


_GHOST = re.compile(rb"GDAL_STRUCTURAL_METADATA_SIZE=(\d{6}) bytes\n")


def cog_problems(path: str | os.PathLike[str]) -> list[str]:
    """Why a local GeoTIFF is not a Cloud-Optimized GeoTIFF; an empty list when it is one.

    The checks of GDAL's ``validate_cloud_optimized_geotiff.py``, through rasterio: a raster over 512 px is
    tiled and has internal overviews; the main IFD comes first (right after GDAL's structural-metadata header),
    overview IFDs follow by decreasing size, and the image data run from the smallest overview to the full
    resolution, so a reader fetches the header in one request and any level's blocks by range.
    """
    path = require_file(path, "GeoTIFF")
    problems = []
    with rasterio.open(path) as dataset:
        if dataset.driver != "GTiff":
            return [f"{path} is a {dataset.driver} file, not a GeoTIFF"]
        n_overviews = len(dataset.overviews(1))
        if Path(f"{path}.ovr").exists():
            problems.append("its overviews are in an external .ovr file; they should be internal")
        if max(dataset.width, dataset.height) > COG_MIN_SIDE:
            if _untiled(dataset):
                problems.append(f"it is larger than {COG_MIN_SIDE} px but not tiled")
            if n_overviews == 0:
                problems.append(f"it is larger than {COG_MIN_SIDE} px but has no internal overviews")
        levels = [dataset.get_tag_item("IFD_OFFSET", "TIFF", bidx=1)]
        data_offsets = [_first_block_offset(dataset)]
        sizes = [(dataset.width, dataset.height)]
    for level in range(n_overviews):
        with rasterio.open(path, overview_level=level) as overview:
            if _untiled(overview):
                problems.append(f"overview {level} is not tiled")
            levels.append(overview.get_tag_item("IFD_OFFSET", "TIFF", bidx=1))
            data_offsets.append(_first_block_offset(overview))
            sizes.append((overview.width, overview.height))
    ifd_offsets = [int(offset) for offset in levels]
    with open(path, "rb") as handle:
        header = handle.read(1024)
    start = 16 if header[2:4] in (b"+\x00", b"\x00+") else 8  # BigTIFF's header is 16 bytes, classic TIFF's 8
    ghost = _GHOST.match(header, start)
    expected = start if ghost is None else ghost.end() + int(ghost[1])
    if ifd_offsets[0] not in (expected, expected + 1):  # + 1: IFDs start on a word boundary
        problems.append(f"the main IFD is at byte {ifd_offsets[0]}, not first after the header (byte {expected})")
    for level in range(1, len(sizes)):
        if sizes[level][0] > sizes[level - 1][0] or sizes[level][1] > sizes[level - 1][1]:
            problems.append(f"overview {level - 1} is larger than the level before it")
        if ifd_offsets[level] < ifd_offsets[level - 1]:
            problems.append(f"the IFD of overview {level - 1} comes before the IFD of the level above it")
    if data_offsets[-1] and data_offsets[-1] < ifd_offsets[-1]:
        problems.append("the first block of the smallest level comes before its IFD")
    for level in range(len(data_offsets) - 2, -1, -1):
        if data_offsets[level] and data_offsets[level] < data_offsets[level + 1]:
            what = "the full resolution" if level == 0 else f"overview {level - 1}"
            problems.append(f"the blocks of {what} come before those of overview {level}")
    return problems


def _untiled(dataset: Any) -> bool:
    """Stored in strips as wide as the raster (GDAL's validator tolerates strips up to 1024 px wide)."""
    _, block_cols = dataset.block_shapes[0]
    return block_cols == dataset.width and block_cols > 1024


def _first_block_offset(dataset: Any) -> int:
    """Where the first stored block of band 1 begins (0 when every block is sparse)."""
    block_rows, block_cols = dataset.block_shapes[0]
    for y in range(-(-dataset.height // block_rows)):
        for x in range(-(-dataset.width // block_cols)):
            offset = dataset.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1)
            if offset:
                return int(offset)
    return 0


def crs_name(crs: CRS) -> str:
    """``"EPSG:5070"`` where the CRS has an EPSG code, its WKT otherwise."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()
