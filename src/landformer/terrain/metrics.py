"""DEM realism and seam statistics, and the fractal-noise baseline they are compared with.

All realism statistics are computed on tiles normalised one by one (zero mean, unit standard deviation), so
they compare the *shape* of terrain, which is what the models generate; absolute heights are a separate,
user-chosen offset and scale. For two sets of tiles:

* elevation: 1-Wasserstein distance between the pooled normalised heights (hypsometry);
* slope: 1-Wasserstein distance between pooled slope magnitudes (normalised height per pixel);
* spectrum: mean |log10| ratio of the radially averaged power spectra, over all non-zero frequency rings;
* curvature: 1-Wasserstein distance between pooled Laplacians (sum of the second differences).

Seams (:func:`seam_statistics`, :func:`seam_profile`): the mean absolute height difference between neighbouring
pixels across tile borders or an expansion seam, divided by the same mean elsewhere (ratio 1: borders look like
the interior).

Continuation of a real DEM (``terrain expand``). The expanded map ``z`` holds the original DEM at rows
``r0:r0 + h`` and columns ``c0:c0 + w``; new strips lie on any subset of its four sides (see
:func:`expansion_strips`). Each measure compares the new strips with the original DEM itself, so 1 (or 0 for the
fill excess) means "like the real terrain" whatever its relief or pixel size:

* :func:`edge_seam`: mean |dz| of the steps across the original edge and the first ``depth`` steps into a strip,
  over the same steps inside the DEM (1 = no seam; a profile shows how a seam decays);
* :func:`strip_lattice_contrast`: power at the frequencies of a ``period``-pixel lattice over the power beside
  them, in each strip, of the heights and of the step sizes (1 = no tile or token grid);
* :func:`relief_ratio`: standard deviation of heights in ``window``-pixel squares, strips over DEM (1 = as rugged);
* :func:`valley_continuation`: D8 channels crossing the original edge per km over channels crossing lines inside
  the DEM per km (1 = valleys cross the seam as often as anywhere), and the share of the edge band that lies in
  filled depressions beyond the DEM's own share (0 = the strips dam nothing);
* :func:`pits_per_km2`: strict local minima per km2 (generated terrain tends to be pitted).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import laplace, uniform_filter
from scipy.stats import wasserstein_distance


def standardize(tiles: np.ndarray) -> np.ndarray:
    """(N, S, S) tiles with zero mean and unit standard deviation each (flat tiles become zeros)."""
    tiles = np.asarray(tiles, dtype=np.float64)
    mean = tiles.mean(axis=(1, 2), keepdims=True)
    std = tiles.std(axis=(1, 2), keepdims=True)
    return (tiles - mean) / np.where(std > 0, std, 1.0)


def slopes(tiles: np.ndarray) -> np.ndarray:
    """Slope magnitudes (per pixel, central differences) of standardised tiles, pooled."""
    dz_dy, dz_dx = np.gradient(standardize(tiles), axis=(1, 2))
    return np.hypot(dz_dx, dz_dy).ravel()


def curvatures(tiles: np.ndarray) -> np.ndarray:
    """Laplacians of standardised tiles at interior pixels, pooled."""
    z = standardize(tiles)
    laplacian = z[:, :-2, 1:-1] + z[:, 2:, 1:-1] + z[:, 1:-1, :-2] + z[:, 1:-1, 2:] - 4 * z[:, 1:-1, 1:-1]
    return laplacian.ravel()


def radial_power_spectrum(tiles: np.ndarray) -> np.ndarray:
    """Mean power of standardised tiles in integer frequency rings 1 .. S/2 (cycles per tile)."""
    z = standardize(tiles)
    size = z.shape[-1]
    power = np.abs(np.fft.fft2(z)) ** 2 / size**2
    fy = np.fft.fftfreq(size) * size
    ring = np.rint(np.hypot(fy[:, None], fy[None, :])).astype(int)
    mean_power = power.mean(axis=0)
    return np.array([mean_power[ring == k].mean() for k in range(1, size // 2 + 1)])


def realism_distances(samples: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The four distances of the module docstring between two sets of (N, S, S) tiles (0 = identical)."""
    return {
        "elevation_w1": float(wasserstein_distance(standardize(samples).ravel(), standardize(reference).ravel())),
        "slope_w1": float(wasserstein_distance(slopes(samples), slopes(reference))),
        "spectrum_log10": float(
            np.abs(np.log10(radial_power_spectrum(samples)) - np.log10(radial_power_spectrum(reference))).mean()
        ),
        "curvature_w1": float(wasserstein_distance(curvatures(samples), curvatures(reference))),
    }


def spectral_exponent(tiles: np.ndarray) -> float:
    """beta of the power law P(f) ~ f^-beta fitted (least squares in log-log) to the tiles' radial spectrum."""
    spectrum = radial_power_spectrum(tiles)
    frequencies = np.arange(1, len(spectrum) + 1)
    slope, _ = np.polyfit(np.log(frequencies), np.log(spectrum), 1)
    return float(-slope)


