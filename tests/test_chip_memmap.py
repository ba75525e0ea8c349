"""Chips for many processes: uncompressed chip files are memory-mapped, so DDP ranks and data-loader workers
share one copy in the page cache; the four-array ``.npz`` contract is kept; a split is a torch Dataset."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.transform import from_origin
from torch.utils.data import DataLoader, Dataset

from landformer.core.chip_dataset import ChipSplit
from landformer.core.chips import ChipConfig, load_chips, make_chips, write_chips
from landformer.core.errors import UserError
from landformer.core.raster import write_geotiff

LEGEND = {
    "name": "toy",
    "nodata": [0],
    "classes": [{"code": code, "name": f"class {code}", "color": "#336699"} for code in (1, 2, 3, 4)],
}


def chip_arrays(n_train: int, n_test: int, size: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Float chips with a class channel (indices 0..3, -1 nodata) and one covariate channel."""
    rng = np.random.default_rng(seed)
    data = np.empty((n_train + n_test, 2, size, size), dtype=np.float32)
    data[:, 0] = rng.integers(-1, 4, (n_train + n_test, size, size))
    data[:, 1] = rng.normal(300, 50, (n_train + n_test, size, size))
    coords = np.column_stack([rng.uniform(-100, -90, n_train + n_test), rng.uniform(30, 40, n_train + n_test)])
    return {
        "train_data": data[:n_train],
        "test_data": data[n_train:],
        "train_coords": coords[:n_train],
        "test_coords": coords[n_train:],
    }


def write(path: Path, arrays: dict[str, np.ndarray], compress: bool) -> Path:
    size = arrays["train_data"].shape[-1]
    metadata = {"legend": LEGEND, "channel_names": ["landcover", "elevation"], "chip_size": size}
    return write_chips(path, *(arrays[key] for key in arrays), metadata, compress=compress)


# Run in a fresh process: what the allocator kept from earlier tests would hide or fake a copy's growth.
GROWTH = """
import sys
from pathlib import Path

from landformer.core.chip_dataset import ChipSplit  # torch's own memory is not the chips'
from landformer.core.chips import load_chips


def anonymous() -> int:
    lines = Path("/proc/self/smaps_rollup").read_text().splitlines()
    return next(int(line.split()[1]) * 1024 for line in lines if line.startswith("Anonymous:"))


before = anonymous()
chips = load_chips(sys.argv[1])
dataset = ChipSplit(chips, "train")
total = sum(float(dataset[i]["mask"].sum()) for i in range(len(dataset)))  # every chip read once
print(anonymous() - before, chips.memory_mapped)
"""


def anonymous_growth(path: Path) -> tuple[int, bool]:
    """Anonymous (not file-backed) memory that loading ``path`` and reading every chip adds to a new process,
    and whether its chips were mapped."""
    done = subprocess.run([sys.executable, "-c", GROWTH, str(path)], capture_output=True, text=True, check=True)
    growth, mapped = done.stdout.split()
    return int(growth), mapped == "True"


def test_uncompressed_chips_are_mapped_and_equal_after_the_round_trip(tmp_path: Path) -> None:
    arrays = chip_arrays(40, 10)
    chips = load_chips(write(tmp_path / "chips.npz", arrays, compress=False))
    assert chips.memory_mapped
    for key in ("train_data", "test_data", "train_coords", "test_coords"):
        loaded = getattr(chips, key)
        assert loaded.dtype == arrays[key].dtype
        np.testing.assert_array_equal(loaded, arrays[key])
    assert chips.legend.name == "toy" and chips.channel_names == ["landcover", "elevation"]


def test_compressed_chips_are_read_as_before(tmp_path: Path) -> None:
    arrays = chip_arrays(12, 4)
    path = write(tmp_path / "chips.npz", arrays, compress=True)
    chips = load_chips(path)
    assert not chips.memory_mapped
    np.testing.assert_array_equal(chips.train_data, arrays["train_data"])
    with zipfile.ZipFile(path) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}


def test_both_forms_keep_the_four_array_contract_for_numpy(tmp_path: Path) -> None:
    arrays = chip_arrays(6, 2)
    for compress in (True, False):
        with np.load(write(tmp_path / f"chips_{compress}.npz", arrays, compress), allow_pickle=False) as npz:
            assert set(npz.files) == {"train_data", "test_data", "train_coords", "test_coords", "metadata"}
            np.testing.assert_array_equal(npz["test_data"], arrays["test_data"])


def test_an_original_four_array_savez_file_is_mapped(tmp_path: Path) -> None:
    """The land-cover GPT files: ``np.savez`` of (N, H, W) int arrays, no metadata."""
    rng = np.random.default_rng(1)
    train, test = rng.integers(0, 5, (30, 8, 8)).astype(np.int64), rng.integers(0, 5, (6, 8, 8)).astype(np.int64)
    path = tmp_path / "gpt.npz"
    np.savez(path, train_data=train, test_data=test, train_coords=np.zeros((30, 2)), test_coords=np.zeros((6, 2)))
    chips = load_chips(path)
    assert chips.memory_mapped and chips.metadata == {}
    assert chips.train_data.shape == (30, 1, 8, 8)
    np.testing.assert_array_equal(chips.train_data[:, 0], train)
    assert not load_chips(path, mmap=False).memory_mapped


def test_writing_to_mapped_chips_never_changes_the_file(tmp_path: Path) -> None:
    arrays = chip_arrays(8, 2)
    path = write(tmp_path / "chips.npz", arrays, compress=False)
    chips = load_chips(path)
    chips.train_data[0, 1] = -5.0  # copy-on-write: a private page for this process only
    assert chips.train_data[0, 1, 0, 0] == -5.0
    np.testing.assert_array_equal(load_chips(path).train_data, arrays["train_data"])


