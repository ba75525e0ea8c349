"""core.io, core.config and core.legend: atomic writes, safe loading, typed configs, legend mappings."""

from __future__ import annotations

import json
import os
import pickle
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from landformer.core import io
from landformer.core.config import from_dict, load_config, save_config, to_dict
from landformer.core.errors import UserError
from landformer.core.legend import NODATA_INDEX, Legend, load_legend


class NotPlainData:
    """A custom class: torch.load(weights_only=True) must refuse to rebuild it."""

    def __init__(self) -> None:
        self.payload = 1


# ---------------------------------------------------------------- io


def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError, match="boom"), io.atomic_path(target) as tmp:
        tmp.write_bytes(b"half written")
        assert tmp.parent == target.parent and tmp.suffix == ".bin" and tmp != target
        raise RuntimeError("boom")
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_path_keeps_the_old_file_when_a_rewrite_fails(tmp_path: Path) -> None:
    target = io.write_text(tmp_path / "notes.txt", "first")
    with pytest.raises(ValueError), io.atomic_path(target) as tmp:
        tmp.write_text("second, but broken")
        raise ValueError
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_json_writes_nan_and_inf_as_null_so_strict_readers_accept_it(tmp_path: Path) -> None:
    data = {"skill": float("nan"), "ratio": np.float32("inf"), "rows": [1.0, np.nan], "nested": {"x": -np.inf}}
    path = io.write_json(tmp_path / "m.json", data)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    assert strict == {"skill": None, "ratio": None, "rows": [1.0, None], "nested": {"x": None}}


def test_atomic_writes_get_normal_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    path = io.write_json(tmp_path / "a.json", {"x": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~io._UMASK


def test_atomic_path_removes_sidecars_of_names_with_brackets(tmp_path: Path) -> None:
    target = tmp_path / "map[1].tif"
    with io.atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
        Path(f"{tmp}.aux.xml").write_text("sidecar named after the temporary file")
    assert [p.name for p in tmp_path.iterdir()] == ["map[1].tif"]


def test_json_round_trip_and_errors(tmp_path: Path) -> None:
    data = {"a": np.float32(1.5), "b": np.arange(3), "c": tmp_path}
    path = io.write_json(tmp_path / "d.json", data)
    assert io.read_json(path) == {"a": 1.5, "b": [0, 1, 2], "c": str(tmp_path)}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match=r"bad\.json is not valid JSON"):
        io.read_json(tmp_path / "bad.json")
    with pytest.raises(UserError, match="not found"):
        io.read_json(tmp_path / "missing.json")
    with pytest.raises(UserError, match="is a folder"):
        io.read_json(tmp_path)


def test_npz_round_trip_and_missing_keys(tmp_path: Path) -> None:
    arrays = {"train_data": np.arange(12, dtype=np.int16).reshape(1, 1, 3, 4), "coords": np.zeros((1, 2))}
    path = io.write_npz(tmp_path / "chips.npz", arrays)
    back = io.read_npz(path, required=("train_data",))
    assert set(back) == set(arrays) and np.array_equal(back["train_data"], arrays["train_data"])
    with pytest.raises(UserError, match=r"lacks key\(s\) test_data \(has: coords, train_data\)"):
        io.read_npz(path, required=("train_data", "test_data"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "text"])
def test_read_npz_corrupt_file_is_a_user_error(tmp_path: Path, damage: str) -> None:
    path = io.write_npz(tmp_path / "chips.npz", {"x": np.arange(5000.0)})
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        middle = len(raw) // 2
        path.write_bytes(raw[:middle] + bytes(b ^ 0xFF for b in raw[middle : middle + 64]) + raw[middle + 64 :])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("not an archive")
    with pytest.raises(UserError, match=r"chips\.npz is corrupt or truncated"):
        io.read_npz(path)


def test_read_npz_refuses_pickles_and_plain_npy(tmp_path: Path) -> None:
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="holds pickled objects"):
        io.read_npz(tmp_path / "objects.npz")
    np.save(tmp_path / "single.npy", np.arange(3))
    with pytest.raises(UserError, match=r"single \.npy array, not an \.npz archive"):
        io.read_npz(tmp_path / "single.npy")