def fractal_noise(count: int, size: int, beta: float, seed: int) -> np.ndarray:
    """(count, size, size) Gaussian fields with power spectrum f^-beta (spectral synthesis), standardised."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    frequency = np.hypot(fy, fx)
    amplitude = np.where(frequency > 0, frequency, np.inf) ** (-beta / 2)
    spectra = rng.standard_normal((count, *frequency.shape)) + 1j * rng.standard_normal((count, *frequency.shape))
    fields = np.fft.irfft2(spectra * amplitude, s=(size, size))
    return standardize(fields)


def seam_statistics(elevation: np.ndarray, period: int, token: int) -> dict[str, float]:
    """Gradient statistics across tile borders (every ``period`` pixels, both axes) against the interior.

    ``ratio_all``: border mean |dz| over the mean at every other offset; ``ratio_token_borders``: over the mean
    at the other token borders (every ``token`` pixels), which shares any pattern the decoder has at token
    edges and so isolates the tile seams themselves.
    """
    z = np.asarray(elevation, dtype=np.float64)
    steps = [np.abs(np.diff(z, axis=1)), np.abs(np.diff(z, axis=0)).T]
    border, interior, token_edge = [], [], []
    for step in steps:
        positions = np.arange(1, step.shape[1] + 1)  # difference k lies between pixels k-1 and k
        is_border = positions % period == 0
        is_token = (positions % token == 0) & ~is_border
        border.append(step[:, is_border].ravel())
        interior.append(step[:, ~is_border].ravel())
        token_edge.append(step[:, is_token].ravel())
    border_mean = float(np.concatenate(border).mean())
    interior_mean = float(np.concatenate(interior).mean())
    token_mean = float(np.concatenate(token_edge).mean())
    return {
        "border_mean_abs_step": border_mean,
        "interior_mean_abs_step": interior_mean,
        "token_border_mean_abs_step": token_mean,
        "ratio_all": border_mean / interior_mean,
        "ratio_token_borders": border_mean / token_mean,
    }


def seam_profile(elevation: np.ndarray, column: int, width: int, period: int = 1) -> dict[str, float]:
    """Mean |dz| across one vertical seam (between columns ``column - 1`` and ``column``) against the mean at the
    steps ``period``, ``2 * period``, ... columns away, up to ``width`` on either side.

    With ``period`` the token side in pixels the comparison is with other token borders, which share whatever
    pattern the decoder leaves at token edges; the seam itself always lies on one.
    """
    step = np.abs(np.diff(np.asarray(elevation, dtype=np.float64), axis=1))
    seam = float(step[:, column - 1].mean())
    offsets = [offset for offset in range(period, width + 1, period)]
    around = [column - 1 + sign * offset for offset in offsets for sign in (-1, 1)]
    around = [index for index in around if 0 <= index < step.shape[1]]
    nearby = float(step[:, around].mean())
    return {"seam_mean_abs_step": seam, "nearby_mean_abs_step": nearby, "ratio": seam / nearby}


def lattice_contrast(elevation: np.ndarray, period: int, reach: int = 2) -> float:
    """Power of a map at the frequencies of a ``period``-pixel lattice over the power right beside them.

    The lattice frequencies are the 2-D harmonics (a, b) * side / period with a, b in -1, 0, 1 (not both 0); the
    comparison is the mean power of the other frequencies up to ``reach`` bins around each. A pattern locked to
    the tile grid (every tile growing the same shape in the same place) puts power on exactly those
    frequencies, so the contrast grows well above 1; terrain without one gives about 1.
    """
    z = np.asarray(elevation, dtype=np.float64)
    side = (min(z.shape) // period) * period
    if side < 2 * period:
        raise ValueError(f"a lattice of {period} px needs a map of at least {2 * period} px, got {z.shape}")
    z = z[:side, :side]
    power = np.abs(np.fft.fft2((z - z.mean()) / (z.std() or 1.0))) ** 2
    k = side // period
    lattice = {((a * k) % side, (b * k) % side) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)}
    around = (
        {
            ((row + dy) % side, (col + dx) % side)
            for row, col in lattice
            for dy in range(-reach, reach + 1)
            for dx in range(-reach, reach + 1)
        }
        - lattice
        - {(0, 0)}
    )
    on = np.mean([power[index] for index in lattice])
    beside = np.mean([power[index] for index in around])
    return float(on / beside)


# Continuation of a real DEM: the original occupies rows r0:r0 + h, columns c0:c0 + w of the expanded map.


def _check_original(z: np.ndarray, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"an expanded DEM is one 2-D array, got shape {z.shape}")
    if h < 1 or w < 1 or r0 < 0 or c0 < 0 or r0 + h > z.shape[0] or c0 + w > z.shape[1]:
        raise ValueError(f"the original window rows {r0}:{r0 + h}, columns {c0}:{c0 + w} is not inside {z.shape}")
    return z


def expansion_strips(shape: tuple[int, int], r0: int, c0: int, h: int, w: int) -> dict[str, tuple[slice, slice]]:
    """The new strips around the original window as non-overlapping rectangles, only the non-empty ones.

    Top and bottom strips span the full width (corners included), left and right strips the original's rows, so
    together they cover every new pixel once.
    """
    height, width = shape
    strips = {
        "top": (slice(0, r0), slice(0, width)),
        "bottom": (slice(r0 + h, height), slice(0, width)),
        "left": (slice(r0, r0 + h), slice(0, c0)),
        "right": (slice(r0, r0 + h), slice(c0 + w, width)),
    }
    return {side: box for side, box in strips.items() if box[0].stop > box[0].start and box[1].stop > box[1].start}


def _outward_steps(z: np.ndarray, r0: int, c0: int, h: int, w: int, side: str) -> np.ndarray:
    """(distance, position) |dz| perpendicular to one original edge: row d is the step between the pixels d and
    d + 1 px outside the original's last row or column (d = 0 crosses the edge), along the original's extent."""
    if side == "top":
        outward = z[r0::-1, c0 : c0 + w]
    elif side == "bottom":
        outward = z[r0 + h - 1 :, c0 : c0 + w]
    elif side == "left":
        outward = z[r0 : r0 + h, c0::-1].T
    else:
        outward = z[r0 : r0 + h, c0 + w - 1 :].T
    return np.abs(np.diff(outward, axis=0))


def edge_seam(z: np.ndarray, r0: int, c0: int, h: int, w: int, depth: int = 8) -> dict[str, Any]:
    """How much steeper the terrain is across the original DEM's edge than inside the DEM.

    For each side with a new strip: the mean |dz| of the steps perpendicular to the edge, from the step across it
    (distance 0) to the step ``depth`` px out, over the mean |dz| of the steps of the same axis inside the original
    at least ``depth`` px from its edges. 1 means the join is as smooth as the real terrain; 3 is the visible
    cliff of a model that ignores its context. ``profile`` is the ratio at each distance 0 .. ``depth``, so a seam
    that decays over a few pixels shows as a falling curve. The overall values weight the sides by their steps.
    Target for ``terrain expand``: ``ratio`` <= 1.15.
    """
    z = _check_original(z, r0, c0, h, w)
    if h <= 2 * depth + 1 or w <= 2 * depth + 1:
        raise ValueError(f"a seam {depth} px deep needs an original wider than {2 * depth + 1} px, got {h} x {w}")
    inner = z[r0 + depth : r0 + h - depth, c0 + depth : c0 + w - depth]
    interior = {
        "rows": float(np.abs(np.diff(inner, axis=0)).mean()),
        "cols": float(np.abs(np.diff(inner, axis=1)).mean()),
    }
    sides: dict[str, dict[str, Any]] = {}
    for side in expansion_strips(z.shape, r0, c0, h, w):
        steps = _outward_steps(z, r0, c0, h, w, side)[: depth + 1]
        reference = interior["rows"] if side in ("top", "bottom") else interior["cols"]
        sides[side] = {
            "ratio": float(steps.mean() / reference),
            "profile": (steps.mean(axis=1) / reference).tolist(),
            "edge_mean_abs_step": float(steps.mean()),
            "interior_mean_abs_step": reference,
            "steps": int(steps.size),
        }
    if not sides:
        raise ValueError("the expanded map has no new strip around the original window")
    total = sum(side["steps"] for side in sides.values())
    profile = np.zeros(depth + 1)
    weight = np.zeros(depth + 1)
    for side in sides.values():
        count = len(side["profile"])
        profile[:count] += np.array(side["profile"]) * side["steps"] / count
        weight[:count] += side["steps"] / count
    return {
        "ratio": sum(side["ratio"] * side["steps"] for side in sides.values()) / total,
        "profile": (profile[weight > 0] / weight[weight > 0]).tolist(),
        "sides": sides,
    }


def _remove_end_ramp(lines: np.ndarray) -> np.ndarray:
    """Lines (last axis) minus the straight line through their two ends, so their periodic extension has no jump
    and the jump's 1/f leakage does not swamp the spectrum."""
    ramp = np.linspace(0.0, 1.0, lines.shape[-1])
    return lines - lines[..., :1] - (lines[..., -1:] - lines[..., :1]) * ramp


