"""geoloc data: label CSV checks, image reading (PNG/JPEG/GeoTIFF), band statistics, clear errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import Affine

from landformer.core.config import from_dict
from landformer.core.errors import UserError
from landformer.geoloc.config import GeolocConfig
from landformer.geoloc.data import (
    BandNormalizer,
    ImageStore,
    check_images,
    read_filename_list,
    read_image,
    read_labels,
)
from landformer.geoloc.train import folder_names, select_regions


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _geotiff(path: Path, data: np.ndarray, nodata: float | None = None) -> Path:
    bands, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": bands,
        "dtype": data.dtype.name,
        "crs": "EPSG:4326",
        "transform": Affine(0.1, 0.0, 10.0, 0.0, -0.1, 50.0),
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)
    return path


def test_read_labels_accepts_extra_columns_and_spaces(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "train.csv",
        "filename, latitude ,longitude,Region_ID,name\na.png,48.1,11.5,EU,Munich\nb.png, -33.9 ,18.4,AF,Cape Town\n",
    )
    table = read_labels(path)
    assert table.filenames == ["a.png", "b.png"]
    np.testing.assert_allclose(table.latitude, [48.1, -33.9])
    np.testing.assert_allclose(table.longitude, [11.5, 18.4])
    assert table.regions == ["EU", "AF"]
    assert table.subset(np.array([False, True])).filenames == ["b.png"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("filename,latitude,Region_ID\na.png,1,EU\n", r"missing column\(s\) longitude"),
        (
            "filename,latitude,longitude,Region_ID\na.png,95.5,10,EU\n",
            r"line 2: latitude 95.5 of a.png is outside \[-90, 90\]",
        ),
        ("filename,latitude,longitude,Region_ID\na.png,5,-181,EU\n", r"longitude -181.0 of a.png is outside"),
        ("filename,latitude,longitude,Region_ID\na.png,north,10,EU\n", r"line 2: latitude 'north' is not a number"),
        ("filename,latitude,longitude,Region_ID\na.png,nan,10,EU\n", r"not a finite number"),
        ("filename,latitude,longitude,Region_ID\na.png,1,2,EU\na.png,3,4,EU\n", r"line 3: filename 'a.png' is already"),
        ("filename,latitude,longitude,Region_ID\na.png,1,2,\n", r"line 2: empty Region_ID"),
        ("filename,latitude,longitude,Region_ID\n", r"has a header but no rows"),
    ],
)
def test_read_labels_refuses_bad_rows_with_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = _csv(tmp_path / "labels.csv", text)
    with pytest.raises(UserError, match=message) as error:
        read_labels(path)
    assert str(path) in str(error.value)


def test_unlabelled_list_needs_only_filenames(tmp_path: Path) -> None:
    table = read_labels(_csv(tmp_path / "list.csv", "filename\nx.tif\ny.tif\n"), labelled=False)
    assert table.filenames == ["x.tif", "y.tif"] and not table.labelled and table.regions is None
    with_regions = read_labels(_csv(tmp_path / "r.csv", "filename,Region_ID\nx.tif,EU\n"), labelled=False)
    assert with_regions.regions == ["EU"] and not with_regions.labelled


def test_exclusion_lists_as_text_or_csv(tmp_path: Path) -> None:
    text = _csv(tmp_path / "exclude.txt", "# bad scans\na.png\n\n  b.png  \n")
    assert read_filename_list(text) == {"a.png", "b.png"}
    table = _csv(tmp_path / "exclude.csv", "filename,why\nc.png,blurred\nd.png,duplicate\n")
    assert read_filename_list(table) == {"c.png", "d.png"}


def test_images_of_every_kind_become_float_band_arrays(tmp_path: Path) -> None:
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full((4, 5), 255, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    chip = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    chip[1, 2, 3] = -9999.0
    _geotiff(tmp_path / "chip.tif", chip, nodata=-9999.0)

    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb.transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), rgb[None, ..., 0].astype(np.float32))
    assert read_image(tmp_path / "rgba.png").shape == (4, 4, 5)
    jpeg = read_image(tmp_path / "photo.jpg")
    assert jpeg.shape == (3, 4, 5) and np.abs(jpeg - rgb.transpose(2, 0, 1)).mean() < 8  # lossy, but close
    tif = read_image(tmp_path / "chip.tif")
    assert np.isnan(tif[1, 2, 3]) and np.isnan(tif).sum() == 1
    np.testing.assert_array_equal(np.nan_to_num(tif, nan=-9999.0), chip)
    assert check_images(tmp_path, ["rgb.png", "photo.jpg"]) == (3, 4, 5)


def test_broken_missing_and_mismatched_images_are_named(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    _geotiff(tmp_path / "eight.tif", np.zeros((8, 4, 4), np.float32))
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(UserError, match=r"broken.png does not open"):
        check_images(tmp_path, ["rgb.png", "broken.png"])
    with pytest.raises(UserError, match=r"broken.tif is not a raster GDAL can open"):
        read_image(tmp_path / "broken.tif")
    with pytest.raises(UserError, match=r"missing.png not found"):
        check_images(tmp_path, ["missing.png"])
    with pytest.raises(UserError, match=r"eight.tif has 8 bands but rgb.png has 3: all images must have the same"):
        check_images(tmp_path, ["rgb.png", "eight.tif"])
    with pytest.raises(UserError, match=r"rgb.png has 3 bands but the model was trained on 8"):
        check_images(tmp_path, ["rgb.png"], bands=8)


def test_band_statistics_equal_a_direct_computation_and_survive_json() -> None:
    rng = np.random.default_rng(0)
    images = [rng.normal([[[5.0]], [[-2.0]]], [[[3.0]], [[0.5]]], size=(2, 6, 7)).astype(np.float32) for _ in range(4)]
    images[2][0, 1, 1] = np.nan
    images[3][1] = 7.0
    normalizer = BandNormalizer.from_images(images, ["a", "b"])
    stacked = np.stack(images)
    for band in range(2):
        values = stacked[:, band][np.isfinite(stacked[:, band])]
        assert normalizer.mean[band] == pytest.approx(values.mean(), rel=1e-6)
        assert normalizer.std[band] == pytest.approx(values.std(), rel=1e-5)
    standardised = normalizer.apply(images[2])
    assert standardised[0, 1, 1] == 0.0  # NaN becomes the band mean
    np.testing.assert_allclose(standardised[1], (images[2][1] - normalizer.mean[1]) / normalizer.std[1], rtol=1e-5)
    assert BandNormalizer.from_dict(normalizer.to_dict()) == normalizer
    constant = BandNormalizer.from_images([np.full((1, 3, 3), 4.0, np.float32)])
    assert constant.std == (1.0,) and not constant.apply(np.full((1, 3, 3), 4.0, np.float32)).any()


def test_band_statistics_of_runs_saved_before_core_normalizers_still_load() -> None:
    saved = {"mean": [5.0, -2.5], "std": [3.0, 0.5], "band_names": ["elevation", "slope"]}  # no "kind" then
    normalizer = BandNormalizer.from_dict(saved)
    assert (normalizer.mean, normalizer.std, normalizer.band_names) == ((5.0, -2.5), (3.0, 0.5), ("elevation", "slope"))
    assert normalizer.to_dict() == {"kind": "zscore", **saved}
    with pytest.raises(UserError, match="minmax normaliser, expected zscore"):
        BandNormalizer.from_dict({"kind": "minmax", "low": [0.0], "span": [1.0]})


def test_image_store_resizes_and_checks_bands(tmp_path: Path) -> None:
    _geotiff(tmp_path / "a.tif", np.ones((2, 8, 8), np.float32))
    _geotiff(tmp_path / "b.tif", np.ones((3, 8, 8), np.float32))
    normalizer = BandNormalizer((0.0, 0.0), (2.0, 2.0))
    store = ImageStore(tmp_path, ["a.tif"], normalizer, (4, 4))
    assert tuple(store[0].shape) == (2, 4, 4)
    np.testing.assert_allclose(store[0].numpy(), 0.5)
    with pytest.raises(UserError, match=r"b.tif has 3 bands but the model expects 2"):
        ImageStore(tmp_path, ["b.tif"], normalizer, (4, 4))


def _table(tmp_path: Path, counts: dict[str, int]) -> Path:
    rows = ["filename,latitude,longitude,Region_ID"]
    for region, count in counts.items():
        rows += [f"{region}{i}.png,{i * 0.1},{i * 0.1},{region}" for i in range(count)]
    return _csv(tmp_path / "labels.csv", "\n".join(rows) + "\n")


def test_regions_with_too_few_samples_are_skipped_or_refused(tmp_path: Path) -> None:
    table = read_labels(_table(tmp_path, {"big": 30, "small": 5}))
    config = from_dict(GeolocConfig, {"regions": {"min_samples": 10}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen, skipped = select_regions(table, config)
    assert chosen == ["big"] and list(skipped) == ["small"]
    assert any("region 'small' skipped: 5 training images" in str(w.message) for w in caught)
    strict = from_dict(GeolocConfig, {"regions": {"min_samples": 10, "too_few": "error"}})
    with pytest.raises(UserError, match=r"region 'small' has 5 training images after cleaning"):
        select_regions(table, strict)
    with pytest.raises(UserError, match=r"no region has 50 training images"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        select_regions(table, from_dict(GeolocConfig, {"regions": {"min_samples": 50}}))
    with pytest.raises(UserError, match=r"regions \['moon'\] asked for"):
        select_regions(table, from_dict(GeolocConfig, {"regions": {"only": ["moon"]}}))


def test_region_folder_names_are_safe_and_distinct() -> None:
    assert folder_names(["Europe/West", "Europe_West", "..", "AF"]) == {
        "Europe/West": "Europe_West",
        "Europe_West": "Europe_West_2",
        "..": "region",
        "AF": "AF",
    }


def test_balanced_router_batches_draw_small_regions_as_often(tmp_path: Path) -> None:
    import torch

    from landformer.geoloc.data import GeolocDataset
    from landformer.geoloc.train import _loaders

    _geotiff(tmp_path / "a.tif", np.ones((1, 4, 4), np.float32))
    store = ImageStore(tmp_path, ["a.tif"], BandNormalizer((0.0,), (1.0,)), (4, 4))
    labels = np.array([0] * 90 + [1] * 10)
    dataset = GeolocDataset(store, np.zeros(100, dtype=np.int64), labels=labels)
    torch.manual_seed(0)
    balanced, _ = _loaders(dataset, None, 20, 0, weights=1.0 / np.bincount(labels)[labels])
    drawn = torch.cat([batch["region"] for _ in range(20) for batch in balanced])
    assert len(drawn) == 20 * 100 and abs(drawn.float().mean().item() - 0.5) < 0.05
    plain, _ = _loaders(dataset, None, 20, 0)
    drawn = torch.cat([batch["region"] for batch in plain])
    assert drawn.sum().item() == 10  # one pass over the data, each image once
