"""``landformer data ...``: turning rasters into training data (chips), aligning covariates, inspecting files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from landformer.core.chips import ChipConfig
from landformer.core.commands import add_command, add_config_flags, add_group, recipe_overrides
from landformer.core.config import apply_overrides, from_dict, read_yaml_mapping
from landformer.core.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    group = add_group(subparsers, "data", "prepare training data from rasters (chips, legends)")
    _register_chips(group)

    info = add_command(group, "info", "describe a raster (size, CRS, bounds, dtype) or a chip file", run_info)
    info.add_argument("path", type=Path, help="a raster GDAL reads, or a chip file (.npz)")
    info.add_argument("--assume-crs", default=None, help="CRS for a raster that carries none, e.g. EPSG:5070")
    info.add_argument(
        "--verify",
        action="store_true",
        help="decode every block of the raster (reads it whole); without it a truncated file is still caught",
    )

    align = add_command(group, "align", "resample a raster onto the grid of a reference raster", run_align)
    align.add_argument("source", type=Path, help="raster to resample, e.g. a DEM")
    align.add_argument("--like", type=Path, required=True, help="reference raster whose grid the output takes")
    align.add_argument("--out", type=Path, required=True, help="output GeoTIFF")
    align.add_argument("--categorical", action="store_true", help="nearest neighbour (class codes) instead of bilinear")
    align.add_argument("--assume-crs", default=None, help="CRS for whichever raster carries none")


def _register_chips(group: argparse._SubParsersAction) -> None:
    parser = add_command(
        group, "chips", "cut square training chips from a class raster (+ aligned covariates)", run_chips
    )
    parser.add_argument(
        "class_raster", nargs="?", type=Path, default=None, help="class raster (NLCD, CORINE, ...); GDAL formats"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="chip file to write (.npz); a .json sidecar goes beside"
    )
    # The ChipConfig fields argparse cannot take as plain options: repeatable flags and one choice of two.
    parser.add_argument(
        "--covariate",
        dest="covariates",
        action="append",
        type=Path,
        default=None,
        help="continuous raster aligned onto the class grid as extra channels, e.g. a DEM (repeatable)",
    )
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--count", type=int, default=None, help="number of random chips (default: 1000)")
    sampling.add_argument("--stride", type=int, default=None, help="regular grid of chips with this step in pixels")
    parser.add_argument(
        "--max-class-fraction",
        action="append",
        default=None,
        metavar="CODE=FRACTION",
        help="drop chips whose share of pixels of raw class CODE exceeds FRACTION, e.g. 0=0.5 keeps IGBP chips "
        "that are at least half land (repeatable)",
    )
    # Unset flags leave no value, so a --config file's values stand.
    add_config_flags(parser, ChipConfig)
    parser.add_argument("--config", type=Path, default=None, help="YAML file of chip settings; flags override it")


def chip_config_from_args(args: argparse.Namespace) -> ChipConfig:
    """A ChipConfig from ``--config`` (if any) with every flag the user gave on top."""
    data: dict[str, Any] = read_yaml_mapping(args.config) if args.config is not None else {}
    if args.count is not None or args.stride is not None:  # one sampling mode on the command line replaces the file's
        data.pop("count", None)
        data.pop("stride", None)
    apply_overrides(data, recipe_overrides(args), "command line")
    given = {
        "class_raster": args.class_raster,
        "covariates": args.covariates,
        "count": args.count,
        "stride": args.stride,
        "max_class_fraction": _class_fractions(args.max_class_fraction) if args.max_class_fraction else None,
    }
    data.update({name: value for name, value in given.items() if value is not None})
    if "class_raster" not in data:
        raise UserError("give the class raster (CLASS_RASTER, or class_raster in --config)")
    return from_dict(ChipConfig, data, source=str(args.config) if args.config is not None else "command line")


def _class_fractions(items: list[str]) -> dict[int, float]:
    """``["0=0.5", "13=0.2"]`` -> ``{0: 0.5, 13: 0.2}``; anything else is a UserError naming the item."""
    limits = {}
    for item in items:
        code, _, fraction = item.partition("=")
        try:
            limits[int(code)] = float(fraction)
        except ValueError:
            raise UserError(f"--max-class-fraction {item!r} should be CODE=FRACTION, e.g. 0=0.5") from None
    return limits


def run_chips(args: argparse.Namespace) -> None:
    from landformer.core.chips import load_chips, make_chips

    out = make_chips(chip_config_from_args(args), args.out)
    chips = load_chips(out)
    counts = chips.metadata["counts"]
    shape = "x".join(str(n) for n in chips.train_data.shape[1:])
    dropped = f"{counts['dropped_nodata']} dropped for nodata"
    if chips.metadata["sampling"]["max_class_fraction"]:
        dropped += f", {counts['dropped_class_fraction']} for --max-class-fraction"
    if counts["dropped_duplicates"] is not None:
        dropped += f", {counts['dropped_duplicates']} duplicates"
    print(f"wrote {out} and {out.with_suffix('.json')}")
    print(
        f"{counts['train']} train / {counts['test']} test chips of {shape} {chips.train_data.dtype} "
        f"(channels: {', '.join(chips.channel_names)}; {dropped})"
    )
    print_class_histogram(chips)


def print_class_histogram(chips: Any) -> None:
    """Each class's share of the pixels of the train and test splits, classes present in either split only."""
    from landformer.core.chips import split_class_shares

    legend = chips.legend
    shares = split_class_shares(chips)
    present = [i for i in range(legend.n_classes) if shares["train"][i] > 0 or shares["test"][i] > 0]
    width = max([len(legend.names[i]) for i in present] + [len("nodata")]) + 6
    print(f"  {'class (share of pixels)':<{width}} {'train':>8} {'test':>8}")
    for i in present:
        label = f"{legend.codes[i]:>4}  {legend.names[i]}"
        print(f"  {label:<{width}} {_share(shares['train'][i])} {_share(shares['test'][i])}")
    sizes = {"train": len(chips.train_data), "test": len(chips.test_data)}
    nodata = {split: 1.0 - value.sum() if sizes[split] else 0.0 for split, value in shares.items()}
    if max(nodata.values()) > 1e-12:
        print(f"  {'      nodata':<{width}} {_share(nodata['train'])} {_share(nodata['test'])}")
    absent = legend.n_classes - len(present)
    if absent:
        print(f"  ({absent} of the {legend.n_classes} classes of legend '{legend.name}' are in neither split)")


