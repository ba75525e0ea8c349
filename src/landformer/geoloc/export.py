"""The trained geoloc bundle: what ``geoloc predict`` and ``geoloc evaluate`` load from a run folder.

::

    geoloc.json                   the manifest: format, bands, image shape, regions and their folders, router;
                                  written last, so a folder holds a bundle only once every part is in place
    normalization.json            per-band mean and standard deviation of the training images
    regions/<region>/             model.safetensors (the regressor; its description in the header) and
                                  region.json (local frame, coordinate scaler, median training coordinate)
    router/model.safetensors      the Region_ID classifier

Only safe formats are read: JSON and safetensors, never pickle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from landformer.core.errors import UserError
from landformer.core.export import save_bundle
from landformer.core.io import load_safetensors, read_json, write_json
from landformer.geoloc.data import BandNormalizer
from landformer.geoloc.frames import LocalFrame
from landformer.geoloc.model import ImageRegressor
from landformer.geoloc.scaler import CoordinateScaler

MANIFEST = "geoloc.json"
FORMAT = "landformer.geoloc/1"
NORMALIZATION = "normalization.json"
REGION = "region.json"
WEIGHTS = "model.safetensors"
NETWORK_FORMAT = "landformer-geoloc-network"  # one region's regressor or the router, beside model.json
NETWORK_KEYS = ("backbone", "in_chans", "n_outputs", "mode", "drop_rate")  # the header keys that rebuild a network


@dataclass
class RegionModel:
    """One region's regressor and the frame, scaler and baseline coordinate that go with it."""

    name: str
    frame: LocalFrame
    scaler: CoordinateScaler
    median_latitude: float
    median_longitude: float
    network: ImageRegressor


@dataclass
class GeolocBundle:
    """A loaded run: every region's model, the router (None when trained without one) and the image contract."""

    run_dir: Path
    bands: int
    shape: tuple[int, int]
    normalizer: BandNormalizer
    models: dict[str, RegionModel]
    router: ImageRegressor | None


def save_normalizer(run_dir: Path, normalizer: BandNormalizer) -> Path:
    """The band statistics every image is standardised with, in training and prediction alike."""
    return write_json(run_dir / NORMALIZATION, normalizer.to_dict())


def save_region(folder: Path, description: dict[str, Any]) -> Path:
    """``region.json``: the region's local frame, scaler and median training coordinate (and its image counts)."""
    return write_json(folder / REGION, description)


def save_network(folder: Path, network: nn.Module, description: dict[str, Any]) -> Path:
    """One trained network as ``model.safetensors``; ``description`` (backbone, bands, outputs, mode, dropout, and
    what the run records) goes in the header, so the file rebuilds its own network."""
    return save_bundle(folder / WEIGHTS, network.state_dict(), NETWORK_FORMAT, 1, **description)


def save(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """The manifest that makes ``run_dir`` a bundle; saved after every part it names."""
    return write_json(run_dir / MANIFEST, manifest)


def load_network(path: Path, expected_mode: str, in_chans: int) -> tuple[ImageRegressor, dict[str, Any]]:
    """The network in ``path`` (in eval mode) and its header; a UserError unless it is a ``expected_mode`` network
    for ``in_chans`` bands that fits its own description."""
    tensors, meta = load_safetensors(path, "geoloc model")
    try:
        if meta["mode"] != expected_mode or int(meta["in_chans"]) != in_chans:
            raise UserError(f"{path} is a {meta['mode']} model for {meta['in_chans']} bands, expected {expected_mode}")
        network = ImageRegressor(str(meta["backbone"]), in_chans, int(meta["n_outputs"]), float(meta["drop_rate"]))
    except KeyError as err:
        raise UserError(f"{path} lacks the model description {err} in its metadata") from None
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None
    try:
        network.load_state_dict(tensors)
    except RuntimeError as err:
        raise UserError(f"{path} does not fit its own model description: {str(err).splitlines()[0]}") from None
    return network.eval(), meta


def load(run_dir: str | os.PathLike[str]) -> GeolocBundle:
    """Everything ``geoloc train`` saved to ``run_dir``, on the CPU."""
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).is_file():
        raise UserError(f"{run_dir} is not a geoloc run: no {MANIFEST} (train one with `landformer geoloc train`)")
    manifest = read_json(run_dir / MANIFEST, "geoloc manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{run_dir / MANIFEST} is not a {FORMAT} manifest")
    bands = int(manifest["bands"])
    normalization = run_dir / manifest["normalization"]
    normalizer = BandNormalizer.from_dict(read_json(normalization, "band statistics"), str(normalization))
    models: dict[str, RegionModel] = {}
    for name, entry in manifest["regions"].items():
        folder = run_dir / entry["folder"]
        description = read_json(folder / REGION, "region description")
        network, _ = load_network(folder / WEIGHTS, "regress", bands)
        models[name] = RegionModel(
            name=name,
            frame=LocalFrame.from_dict(description["frame"]),
            scaler=CoordinateScaler.from_dict(description["scaler"], str(folder / REGION)),
            median_latitude=float(description["median"]["latitude"]),
            median_longitude=float(description["median"]["longitude"]),
            network=network,
        )
    regions, router = sorted(models), None
    if manifest.get("router"):
        router, meta = load_network(run_dir / manifest["router"]["folder"] / WEIGHTS, "route", bands)
        if list(meta.get("classes", [])) != regions:
            raise UserError(f"{run_dir}: the router's classes {meta.get('classes')} are not the regions {regions}")
    shape = (int(manifest["image_shape"][0]), int(manifest["image_shape"][1]))
    return GeolocBundle(run_dir, bands, shape, normalizer, models, router)
