"""The picture of a world (``world.png``): land cover with its legend, shaded relief, imagery and the first and last
Human Modification year, saved as a palette PNG that keeps the legend's colours exact. Matplotlib and PIL are
imported when a picture is drawn, so generating or loading a world never pays for them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from landformer.core.io import atomic_path
from landformer.core.legend import load_legend
from landformer.core.raster import open_raster
from landformer.core.viz import class_rgb, hillshade
from landformer.synth.world.files import World


def render_world(world: World, png: Path) -> Path:
    """One picture of the world: land cover with its legend, shaded relief, HM first and last year, imagery."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from PIL import Image

    def read(path: Path) -> np.ndarray:
        with open_raster(path) as dataset:
            return dataset.read()

    legend = load_legend("nlcd")
    landcover = read(world.landcover)[0]
    elevation = read(world.elevation)[0].astype(np.float64)
    first_hm, last_hm = read(world.hm[0])[0], read(world.hm[-1])[0]
    imagery = read(world.imagery).transpose(1, 2, 0)
    indices = legend.encode(landcover, unknown="nodata", source=str(world.landcover))

    shade = hillshade(elevation, world.pixel_size)
    span = np.nanmax(elevation) - np.nanmin(elevation) + 1e-9
    relief = matplotlib.colormaps["terrain"](0.2 + 0.75 * (elevation - np.nanmin(elevation)) / span)[..., :3]
    relief = relief * (0.45 + 0.55 * shade[..., None])

    fig, axes = plt.subplots(2, 3, figsize=(16.0, 11.6))
    panels = [
        (class_rgb(indices, legend), "land cover (NLCD classes)"),
        (relief, f"shaded elevation, {np.nanmin(elevation):.0f} to {np.nanmax(elevation):.0f} m"),
        (imagery, "synthetic imagery (RGB)"),
        (first_hm, f"Human Modification {world.hm_years[0]}"),
        (last_hm, f"Human Modification {world.hm_years[-1]}"),
    ]
    for ax, (image, title) in zip(axes.ravel(), panels, strict=False):
        if image.ndim == 2:
            ax.imshow(image, cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=12)
        ax.set_xticks([])
        ax.set_yticks([])
    key = axes[1, 2]
    key.axis("off")
    present = [index for index in range(legend.n_classes) if (indices == index).any()]
    handles = [Patch(color=legend.palette()[i] / 255.0, label=f"{legend.codes[i]}  {legend.names[i]}") for i in present]
    shares = {index: float((indices == index).mean()) for index in present}
    labels = [f"{handle.get_label()}  ({100 * shares[i]:.1f}%)" for handle, i in zip(handles, present, strict=True)]
    key.legend(handles=handles, labels=labels, loc="center right", fontsize=11, frameon=False, title="land cover")
    km = world.size * world.pixel_size / 1000.0
    fig.suptitle(
        f"landformer synthetic world: seed {world.seed}, {world.size} x {world.size} pixels of "
        f"{world.pixel_size:g} m ({km:.1f} km across), {world.crs}",
        fontsize=14,
    )
    fig.subplots_adjust(left=0.01, right=0.99, top=0.94, bottom=0.01, wspace=0.03, hspace=0.08)
    box = axes[1, 1].get_position()
    colorbar_axis = fig.add_axes((box.x1 + 0.006, box.y0, 0.012, box.height))
    fig.colorbar(axes[1, 1].images[0], cax=colorbar_axis, label="Human Modification")
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    plt.close(fig)
    png = Path(png)
    with atomic_path(png) as tmp:
        _save_with_palette(Image.open(buffer).convert("RGB"), legend.palette(), tmp)
    return png


def _save_with_palette(picture, exact_colours: np.ndarray, path: Path) -> None:
    """Save an RGB PIL image as a 256-colour PNG whose palette holds ``exact_colours`` unchanged.

    A palette PNG is a third the size of a true-colour one (the README picture must stay under 1 MB); the
    legend colours are put in the palette as they are, so class maps keep their exact colours.
    """
    from PIL import Image

    spare = 256 - len(exact_colours)
    adaptive = np.asarray(picture.quantize(colors=spare, method=Image.Quantize.MEDIANCUT).getpalette()[: 3 * spare])
    palette = np.concatenate([np.asarray(exact_colours, dtype=np.int64).ravel(), adaptive])
    palette_image = Image.new("P", (1, 1))
    palette_image.putpalette(palette.astype(np.uint8).tolist() + [0] * (768 - palette.size))
    picture.quantize(palette=palette_image, dither=Image.Dither.NONE).save(path, format="PNG", optimize=True)