def _share(value: float) -> str:
    """A share as a percentage 8 characters wide; a class present below 0.01 % is not shown as 0."""
    return f"{'<0.01%':>8}" if 0 < value < 5e-5 else f"{value:8.2%}"


def run_info(args: argparse.Namespace) -> None:
    if args.path.suffix == ".npz":
        _print_chip_info(args.path)
    else:
        _print_raster_info(args.path, args.assume_crs, args.verify)


def _print_raster_info(path: Path, assume_crs: str | None, verify: bool) -> None:
    from landformer.core.raster import raster_info

    info = raster_info(path, assume_crs, verify)
    print(f"{info['path']} ({info['driver']})")
    print(f"  size:     {info['width']} x {info['height']} pixels, {info['bands']} band(s), {info['dtype']}")
    print(f"  nodata:   {info['nodata']}")
    print(f"  crs:      {info['crs'] if info['crs'].startswith('EPSG:') else info['crs'][:80] + '...'}")
    print(f"  pixel:    {info['pixel_size'][0]:g} x {info['pixel_size'][1]:g}")
    print(f"  bounds:   {', '.join(f'{v:.6g}' for v in info['bounds'])} (left, bottom, right, top)")
    print(f"  lon/lat:  {', '.join(f'{v:.6f}' for v in info['lonlat_bounds'])} (west, south, east, north)")
    inside = "last block decoded" if info["remote"] else "every block inside the file"  # no size to check remotely
    checked = "every block decoded" if info["verified"] else inside
    print(f"  blocks:   {info['block_shape'][0]} x {info['block_shape'][1]} ({checked})")
    if any(info["band_names"]):
        print(f"  bands:    {', '.join(info['band_names'])}")
    if any(info["units"]):
        print(f"  units:    {', '.join(info['units'])}")
    if info["overviews"]:
        print(f"  overviews: {', '.join(f'1/{factor}' for factor in info['overviews'])}")
    if info["cog_problems"] is not None:
        problems = "; ".join(info["cog_problems"])
        print(f"  layout:   {'not a Cloud-Optimized GeoTIFF: ' + problems if problems else 'Cloud-Optimized GeoTIFF'}")


def _print_chip_info(path: Path) -> None:
    from landformer.core.chips import load_chips

    chips = load_chips(path)
    meta = chips.metadata
    print(f"{path} (chip file)")
    print(f"  train:    {chips.train_data.shape} {chips.train_data.dtype}, coords {chips.train_coords.shape}")
    print(f"  test:     {chips.test_data.shape} {chips.test_data.dtype}, coords {chips.test_coords.shape}")
    print(f"  channels: {', '.join(chips.channel_names)}")
    if not meta:
        print("  metadata: none (legend unknown)")
        return
    legend = chips.legend
    print(f"  legend:   {legend.name}, {legend.n_classes} classes")
    print(f"  crs:      {meta.get('crs', '?')}, pixel size {meta.get('pixel_size', '?')}")
    split = meta.get("split", {})
    print(f"  split:    blocks of {split.get('block_size')} px, test fraction {split.get('test_fraction')}")
    print(f"  sources:  {meta.get('sources', {})}")
    print_class_histogram(chips)


def run_align(args: argparse.Namespace) -> None:
    from landformer.core.raster import align_raster

    out = align_raster(args.source, args.like, args.out, categorical=args.categorical, assume_crs=args.assume_crs)
    print(f"wrote {out} ({'nearest' if args.categorical else 'bilinear'} onto the grid of {args.like})")