def test_load_torch_reads_tensors_and_refuses_custom_objects(tmp_path: Path) -> None:
    torch.save({"weight": torch.arange(4.0), "step": 3, "names": ["a"]}, tmp_path / "ok.pt")
    state = io.load_torch(tmp_path / "ok.pt")
    assert torch.equal(state["weight"], torch.arange(4.0)) and state["step"] == 3 and state["names"] == ["a"]

    torch.save({"weight": torch.ones(2), "extra": NotPlainData()}, tmp_path / "custom.pt")
    with pytest.raises(UserError, match=r"not plain data \(Unsupported global: GLOBAL [\w.]*NotPlainData\)"):
        io.load_torch(tmp_path / "custom.pt")
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"extra": NotPlainData()}))
    with pytest.raises(UserError, match="cannot be loaded safely"):
        io.load_torch(tmp_path / "legacy.pt")


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint", "truncated"])
def test_load_torch_unreadable_files_are_user_errors(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "model.ckpt"
    if content == "truncated":
        torch.save({"w": torch.ones(100)}, path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"model\.ckpt cannot be loaded safely: \S"):
        io.load_torch(path)


def test_safetensors_round_trip_with_metadata(tmp_path: Path) -> None:
    tensors = {"w": torch.arange(6.0).reshape(2, 3).t(), "b": torch.zeros(2, dtype=torch.bfloat16)}
    path = io.save_safetensors(tmp_path / "m.safetensors", tensors, {"legend": "nlcd", "dims": [2, 3]})
    back, metadata = io.load_safetensors(path)
    assert torch.equal(back["w"], tensors["w"]) and back["b"].dtype == torch.bfloat16
    assert metadata == {"legend": "nlcd", "dims": [2, 3]}
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 30)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        io.load_safetensors(tmp_path / "bad.safetensors")


# ---------------------------------------------------------------- config


@dataclass
class ModelSection:
    dim: int = 16
    activation: Literal["gelu", "relu"] = "gelu"
    heads: Literal[1, 2, 4] = 2


@dataclass
class Recipe:
    name: str = "demo"
    lr: float = 1e-3
    model: ModelSection = field(default_factory=ModelSection)
    chip: tuple[int, int] = (16, 16)
    out: Path = Path("runs/demo")
    patience: int | None = None
    devices: int | str = "auto"
    tags: list[str] = field(default_factory=list)


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_config_loads_nested_values_and_overrides(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "name: run1\nmodel:\n  dim: 32\n  activation: relu\nchip: [8, 8]\nout: /tmp/x\n")
    config = load_config(Recipe, path, overrides=["model.heads=4", "patience=3", "devices=2", "tags=[a, b]"])
    assert config == Recipe(
        name="run1",
        model=ModelSection(dim=32, activation="relu", heads=4),
        chip=(8, 8),
        out=Path("/tmp/x"),
        patience=3,
        devices=2,
        tags=["a", "b"],
    )
    assert load_config(Recipe) == Recipe()


def test_config_reads_exponent_floats_that_pyyaml_leaves_as_strings(tmp_path: Path) -> None:
    assert load_config(Recipe, write_yaml(tmp_path, "lr: 3e-4\n")).lr == pytest.approx(3e-4)
    assert load_config(Recipe, None, overrides=["lr=1E-2"]).lr == pytest.approx(1e-2)
    assert load_config(Recipe, None, overrides=["lr=2"]).lr == 2.0
    with pytest.raises(UserError, match="'lr' = 'fast' should be a number"):
        load_config(Recipe, None, overrides=["lr=fast"])


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("nmae: x\n", r"recipe\.yaml: unknown key 'nmae' \(did you mean 'name'\?\)"),
        ("model:\n  dims: 3\n", r"unknown key 'model\.dims' \(did you mean 'model\.dim'\?\)"),
        ("model:\n  dim: many\n", r"'model\.dim' = 'many' should be an integer"),
        ("model:\n  dim: 3.5\n", r"'model\.dim' = 3\.5 should be an integer"),
        ("model:\n  activation: tanh\n", r"'model\.activation' = 'tanh' is not one of 'gelu', 'relu'"),
        ("model:\n  heads: true\n", r"'model\.heads' = True is not one of 1, 2, 4"),
        ("model: 3\n", r"'model' should be a mapping of ModelSection fields"),
        ("chip: [1, 2, 3]\n", r"'chip' should have 2 items, got 3"),
        ("chip: 16\n", r"'chip' = 16 should be a list"),
        ("tags: [a, 3]\n", r"'tags\[1\]' = 3 should be a string"),
        ("devices: [0]\n", r"'devices' = \[0\] is not int \| str"),
        ("name: [x]\n", r"'name' = \['x'\] should be a string"),
        ("- a\n- b\n", r"recipe\.yaml should be a mapping"),
        ("name: [unclosed\n", r"recipe\.yaml is not valid YAML"),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config(Recipe, write_yaml(tmp_path, yaml_text))