def test_mapped_chips_add_no_private_copy(tmp_path: Path) -> None:
    arrays = chip_arrays(3000, 100, size=32)  # 25 MiB of chips
    nbytes = arrays["train_data"].nbytes + arrays["test_data"].nbytes
    mapped_growth, mapped = anonymous_growth(write(tmp_path / "mapped.npz", arrays, compress=False))
    read_growth, read_mapped = anonymous_growth(write(tmp_path / "read.npz", arrays, compress=True))
    assert mapped and not read_mapped
    assert read_growth > 0.9 * nbytes, "reading a compressed file makes a private copy in each process"
    assert mapped_growth < 0.2 * nbytes, f"{mapped_growth} private bytes for {nbytes} bytes of mapped chips"


def test_a_split_is_a_torch_dataset_of_torchgeo_style_samples(tmp_path: Path) -> None:
    arrays = chip_arrays(10, 3)
    chips = load_chips(write(tmp_path / "chips.npz", arrays, compress=False))
    test = ChipSplit(chips, "test")
    assert isinstance(test, Dataset) and len(test) == 3
    item = test[2]
    assert item["mask"].dtype == torch.int64 and item["image"].dtype == torch.float32
    np.testing.assert_array_equal(item["mask"].numpy(), arrays["test_data"][2, 0])
    np.testing.assert_array_equal(item["image"].numpy(), arrays["test_data"][2, 1:])
    np.testing.assert_allclose(item["lonlat"].numpy(), arrays["test_coords"][2], rtol=1e-6)
    with pytest.raises(UserError, match="'val'"):
        ChipSplit(chips, "val")  # type: ignore[arg-type]


def test_class_only_chips_have_no_image(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(-1, 4, (5, 1, 8, 8)).astype(np.int16)
    path = write_chips(tmp_path / "c.npz", data, data[:0], np.zeros((5, 2)), np.zeros((0, 2)), {}, compress=False)
    item = ChipSplit(load_chips(path))[4]
    assert set(item) == {"mask", "lonlat"}
    np.testing.assert_array_equal(item["mask"].numpy(), data[4, 0])


def test_a_pickled_mapped_split_carries_the_path_not_the_chips(tmp_path: Path) -> None:
    arrays = chip_arrays(200, 20, size=32)
    path = write(tmp_path / "chips.npz", arrays, compress=False)
    split = ChipSplit(load_chips(path), "train")
    payload = pickle.dumps(split)
    assert len(payload) < 2_000 < arrays["train_data"].nbytes
    again = pickle.loads(payload)
    assert again.chips.memory_mapped
    np.testing.assert_array_equal(again[17]["image"].numpy(), arrays["train_data"][17, 1:])
    in_memory = ChipSplit(load_chips(path, mmap=False), "train")
    assert len(pickle.dumps(in_memory)) > arrays["train_data"].nbytes, "a read split travels with its arrays"


def test_loader_workers_yield_the_same_batches(tmp_path: Path) -> None:
    arrays = chip_arrays(24, 4)
    split = ChipSplit(load_chips(write(tmp_path / "chips.npz", arrays, compress=False)), "train")
    direct = torch.stack([split[i]["mask"] for i in range(len(split))])
    batches = list(DataLoader(split, batch_size=8, num_workers=2))
    torch.testing.assert_close(torch.cat([batch["mask"] for batch in batches]), direct)


def test_make_chips_can_write_a_mappable_file(tmp_path: Path) -> None:
    codes = np.random.default_rng(3).choice(np.array([1, 2, 3, 4], np.uint8), (64, 64))
    raster = write_geotiff(tmp_path / "classes.tif", codes, from_origin(0, 640, 10, 10), "EPSG:5070", nodata=0)
    legend = tmp_path / "toy.json"
    legend.write_text(json.dumps(LEGEND))
    config = ChipConfig(class_raster=raster, legend=str(legend), chip_size=8, count=30, block_size=16)
    packed = load_chips(make_chips(config, tmp_path / "packed.npz"))
    config.compress = False
    mapped = load_chips(make_chips(config, tmp_path / "mapped.npz"))
    assert mapped.memory_mapped and not packed.memory_mapped
    np.testing.assert_array_equal(mapped.train_data, packed.train_data)
    np.testing.assert_array_equal(mapped.test_coords, packed.test_coords)


def test_the_chips_command_writes_a_mappable_file_when_asked(tmp_path: Path) -> None:
    from landformer.cli import main

    codes = np.random.default_rng(4).choice(np.array([11, 21, 41, 82], np.uint8), (64, 64))
    raster = write_geotiff(tmp_path / "nlcd.tif", codes, from_origin(0, 640, 10, 10), "EPSG:5070", nodata=0)
    common = ["data", "chips", str(raster), "--chip-size", "8", "--count", "20", "--block-size", "16"]
    assert main([*common, "--out", str(tmp_path / "packed.npz")]) == 0
    assert main([*common, "--out", str(tmp_path / "mapped.npz"), "--uncompressed"]) == 0
    assert not load_chips(tmp_path / "packed.npz").memory_mapped
    assert load_chips(tmp_path / "mapped.npz").memory_mapped


def test_a_truncated_uncompressed_file_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "chips.npz", chip_arrays(50, 10), compress=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"chips\.npz is corrupt or truncated"):
        load_chips(path)


def test_an_object_array_in_an_uncompressed_file_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, train_data=np.array([{"a": 1}], dtype=object), test_data=np.zeros((0, 1, 4, 4)))
    with pytest.raises(UserError, match="pickled objects"):
        load_chips(path)
