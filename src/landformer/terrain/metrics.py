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
"""

from __future__ import annotations

import numpy as np
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