@dataclass
class _Steps:
    max_steps: int = 200
    lr: float = 1e-3
    tags: dict[str, int] = field(default_factory=lambda: {"a": 1})


@dataclass
class _Stage:
    train: _Steps = field(default_factory=lambda: _Steps(max_steps=300, lr=5e-3, tags={"a": 1, "b": 2}))


@dataclass
class _Recipe:
    stage: _Stage = field(default_factory=lambda: _Stage(train=_Steps(max_steps=50)))
    plain: _Steps = field(default_factory=_Steps)


def test_partly_given_section_keeps_the_sections_own_defaults() -> None:
    recipe = load_config(_Recipe, None, ["stage.train.lr=0.1"])
    assert recipe.stage.train == _Steps(max_steps=50, lr=0.1)  # 50 from _Recipe's default, not 300 or 200
    stage = from_dict(_Stage, {"train": {"max_steps": 7}})
    assert stage.train == _Steps(max_steps=7, lr=5e-3, tags={"a": 1, "b": 2})
    replaced = from_dict(_Stage, {"train": {"tags": {"c": 3}}})
    assert replaced.train.tags == {"c": 3}  # a plain mapping is replaced, not merged
    assert from_dict(_Recipe, {"plain": {"lr": 0.5}}).plain == _Steps(lr=0.5)
    with pytest.raises(UserError, match=r"unknown key 'train.max_step'"):
        from_dict(_Stage, {"train": {"max_step": 7}})
    with pytest.raises(UserError, match=r"^--set: unknown key 'stage.nope'"):  # names where the key came from
        load_config(_Recipe, None, ["stage.nope=1"])


def test_config_override_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="override 'lr' should look like key=value"):
        load_config(Recipe, None, overrides=["lr"])
    with pytest.raises(UserError, match=r"unknown key 'model\.width'"):
        load_config(Recipe, None, overrides=["model.width=3"])
    with pytest.raises(UserError, match=r"cannot override 'lr\.x': 'lr' is not a section"):
        load_config(Recipe, write_yaml(tmp_path, "lr: 0.1\n"), overrides=["lr.x=1"])
    with pytest.raises(UserError, match="config not found"):
        load_config(Recipe, tmp_path / "absent.yaml")


def test_save_config_round_trips(tmp_path: Path) -> None:
    config = Recipe(name="x", model=ModelSection(dim=8), chip=(4, 4), patience=2, tags=["t"])
    path = save_config(config, tmp_path / "config.yaml")
    assert path.read_text().startswith("# resolved Recipe written by landformer")
    assert load_config(Recipe, path) == config
    assert to_dict(config)["out"] == "runs/demo" and to_dict(config)["chip"] == [4, 4]


# ---------------------------------------------------------------- legend


def test_nlcd_encode_decode_round_trip() -> None:
    nlcd = load_legend("nlcd")
    raw = np.array([[11, 12, 21, 0], [95, 90, 250, 42]], dtype=np.uint8)
    indices = nlcd.encode(raw)
    assert indices.dtype == np.int16
    assert indices.tolist() == [[0, 1, 2, NODATA_INDEX], [19, 18, NODATA_INDEX, nlcd.codes.index(42)]]
    assert nlcd.decode(indices).tolist() == [[11, 12, 21, 0], [95, 90, 0, 42]]  # nodata comes back as code 0
    every_class = np.array(nlcd.codes)
    assert np.array_equal(nlcd.decode(nlcd.encode(every_class)), every_class)
    assert nlcd.decode(nlcd.encode(every_class)).dtype == np.uint8


def test_encode_lists_unknown_codes_or_makes_them_nodata() -> None:
    nlcd = load_legend("nlcd")
    raw = np.array([11, 13, 99, 13, 21])
    with pytest.raises(UserError, match=r"tile\.tif: class code\(s\) 13, 99 are not in legend 'nlcd'"):
        nlcd.encode(raw, source="tile.tif")
    assert nlcd.encode(raw, unknown="nodata").tolist() == [0, -1, -1, -1, 2]