def _periodic_component(u: np.ndarray) -> np.ndarray:
    """Moisan's periodic component of images (last two axes; periodic plus smooth decomposition, 2011): the images
    without the smooth part that their border jumps imply, so their spectra have no cross of leakage on the axes."""
    height, width = u.shape[-2:]
    boundary = np.zeros_like(u)
    boundary[..., 0, :] += u[..., -1, :] - u[..., 0, :]
    boundary[..., -1, :] -= u[..., -1, :] - u[..., 0, :]
    boundary[..., :, 0] += u[..., :, -1] - u[..., :, 0]
    boundary[..., :, -1] -= u[..., :, -1] - u[..., :, 0]
    cos_y = np.cos(2 * np.pi * np.fft.fftfreq(height))[:, None]
    cos_x = np.cos(2 * np.pi * np.fft.fftfreq(width))[None, :]
    denominator = 2 * cos_y + 2 * cos_x - 4
    denominator[0, 0] = 1.0
    smooth = np.fft.fft2(boundary) / denominator
    smooth[..., 0, 0] = 0.0
    periodic = u - np.real(np.fft.ifft2(smooth))
    return periodic - periodic.mean(axis=(-2, -1), keepdims=True)


def _whiten(power: np.ndarray, frequency: np.ndarray) -> np.ndarray:
    """Power times frequency^beta, beta fitted in log-log over the non-zero frequencies: terrain's steep spectrum
    made flat, so the mean of the bins beside a frequency is not biased high by the lower ones among them."""
    nonzero = (frequency > 0) & (power > 0)
    if nonzero.sum() < 2:  # a flat map: nothing to whiten
        return power
    slope, _ = np.polyfit(np.log(frequency[nonzero]), np.log(power[nonzero]), 1)
    return power * np.where(frequency > 0, frequency, 1.0) ** -slope


