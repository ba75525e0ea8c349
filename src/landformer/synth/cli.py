"""``landformer synth ...``: the procedural default world and the packaged real data."""

from __future__ import annotations

import argparse
from pathlib import Path

from landformer.core.commands import add_command, add_group


def _world(args: argparse.Namespace) -> None:
    from landformer.synth.world import make_world, render_world

    world = make_world(Path(args.out), size=args.size, seed=args.seed, pixel_size=args.pixel_size)
    preview = render_world(world, world.folder / "world.png")
    print(f"elevation  {world.elevation}")
    print(f"landcover  {world.landcover}")
    for year, path in zip(world.hm_years, world.hm, strict=True):
        print(f"hm {year}    {path}")
    print(f"imagery    {world.imagery}")
    print(f"metadata   {world.folder / 'world.json'}")
    print(f"preview    {preview}")


def _packaged(args: argparse.Namespace) -> None:
    from landformer.synth.packaged import legend_path, write_packaged

    path = write_packaged(
        args.layer,
        Path(args.out),
        bbox=args.bbox,
        resolution=args.resolution,
        attribute=args.attribute,
        allow_large=args.allow_large,
    )
    print(path)
    legend = legend_path(path)
    if args.layer in ("koppen", "igbp", "countries") and legend.exists():
        print(legend)


def register(subparsers: argparse._SubParsersAction) -> None:
    from landformer.synth.packaged import COUNTRY_ATTRIBUTES, LAYERS

    group = add_group(subparsers, "synth", "build the embedded default data (procedural world, packaged real layers)")

    world = add_command(group, "world", "write a procedural world: elevation, NLCD land cover, HM 1990-2020", _world)
    world.add_argument("--out", required=True, help="folder for the GeoTIFFs, world.json and world.png")
    world.add_argument("--size", type=int, default=256, help="side of the world in pixels")
    world.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    world.add_argument("--pixel-size", type=float, default=30.0, help="pixel size in metres (EPSG:5070)")

    packaged = add_command(
        group, "packaged", "write real data shipped inside installed packages as a GeoTIFF", _packaged
    )
    packaged.add_argument(
        "layer",
        choices=LAYERS,
        help="jacksboro / topobathy: DEMs from matplotlib (jacksboro-west: the part the terrain models train on, "
        "jacksboro-east: the part they never see); altitude: pvlib's global DEM; koppen: Koppen-Geiger "
        "classes; igbp: MODIS MCD12C1 2019 IGBP land cover (0.05 degree); landmask: 1 land / 0 water; countries: "
        "Natural Earth countries rasterized",
    )
    packaged.add_argument("--out", required=True, help="GeoTIFF to write (EPSG:4326)")
    packaged.add_argument(
        "--bbox",
        type=float,
        nargs=4,
        metavar=("WEST", "SOUTH", "EAST", "NORTH"),
        help="window in degrees (required for koppen, igbp and landmask; optional for altitude and countries)",
    )
    packaged.add_argument("--resolution", type=float, default=0.1, help="countries: pixel size in degrees")
    packaged.add_argument("--attribute", choices=COUNTRY_ATTRIBUTES, default="continent", help="countries: value")
    packaged.add_argument("--allow-large", action="store_true", help="allow a bbox larger than 30 x 30 degrees")