def test_encode_wide_code_ranges_without_a_huge_table() -> None:
    """A uint32 raster with nodata 4294967295 once allocated a 4-billion-entry lookup table (8 GiB)."""
    import tracemalloc

    nlcd = load_legend("nlcd")
    raw = np.array([[11, 4294967295, 95]], dtype=np.uint32)
    tracemalloc.start()
    indices = nlcd.encode(raw, unknown="nodata")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert indices.tolist() == [[0, -1, 19]]
    assert peak < 10_000_000
    with pytest.raises(UserError, match="4294967295 are not in legend"):
        nlcd.encode(raw)
    wide = Legend.from_dict({"classes": [{"code": -70000, "name": "a"}, {"code": 70000, "name": "b"}], "nodata": [5]})
    assert wide.encode(np.array([70000, -70000, 5, 4]), unknown="nodata").tolist() == [1, 0, -1, -1]


def test_encode_float_rasters() -> None:
    nlcd = load_legend("nlcd")
    raw = np.array([11.0, np.nan, 95.0, -3.4e38], dtype=np.float32)
    assert nlcd.encode(raw, unknown="nodata").tolist() == [0, -1, 19, -1]
    with pytest.raises(UserError, match=r"code\(s\) -3.4e\+38 are not in legend"):
        nlcd.encode(raw)
    with pytest.raises(UserError, match="fractional values"):
        nlcd.encode(np.array([11.5]))


def test_decode_rejects_indices_beyond_the_legend() -> None:
    nlcd = load_legend("nlcd")
    with pytest.raises(UserError, match=r"class index\(es\) 20, 31 are beyond legend 'nlcd' \(20 classes\)"):
        nlcd.decode(np.array([0, 20, 31]))
    assert nlcd.decode(np.array([-1, 0]), nodata_code=255).tolist() == [255, 11]


def test_legend_json_round_trip_and_groups(tmp_path: Path) -> None:
    corine = load_legend("corine")
    assert Legend.from_dict(corine.to_dict()) == corine
    path = io.write_json(tmp_path / "mine.json", {
        "name": "mine",
        "nodata": 0,
        "classes": [{"code": 1, "name": "water", "color": "#3060c0"}, {"code": 5, "name": "town"}],
        "groups": {"developed": [5]},
    })  # fmt: skip
    mine = load_legend(path)
    assert mine.nodata_codes == (0,) and mine.group_indices("developed") == [1]
    assert mine.palette()[0].tolist() == [0x30, 0x60, 0xC0] and mine.palette().shape == (2, 3)
    with pytest.raises(UserError, match="has no group 'forest'"):
        mine.group_indices("forest")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"classes": []}, "non-empty 'classes' list"),
        ({"classes": [{"code": 1.5, "name": "a"}]}, r"classes\[0\] needs an integer 'code'"),
        ({"classes": [{"code": True, "name": "a"}]}, r"classes\[0\] needs an integer 'code'"),
        ({"classes": [{"name": "a"}]}, r"classes\[0\] needs an integer 'code'"),
        ({"classes": [{"code": 1, "name": "a", "color": "#zzzzzz"}]}, "should look like #rrggbb"),
        ({"classes": [{"code": 1, "name": "a"}, {"code": 1, "name": "b"}]}, "repeats a class code"),
        ({"classes": [{"code": 1, "name": "a"}], "nodata": [1]}, r"code\(s\) \[1\] are both a class and nodata"),
        ({"classes": [{"code": 1, "name": "a"}], "groups": {"g": [2]}}, r"group 'g' names unknown code\(s\) \[2\]"),
        ({"classes": [{"code": 1, "name": "a"}], "groups": [1]}, "'groups' should map group names"),
        ({"classes": [{"code": 1, "name": "a"}], "nodata": ["x"]}, "'nodata' should be an integer code"),
    ],
)
def test_bad_legend_json_is_a_user_error(data: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Legend.from_dict(data, source="mine.json")


def test_load_legend_unknown_name() -> None:
    with pytest.raises(UserError, match="neither a built-in legend"):
        load_legend("nlcd2099")


def test_other_ranks_of_a_launch_share_the_output_rank_0_guards(tmp_path: Path, monkeypatch) -> None:
    """torchrun and SLURM run one command with one --out on every rank: rank 0 holds the lock, and a rank above
    0 passes without being refused as a second writer, while a plain second command still is."""
    from landformer.core.io import OutputLock, launch_rank, output_guard

    out = tmp_path / "run"
    rank_0 = OutputLock(out).acquire()
    try:
        monkeypatch.setenv("RANK", "1")
        assert launch_rank() == 1
        with output_guard(out, "folder") as path:
            assert path == out
        monkeypatch.delenv("RANK")
        monkeypatch.setenv("SLURM_PROCID", "0")
        assert launch_rank() == 0
        with pytest.raises(UserError, match="being written by another landformer command"), output_guard(out, "folder"):
            pass
    finally:
        rank_0.release()