def _line_lattice_contrast(lines: np.ndarray, period: int, reach: int) -> float:
    """Mean over the harmonics m * n / period (m >= 1, up to Nyquist) of the line-averaged, whitened power there
    over the power of the ``reach`` bins either side: anything repeating every ``period`` px along the lines,
    whatever it does across them, raises it."""
    length = (lines.shape[1] // period) * period
    power = (np.abs(np.fft.rfft(_remove_end_ramp(lines[:, :length]), axis=1)) ** 2).mean(axis=0)
    power = _whiten(power, np.arange(power.size, dtype=np.float64))
    cycles = length // period
    harmonics = np.arange(cycles, length // 2 + 1, cycles)
    ratios = []
    for frequency in harmonics:
        beside = [
            frequency + offset
            for offset in range(-reach, reach + 1)
            if offset and 0 < frequency + offset <= length // 2 and (frequency + offset) % cycles
        ]
        ratios.append(power[frequency] / max(power[beside].mean(), np.finfo(float).tiny))
    return float(np.mean(ratios))


# Enough spectra that about this many independent lattice bins are averaged: the contrast of terrain without a
# grid then stays within about 1 +- 0.1, whatever the period.
_LATTICE_BINS = 400


def _lattice_blocks(size: tuple[int, int], period: int, count: int, min_periods: int) -> tuple[int, ...] | None:
    """(rows, cols, height, width) of a grid of at least ``count`` blocks, sides multiples of ``period`` and at
    least ``min_periods`` periods, whose smaller side is as long as possible; None when no block fits."""
    best: tuple[tuple[int, int], tuple[int, ...]] | None = None
    for rows in range(1, count + 1):
        cols = -(-count // rows)
        height = (size[0] // rows // period) * period
        width = (size[1] // cols // period) * period
        if min(height, width) >= min_periods * period:
            key = (min(height, width), height * width * rows * cols)
            if best is None or key > best[0]:
                best = (key, (rows, cols, height, width))
    return None if best is None else best[1]


def _grid_lattice_contrast(z: np.ndarray, period: int, reach: int, blocks: tuple[int, ...]) -> float:
    """Mean over the 2-D lattice frequencies (a, b) * size / period (not both 0, up to Nyquist) of the power there
    over the mean power of the other bins in a (2 reach + 1)^2 box around it, with the power averaged over a grid
    of blocks (Welch) and whitened: a shape that repeats in every tile concentrates its power on exactly these bins."""
    rows, cols, height, width = blocks
    tiles = z[: rows * height, : cols * width].reshape(rows, height, cols, width).transpose(0, 2, 1, 3)
    power = (np.abs(np.fft.fft2(_periodic_component(tiles.reshape(-1, height, width)))) ** 2).mean(axis=0)
    power = _whiten(power, np.hypot(np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :]))
    harmonics = np.arange(-(period // 2), period // 2 + 1)
    lattice = np.zeros(power.shape, dtype=bool)
    lattice[np.ix_((harmonics * (height // period)) % height, (harmonics * (width // period)) % width)] = True
    lattice[0, 0] = False
    others = ~lattice
    others[0, 0] = False
    box = 2 * reach + 1
    beside = uniform_filter(power * others, box, mode="wrap") / np.maximum(
        uniform_filter(others.astype(np.float64), box, mode="wrap"), 1e-12
    )
    return float((power[lattice] / np.maximum(beside[lattice], np.finfo(float).tiny)).mean())


def rectangle_lattice_contrast(
    patch: np.ndarray, period: int, reach: int = 2, min_periods: int = 3
) -> dict[str, float] | None:
    """Lattice contrast of one rectangle at one period, of its shapes (``shape``) and its step sizes (``steps``).

    ``shape``: a pattern repeated in every ``period``-pixel tile puts power on the 2-D lattice frequencies of the
    heights and of their Laplacian alike; the Laplacian is what is measured, because a block cut from smooth
    terrain leaks the power of its slope breaks at the block edges along the frequency axes, where half the
    lattice bins lie: measured on heights, fractal noise with a spectral slope of -4 read 1.4-1.7 at a 4 px
    period and the real Jacksboro DEM 1.2-1.5, on the Laplacian both read 1 +- 0.1. The power is averaged over
    as many blocks (sides multiples of the period) as it takes to average about 400 independent lattice bins, so
    that terrain without a grid reads 1 +- 0.1 whatever the period (a rectangle with no room for such blocks:
    lines along its long axis). ``steps``: |dz| along each axis that holds
    ``min_periods`` periods, line-averaged along that axis; tile or token borders that are steeper (or smoother)
    than the rest repeat every ``period`` px there even when the heights do not (random heights per tile put no
    power on the lattice of the heights). Spectra are whitened (a fitted power law divided out) so the bins beside
    a frequency are a fair reference for it, and ratios of powers of one map need no standardising.
    ``contrast`` is the larger of the two; about 1 for terrain without a grid. None when neither axis has room.
    """
    patch = np.asarray(patch, dtype=np.float64)
    long_enough = [patch.shape[axis] - 1 >= min_periods * period for axis in (0, 1)]
    if not any(long_enough):
        return None
    curvature = laplace(patch, mode="reflect")  # the patch's own size, so blocks as large as the heights allow
    blocks = _lattice_blocks(curvature.shape, period, -(-2 * _LATTICE_BINS // period**2), min_periods)
    if blocks is not None:
        shape = _grid_lattice_contrast(curvature, period, reach, blocks)
    else:
        shape = _line_lattice_contrast(curvature if long_enough[1] else curvature.T, period, reach)
    steps = []
    if long_enough[1]:
        steps.append(_line_lattice_contrast(np.abs(np.diff(patch, axis=1)), period, reach))
    if long_enough[0]:
        steps.append(_line_lattice_contrast(np.abs(np.diff(patch, axis=0)).T, period, reach))
    step = float(np.mean(steps))
    return {"shape": shape, "steps": step, "contrast": max(shape, step)}


def strip_lattice_contrast(
    z: np.ndarray, r0: int, c0: int, h: int, w: int, periods: Sequence[int], reach: int = 2
) -> dict[str, Any]:
    """Whether the new strips carry a tile or token grid: :func:`rectangle_lattice_contrast` of each strip (see
    :func:`expansion_strips`) at each period (the tile and token sizes in px).

    Per period, ``contrast`` is the strips' mean weighted by their pixels (strips with no room for three periods
    are left out); the top-level ``contrast`` is the worst period. About 1: no grid (fractal noise with spectral
    slopes -1.5 to -4 and bands of the real Jacksboro DEM read 0.86-1.11 at 4, 16 and 32 px; only smoother noise,
    slope -5, still reads up to 1.6 at 4 px); 1.5 and up: a clear grid. Target for ``terrain expand``: <= 1.2.
    """
    z = _check_original(z, r0, c0, h, w)
    strips = expansion_strips(z.shape, r0, c0, h, w)
    by_period: dict[str, dict[str, Any]] = {}
    for period in periods:
        sides: dict[str, dict[str, float]] = {}
        for side, box in strips.items():
            measured = rectangle_lattice_contrast(z[box], period, reach)
            if measured is not None:
                sides[side] = {**measured, "pixels": float(z[box].size)}
        pixels = sum(side["pixels"] for side in sides.values())
        contrast = sum(side["contrast"] * side["pixels"] for side in sides.values()) / pixels if pixels else np.nan
        by_period[str(period)] = {"contrast": float(contrast), "sides": sides}
    measured = [entry["contrast"] for entry in by_period.values() if np.isfinite(entry["contrast"])]
    return {"contrast": float(max(measured)) if measured else float("nan"), "periods": by_period}


def _square_stds(patch: np.ndarray, window: int, from_bottom: bool, from_right: bool) -> np.ndarray:
    """Standard deviations of the whole window x window squares of a patch, tiled from the chosen corner."""
    rows, cols = (patch.shape[0] // window) * window, (patch.shape[1] // window) * window
    patch = patch[patch.shape[0] - rows :] if from_bottom else patch[:rows]
    patch = patch[:, patch.shape[1] - cols :] if from_right else patch[:, :cols]
    squares = patch.reshape(rows // window, window, cols // window, window)
    return squares.std(axis=(1, 3)).ravel()


def relief_ratio(z: np.ndarray, r0: int, c0: int, h: int, w: int, window: int = 32) -> dict[str, Any]:
    """Relief of the new strips at the DEM's own scale over the DEM's: the mean standard deviation of heights in
    non-overlapping ``window`` x ``window`` squares, strips over original.

    1 means the strips are as rugged as the real terrain at that scale; 0.26 was the low-relief mottle of an early
    model (7.3 m against 27.8 m). Squares are tiled outward from the original edge; a strip thinner than ``window``
    has none (ratio NaN) and is left out of the overall ratio, which pools all strip squares.
    Target for ``terrain expand``: 0.7 .. 1.3.
    """
    z = _check_original(z, r0, c0, h, w)
    original = _square_stds(z[r0 : r0 + h, c0 : c0 + w], window, False, False)
    if original.size == 0:
        raise ValueError(f"relief in {window} px squares needs an original of at least {window} px, got {h} x {w}")
    reference = float(original.mean())
    sides: dict[str, dict[str, float]] = {}
    pooled = []
    for side, box in expansion_strips(z.shape, r0, c0, h, w).items():
        stds = _square_stds(z[box], window, from_bottom=side == "top", from_right=side == "left")
        pooled.append(stds)
        relief = float(stds.mean()) if stds.size else float("nan")
        sides[side] = {
            "relief": relief,
            "ratio": relief / reference if reference else np.inf,
            "squares": float(stds.size),
        }
    strips = np.concatenate(pooled) if pooled else np.zeros(0)
    return {
        "ratio": float(strips.mean()) / (reference or np.nan) if strips.size else float("nan"),
        "original_relief": reference,
        "sides": sides,
    }


# D8 drainage on depression-filled terrain.

_D8_ROWS = np.array([-1, -1, -1, 0, 0, 1, 1, 1])
_D8_COLS = np.array([-1, 0, 1, -1, 1, -1, 0, 1])
D8_STEPS = tuple(zip(_D8_ROWS.tolist(), _D8_COLS.tolist(), strict=True))  # (row, column) steps to the 8 neighbours


@dataclass(frozen=True)
class Drainage:
    """D8 drainage of a DEM: its ``heights``, the ``filled`` heights (depressions raised to their spill level),
    ``receivers`` (flat index of the cell each cell drains to, -1 where water leaves the map) and ``accumulation``
    (the number of cells draining through each cell, itself included), all (H, W) but ``receivers`` (H * W)."""

    heights: np.ndarray
    filled: np.ndarray
    receivers: np.ndarray
    accumulation: np.ndarray

    @property
    def fill_depth(self) -> np.ndarray:
        """How deep each cell lies under the water of a filled depression (0 outside depressions)."""
        return self.filled - self.heights


def priority_flood(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill every depression to its spill level (Priority-Flood, Barnes, Lehman and Mulla 2014, with their plain
    queue for cells in pits) and return the filled heights and, for every cell, the flat index of the cell it was
    flooded from (-1 on the map border, which drains off the map).

    Flooding grows inward from the border, lowest level first and breadth-first from all cells of a level at once,
    so following these links across a flat (a filled pit or a level plain) leads to its nearest outlet by a
    shortest path: they resolve D8 directions where no neighbour is lower.
    Heights are replaced by their rank so the heap holds plain integers (rank * cells + index), which keeps a
    1000 x 1000 map to a few seconds of pure Python.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or min(z.shape) < 1:
        raise ValueError(f"priority_flood needs a 2-D array, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("priority_flood needs finite heights (fill or mask nodata first)")
    height, width = z.shape
    levels, rank = np.unique(z, return_inverse=True)
    padded_width = width + 2
    cells = (height + 2) * padded_width
    padded_rank = np.full((height + 2, padded_width), -1, dtype=np.int64)
    padded_rank[1:-1, 1:-1] = rank.reshape(height, width)
    level = padded_rank.ravel().tolist()
    closed = (padded_rank < 0).ravel().tolist()
    parent = [-1] * cells
    border = np.zeros((height + 2, padded_width), dtype=bool)
    border[1:-1, 1:-1] = True
    border[2:-2, 2:-2] = False
    heap = [level[index] * cells + index for index in np.flatnonzero(border).tolist()]
    heapq.heapify(heap)
    for key in heap:
        closed[key % cells] = True
    offsets = [int(dr * padded_width + dc) for dr, dc in zip(_D8_ROWS, _D8_COLS, strict=True)]
    pits: deque[int] = deque()
    pop, push, pit_pop, pit_push = heapq.heappop, heapq.heappush, pits.popleft, pits.append
    while heap or pits:
        if not pits:
            lowest = heap[0] // cells
            while heap and heap[0] // cells == lowest:  # every cell at this level floods outward at once
                pit_push(pop(heap) % cells)
        cell = pit_pop()
        here = level[cell]
        for offset in offsets:
            neighbour = cell + offset
            if closed[neighbour]:
                continue
            closed[neighbour] = True
            parent[neighbour] = cell
            if level[neighbour] <= here:
                level[neighbour] = here
                pit_push(neighbour)
            else:
                push(heap, level[neighbour] * cells + neighbour)
    filled = levels[np.asarray(level, dtype=np.int64).reshape(height + 2, padded_width)[1:-1, 1:-1]]
    padded_parent = np.asarray(parent, dtype=np.int64).reshape(height + 2, padded_width)[1:-1, 1:-1]
    parent_rows, parent_cols = np.divmod(padded_parent, padded_width)
    flat_parent = np.where(padded_parent >= 0, (parent_rows - 1) * width + (parent_cols - 1), -1)
    return filled, flat_parent.ravel()


def fill_depressions(z: np.ndarray) -> np.ndarray:
    """Heights with every depression (a cell from which no path leads down or level to the border) raised to its
    spill level; other cells keep their height."""
    return priority_flood(z)[0]


def d8_receivers(filled: np.ndarray, flood_parent: np.ndarray) -> np.ndarray:
    """Flat index of the steepest-descent D8 neighbour (drop over distance) of each cell of a filled DEM; where no
    neighbour is lower, the cell it was flooded from (which leads across flats to their outlet); -1 off the map.

    The links never loop: a steepest-descent link goes strictly down, a flood link stays level and goes to a cell
    flooded earlier.
    """
    height, width = filled.shape
    padded = np.pad(filled, 1, constant_values=np.inf)
    best_drop = np.zeros(filled.shape)
    best = np.full(filled.shape, -1, dtype=np.int64)
    rows, cols = np.mgrid[0:height, 0:width]
    for dr, dc in zip(_D8_ROWS, _D8_COLS, strict=True):
        drop = (filled - padded[1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width]) / np.hypot(dr, dc)
        steeper = drop > best_drop
        best_drop = np.where(steeper, drop, best_drop)
        best = np.where(steeper, (rows + dr) * width + cols + dc, best)
    return np.where(best >= 0, best, flood_parent.reshape(height, width)).ravel()


def flow_accumulation(receivers: np.ndarray) -> np.ndarray:
    """Number of cells draining through each cell (itself included) for acyclic receiver links (-1: outlet),
    processed in topological order, one vectorised wave of cells whose donors are all done at a time."""
    receivers = np.asarray(receivers, dtype=np.int64).ravel()
    accumulation = np.ones(receivers.size)
    has_receiver = receivers >= 0
    pending = np.bincount(receivers[has_receiver], minlength=receivers.size)
    wave = np.flatnonzero(pending == 0)
    done = 0
    while wave.size:
        done += wave.size
        downstream = receivers[wave]
        keep = downstream >= 0
        wave, downstream = wave[keep], downstream[keep]
        np.add.at(accumulation, downstream, accumulation[wave])
        np.subtract.at(pending, downstream, 1)
        wave = np.unique(downstream[pending[downstream] == 0])
    if done != receivers.size:
        raise ValueError("the receiver links hold a loop")
    return accumulation


def d8_drainage(z: np.ndarray) -> Drainage:
    """Fill depressions (:func:`priority_flood`), route each cell to its D8 receiver and accumulate the flow."""
    heights = np.asarray(z, dtype=np.float64)
    filled, flood_parent = priority_flood(heights)
    receivers = d8_receivers(filled, flood_parent)
    return Drainage(heights, filled, receivers, flow_accumulation(receivers).reshape(heights.shape))


def _line_crossings(drainage: Drainage, channel_cells: float, across_rows: bool, span: tuple[int, int]) -> np.ndarray:
    """Channel links crossing each line between neighbouring rows (``across_rows``) or columns: entry k counts the
    links from a cell draining ``channel_cells`` or more that join row (column) k to k + 1, their source within
    ``span`` along the line."""
    height, width = drainage.heights.shape
    sources = np.flatnonzero((drainage.accumulation.ravel() >= channel_cells) & (drainage.receivers >= 0))
    targets = drainage.receivers[sources]
    source_at, target_at = np.divmod(sources, width), np.divmod(targets, width)
    across, along = (0, 1) if across_rows else (1, 0)
    crossing = source_at[across] != target_at[across]
    inside = (source_at[along] >= span[0]) & (source_at[along] < span[1])
    line = np.minimum(source_at[across], target_at[across])[crossing & inside]
    return np.bincount(line, minlength=height if across_rows else width)


def valley_continuation(
    z: np.ndarray,
    r0: int,
    c0: int,
    h: int,
    w: int,
    channel_cells: float = 100,
    depth: int = 8,
    pixel_size_m: float = 1.0,
    reference_margin: int | None = None,
) -> dict[str, Any]:
    """Whether valleys run on across the original DEM's edge, from D8 drainage of the depression-filled map.

    A channel is a cell draining at least ``channel_cells`` cells. ``crossing_ratio``: channel links crossing the
    original edge per km of edge, over channel links crossing the lines parallel to that edge inside the original
    DEM (at least ``depth`` px from its edges) per km of line, both in the drainage of the whole expanded map so
    that catchments reach across the edge alike. 1: valleys cross the seam as often as they cross any line of the
    real terrain; well below 1: the strips stop, dam or ignore them. A dam can still spill across the edge, so read
    it with ``fill_excess``: the share of the band ``depth`` px either side of the edge that lies under filled
    depressions, minus the same share inside the original DEM drained on its own, which a dam's pond cannot reach
    (0: the strips pond no more water than the real terrain; 0.3: 30 % more of the edge band is dammed). Overall
    values pool the sides (the crossing ratio as observed over expected crossings); ``pixel_size_m`` only scales
    the per-km densities (with the default 1 they read per 1000 px).
    """
    z = _check_original(z, r0, c0, h, w)
    if h <= 2 * depth + 1 or w <= 2 * depth + 1:
        raise ValueError(f"lines {depth} px inside need an original wider than {2 * depth + 1} px, got {h} x {w}")
    strips = expansion_strips(z.shape, r0, c0, h, w)
    if not strips:
        raise ValueError("the expanded map has no new strip around the original window")
    expanded = d8_drainage(z)
    dem = z[r0 : r0 + h, c0 : c0 + w]
    # Drained on its own, the DEM's border is all outlets: hollows near it drain that would pond behind a strip.
    # So the reference is taken at least ``reference_margin`` px inside (give the strip width, so outlets lie as
    # far from the reference as the map's outer edge lies from the seam; default ``depth``).
    margin = depth if reference_margin is None else max(int(reference_margin), depth)
    if h <= 2 * margin + 1 or w <= 2 * margin + 1:
        margin = depth
    dem_fill_depth = (fill_depressions(dem) - dem)[margin : h - margin, margin : w - margin]
    km_per_px = pixel_size_m / 1000.0

    crossings_per_line, interior_density = {}, {}
    for across_rows, start, extent, span in ((True, r0, h, (c0, c0 + w)), (False, c0, w, (r0, r0 + h))):
        crossings_per_line[across_rows] = _line_crossings(expanded, channel_cells, across_rows, span)
        inside = crossings_per_line[across_rows][start + depth : start + extent - depth - 1]
        interior_density[across_rows] = float(inside.mean()) / ((span[1] - span[0]) * km_per_px)
    interior_fill = float((dem_fill_depth > 0).mean())

    edge_line = {"top": r0 - 1, "bottom": r0 + h - 1, "left": c0 - 1, "right": c0 + w - 1}
    band_mask = np.zeros(z.shape, dtype=bool)
    sides: dict[str, dict[str, float]] = {}
    observed = expected = 0.0
    for side in strips:
        across_rows = side in ("top", "bottom")
        length = w if across_rows else h
        crossings = int(crossings_per_line[across_rows][edge_line[side]])
        reference = interior_density[across_rows]
        line = edge_line[side] + 1
        if across_rows:
            band = (slice(max(line - depth, 0), line + depth), slice(c0, c0 + w))
        else:
            band = (slice(r0, r0 + h), slice(max(line - depth, 0), line + depth))
        band_mask[band] = True
        fill_fraction = float((expanded.fill_depth[band] > 0).mean())
        sides[side] = {
            "crossings": float(crossings),
            "edge_crossings_per_km": crossings / (length * km_per_px),
            "interior_crossings_per_km": reference,
            "crossing_ratio": crossings / (length * km_per_px) / reference if reference else float("nan"),
            "fill_fraction_edge": fill_fraction,
            "fill_excess": fill_fraction - interior_fill,
            "fill_depth_edge": float(expanded.fill_depth[band].mean()),
        }
        observed += crossings
        expected += reference * length * km_per_px
    edge_fill = float((expanded.fill_depth[band_mask] > 0).mean())
    edge_km = sum(h if side in ("left", "right") else w for side in strips) * km_per_px
    return {
        "crossing_ratio": observed / expected if expected else float("nan"),
        "edge_crossings_per_km": observed / edge_km,
        "interior_crossings_per_km": expected / edge_km,
        "fill_excess": edge_fill - interior_fill,
        "fill_fraction_edge": edge_fill,
        "fill_fraction_interior": interior_fill,
        "fill_depth_edge": float(expanded.fill_depth[band_mask].mean()),
        "fill_depth_interior": float(dem_fill_depth.mean()),
        "sides": sides,
    }


def pits_per_km2(z: np.ndarray, pixel_size_m: float) -> float:
    """Strict local minima (lower than all eight neighbours) per km2, over the cells that have eight neighbours.

    Real terrain drains and has few; generated terrain with pit artefacts has many. Compare the new strips with
    the real DEM at the same pixel size (target for ``terrain expand``: at most 2x the real DEM's).
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or min(z.shape) < 3:
        raise ValueError(f"pits need a 2-D map of at least 3 x 3 px, got shape {z.shape}")
    height, width = z.shape
    centre = z[1:-1, 1:-1]
    pit = np.ones(centre.shape, dtype=bool)
    for dr, dc in zip(_D8_ROWS, _D8_COLS, strict=True):
        pit &= centre < z[1 + dr : height - 1 + dr, 1 + dc : width - 1 + dc]
    area_km2 = centre.size * (pixel_size_m / 1000.0) ** 2
    return float(pit.sum() / area_km2)
