"""Predict where images were taken with a trained run: route each image to a region, regress its coordinates
there. ``geoloc predict`` writes a CSV of ``filename, latitude, longitude, region, confidence``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from landformer.core.errors import UserError
from landformer.core.io import atomic_path
from landformer.geoloc.data import ImageStore, check_images, list_images, read_labels
from landformer.geoloc.export import load

PRELOAD_LIMIT = 20_000  # more images than this are decoded batch by batch instead of all up front


class GeolocPredictor:
    """Everything ``geoloc train`` wrote to ``run_dir`` (see :func:`~landformer.geoloc.export.load`), ready to
    predict on a device."""

    def __init__(self, run_dir: str | os.PathLike[str], device: str = "cpu") -> None:
        bundle = load(run_dir)
        self.run_dir = bundle.run_dir
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        self.bands, self.shape, self.normalizer = bundle.bands, bundle.shape, bundle.normalizer
        self.models = bundle.models
        for model in self.models.values():
            model.network.to(self.device)
        self.regions = sorted(self.models)
        self.router = bundle.router.to(self.device) if bundle.router is not None else None

    def store(self, folder: str | os.PathLike[str], filenames: Sequence[str], preload: bool = True) -> ImageStore:
        """The images, checked to have this model's bands, normalised and resized as in training."""
        check_images(folder, filenames, bands=self.bands, what="images")
        return ImageStore(folder, filenames, self.normalizer, self.shape, preload=preload)

    def _batches(self, store: ImageStore, indices: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            yield torch.stack([store[int(i)] for i in chunk]).to(self.device)

    def route(self, store: ImageStore, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(index into ``regions`` of each image's most probable region, (N, K) probabilities)."""
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
