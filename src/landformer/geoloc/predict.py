"""A trained geoloc run, loaded for prediction: route images to a region, regress their coordinates there.

Only safe formats are read: the manifest, frames, scalers and band statistics are JSON, the weights
safetensors. ``geoloc predict`` writes a CSV of ``filename, latitude, longitude, region``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from landformer.core.errors import UserError
from landformer.core.io import atomic_path, load_safetensors, read_json
from landformer.geoloc.data import BandNormalizer, ImageStore, check_images, list_images, read_labels
from landformer.geoloc.frames import LocalFrame
from landformer.geoloc.scaler import CoordinateScaler
from landformer.geoloc.training import FORMAT, MANIFEST

PRELOAD_LIMIT = 20_000  # more images than this are decoded batch by batch instead of all up front


@dataclass
class RegionModel:
    """One region's regressor and the frame, scaler and baseline coordinate that go with it."""

    name: str
    frame: LocalFrame
    scaler: CoordinateScaler
    median_latitude: float
    median_longitude: float
    network: Any  # ImageRegressor


def _load_network(path: Path, expected_mode: str, in_chans: int) -> tuple[Any, dict[str, Any]]:
    from landformer.geoloc.model import ImageRegressor

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


class GeolocPredictor:
    """Everything ``geoloc train`` wrote to ``run_dir``, ready to predict on a device."""

    def __init__(self, run_dir: str | os.PathLike[str], device: str = "cpu") -> None:
        import torch

        self.run_dir = Path(run_dir)
        if not (self.run_dir / MANIFEST).is_file():
            raise UserError(
                f"{self.run_dir} is not a geoloc run: no {MANIFEST} (train one with `landformer geoloc train`)"
            )
        manifest = read_json(self.run_dir / MANIFEST, "geoloc manifest")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise UserError(f"{self.run_dir / MANIFEST} is not a {FORMAT} manifest")
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        self.bands = int(manifest["bands"])
        self.shape = (int(manifest["image_shape"][0]), int(manifest["image_shape"][1]))
        self.normalizer = BandNormalizer.from_dict(
            read_json(self.run_dir / manifest["normalization"], "band statistics"),
            str(self.run_dir / manifest["normalization"]),
        )
        self.models: dict[str, RegionModel] = {}
        for name, entry in manifest["regions"].items():
            folder = self.run_dir / entry["folder"]
            description = read_json(folder / "region.json", "region description")
            network, _ = _load_network(folder / "model.safetensors", "regress", self.bands)
            self.models[name] = RegionModel(
                name=name,
                frame=LocalFrame.from_dict(description["frame"]),
                scaler=CoordinateScaler.from_dict(description["scaler"], str(folder / "region.json")),
                median_latitude=float(description["median"]["latitude"]),
                median_longitude=float(description["median"]["longitude"]),
                network=network.to(self.device),
            )
        self.regions = sorted(self.models)
        self.router = None
        if manifest.get("router"):
            router, meta = _load_network(
                self.run_dir / manifest["router"]["folder"] / "model.safetensors", "route", self.bands
            )
            if list(meta.get("classes", [])) != self.regions:
                raise UserError(
                    f"{self.run_dir}: the router's classes {meta.get('classes')} are not the regions {self.regions}"
                )
            self.router = router.to(self.device)

    def store(self, folder: str | os.PathLike[str], filenames: Sequence[str], preload: bool = True) -> ImageStore:
        """The images, checked to have this model's bands, normalised and resized as in training."""
        check_images(folder, filenames, bands=self.bands, what="images")
        return ImageStore(folder, filenames, self.normalizer, self.shape, preload=preload)

    def _batches(self, store: ImageStore, indices: np.ndarray, batch_size: int) -> Any:
        import torch

        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            yield torch.stack([store[int(i)] for i in chunk]).to(self.device)

    def route(self, store: ImageStore, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(index into ``regions`` of each image's most probable region, (N, K) probabilities)."""
        import torch

        if self.router is None:
            raise UserError(f"{self.run_dir} has no region router (trained with --no-router or one region)")
        probabilities = []
        with torch.inference_mode():
            for images in self._batches(store, np.arange(len(store)), batch_size):
                probabilities.append(torch.softmax(self.router(images).float(), dim=1).cpu().numpy())
        stacked = np.concatenate(probabilities)
        return stacked.argmax(axis=1), stacked

    def regress(
        self, store: ImageStore, indices: np.ndarray, region: str, batch_size: int = 256
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scaled local predictions (n, 2), latitude, longitude) of the images ``indices`` with ``region``'s model."""
        import torch

        model = self.models[region]
        outputs = []
        with torch.inference_mode():
            for images in self._batches(store, np.asarray(indices, dtype=np.int64), batch_size):
                outputs.append(model.network(images).float().cpu().numpy())
        scaled = np.concatenate(outputs).astype(np.float64) if outputs else np.zeros((0, 2))
        latitude, longitude = model.frame.to_global(model.scaler.inverse_transform(scaled))
        return scaled, np.atleast_1d(latitude), np.atleast_1d(longitude)

    def predict(
        self, store: ImageStore, regions: Sequence[str] | None = None, batch_size: int = 256
    ) -> dict[str, np.ndarray]:
        """Latitude, longitude and region of every image of ``store``: in the given ``regions`` when known,
        else in the region the router picks (the only region when there is one)."""
        if regions is None:
            if self.router is not None:
                routed, probabilities = self.route(store, batch_size)
                chosen = np.array([self.regions[i] for i in routed], dtype=object)
                confidence = probabilities.max(axis=1)
            elif len(self.regions) == 1:
                chosen = np.full(len(store), self.regions[0], dtype=object)
                confidence = np.ones(len(store))
            else:
                raise UserError(f"{self.run_dir} has no router: give each image's Region_ID (--use-regions)")
        else:
            chosen = np.asarray(regions, dtype=object)
            unknown = sorted(set(chosen.tolist()) - set(self.regions))
            if unknown:
                raise UserError(f"regions {unknown} have no model in {self.run_dir} (it has {', '.join(self.regions)})")
            confidence = np.ones(len(store))
        latitude, longitude = np.zeros(len(store)), np.zeros(len(store))
        for region in self.regions:
            indices = np.flatnonzero(chosen == region)
            if len(indices):
                _, latitude[indices], longitude[indices] = self.regress(store, indices, region, batch_size)
        return {"region": chosen, "latitude": latitude, "longitude": longitude, "confidence": confidence}


def predict_images(
    run_dir: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    images: str | os.PathLike[str] | None = None,
    csv_path: str | os.PathLike[str] | None = None,
    use_regions: bool = False,
    batch_size: int = 256,
    device: str = "cpu",
) -> Path:
    """Write ``filename, latitude, longitude, region`` (and the router's confidence) for the images listed in
    ``csv_path`` (its ``filename`` column; ``images`` defaults to ``images/`` beside it) or, without a CSV, for
    every image in the folder ``images``. ``use_regions`` takes the regions from the CSV's Region_ID instead of
    the router."""
    if csv_path is None and images is None:
        raise UserError("give the images to locate: --images FOLDER and/or --csv FILE")
    predictor = GeolocPredictor(run_dir, device)
    given_regions = None
    if csv_path is not None:
        table = read_labels(csv_path, labelled=False)
        filenames = table.filenames
        folder = Path(images) if images is not None else Path(csv_path).parent / "images"
        if use_regions and table.regions is None:
            raise UserError(f"{csv_path} has no Region_ID column for --use-regions")
        given_regions = table.regions if use_regions else None
    else:
        assert images is not None
        folder = Path(images)
        filenames = list_images(folder)
        if use_regions:
            raise UserError("--use-regions needs a --csv with a Region_ID column")
    store = predictor.store(folder, filenames, preload=len(filenames) <= PRELOAD_LIMIT)
    result = predictor.predict(store, given_regions, batch_size)
    out_csv = Path(out_csv)
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "latitude", "longitude", "region", "confidence"])
        for index, filename in enumerate(filenames):
            writer.writerow(
                [
                    filename,
                    f"{result['latitude'][index]:.6f}",
                    f"{result['longitude'][index]:.6f}",
                    result["region"][index],
                    f"{result['confidence'][index]:.4f}",
                ]
            )
    return out_csv
