"""The land-change model P(t2 | t1): train on pairs, simulate t2 from a t1 raster of any size, evaluate on
held-out blocks against persistence and Markov-CA.

**Model.** The land-cover random-order transformer unchanged, trained on pair chips (``change.py``): its
covariate prefix reads the one-hot t1 map (z-scored like any covariate), and it generates t2. Training is
``landcover train`` on those chips; the recipe (:class:`ChangeRecipe`) is the land-cover recipe plus a ``pair``
section. Conditioning is dropped for ``model.cond_dropout`` of the chips, so the same network also gives
p(t2) without t1 (its null branch), which is one of the references for the bits of t2 given t1.

**Simulation.** A region is covered by chip windows overlapping by half a chip; each window draws
``n_samples`` maps of t2 given its t1, and the class shares of the draws are blended with pyramid weights
(highest at a window's centre, where it sees the most context), giving p(t2 = j) per pixel. From them: the
probability of change (1 - p(t2 = t1)), of chosen transitions (into a legend group such as developed, from
outside it), and the most likely map: each pixel's most likely new class j* (and p_j*); the model's own expected
number of pixels of each transition i -> j (the sum of p_j over pixels of class i) is then given to the pixels of
class i with destination j and the highest p_j* (:class:`QuantityAllocation`), so the map changes as much as the
model expects and where it is surest, rather than hardly anywhere (a per-pixel argmax keeps almost every pixel).
Large rasters are done tile by tile with a margin of half a chip, and written window by window (two passes:
probabilities, then the map).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rasterio.windows import Window

from landformer.core.chips import load_chips, write_chips
from landformer.core.errors import UserError
from landformer.core.io import launch_rank, read_json, write_json
from landformer.core.legend import NODATA_INDEX, Legend
from landformer.core.raster import RasterGrid, class_dtype, geotiff_writer, iter_windows, open_raster
from landformer.core.train import TrainConfig
from landformer.landcover import change, decoding, plots
from landformer.landcover.apps.common import window_starts
from landformer.landcover.apps.development import NODATA_PROBABILITY
from landformer.landcover.config import (
    CHANGE_DRAWS,
    LandCoverConfig,
    LandCoverDataSection,
    LandCoverImagesSection,
    LandCoverRecipe,
    tiny_train_section,
)
from landformer.landcover.data import model_inputs
from landformer.landcover.export import MODEL_FILE, LoadedModel, load, save
from landformer.synth.world import load_world, make_world

PAIR_RECORD = "change.json"
PAIR_CHIPS = "pair_chips.npz"
ALLOCATION_BINS = 10_000  # probability resolution of the quantity thresholds
CA_RADII = (1, 2, 3, 5, 8)  # Markov-CA neighbourhood radii tried on the validation blocks
BLOCK_ROLES = {"train": change.TRAIN, "validation": change.VALIDATION, "test": change.TEST}


@dataclass
class ChangePairSection:
    """Which pair to train on: two rasters, or two epochs of a synthetic world (``data.world``, or one of
    ``data.world_size`` px built in the run folder)."""

    t1: Path | None = None
    t2: Path | None = None
    world_seeds: list[int] = field(default_factory=list)  # several worlds of data.world_size px, pooled
    t1_year: int = 2000  # epochs of a synthetic world
    t2_year: int = 2010
    align: bool = False  # resample t2 onto t1's grid (nearest) when their grids differ, with a warning
    block_size: int = 64  # side of the train / validation / test blocks
    val_fraction: float = 0.1  # share of blocks for choosing settings (their chips give the validation loss)

    def validate(self) -> None:
        if (self.t1 is None) != (self.t2 is None):
            raise UserError("landcover change pair: give both t1 and t2 rasters, or neither (a synthetic world)")
        if self.t1 is not None and self.world_seeds:
            raise UserError("landcover change pair: give either t1/t2 rasters or world_seeds, not both")
        if len(set(self.world_seeds)) != len(self.world_seeds):
            raise UserError(f"landcover change pair: world_seeds {self.world_seeds} repeat a seed")
        if self.t1 is None and self.t1_year >= self.t2_year:
            raise UserError(f"landcover change pair: t1_year {self.t1_year} should come before t2_year {self.t2_year}")


def change_data_section() -> LandCoverDataSection:
    # Every chip of a pair, copies included: unchanged uniform chips are most of what a change model must learn
    # to copy, and the packaged change model was trained that way.
    return LandCoverDataSection(legend="nlcd", source="synthetic", deduplicate=False)


def change_model_section() -> LandCoverConfig:
    # One t1 token per pixel: with 2x2 patches the tiny model learned t2 given t1 more slowly per step (0.34
    # against 0.20 validation bits after 100 steps), and copying t1 is most of what it has to learn.
    return LandCoverConfig(covariate_patch=1)


def change_images_section() -> LandCoverImagesSection:
    return LandCoverImagesSection(every_steps=300, steps=16)


def change_train_section() -> TrainConfig:
    return dataclasses.replace(tiny_train_section(), max_steps=600, val_every_steps=100, checkpoint_every_steps=200)


@dataclass
class ChangeRecipe(LandCoverRecipe):
    """The land-cover recipe plus the pair, with the defaults of ``configs/landcover_change_tiny.yaml``."""

    data: LandCoverDataSection = field(default_factory=change_data_section)
    model: LandCoverConfig = field(default_factory=change_model_section)
    images: LandCoverImagesSection = field(default_factory=change_images_section)
    train: TrainConfig = field(default_factory=change_train_section)
    pair: ChangePairSection = field(default_factory=ChangePairSection)

    def validate(self) -> None:
        super().validate()
        self.pair.validate()


def resolve_pairs(recipe: ChangeRecipe, run_dir: Path) -> list[tuple[Path, Path]]:
    """The (t1, t2) rasters of the recipe: given, epochs of its synthetic world (built in RUN/world when none),
    or epochs of one world per ``pair.world_seeds`` (built in RUN/world_SEED)."""
    pair = recipe.pair
    if pair.t1 is not None and pair.t2 is not None:
        return [(Path(pair.t1), Path(pair.t2))]
    if pair.world_seeds:
        folders = [(run_dir / f"world_{seed}", seed) for seed in pair.world_seeds]
    elif recipe.data.world is not None:
        folders = [(Path(recipe.data.world), None)]
    else:
        seed = recipe.train.seed if recipe.data.world_seed is None else recipe.data.world_seed
        folders = [(run_dir / "world", seed)]
    pairs = []
    for folder, seed in folders:
        if seed is not None and not (folder / "world.json").is_file():
            print(f"building a {recipe.data.world_size} px synthetic world (seed {seed}) in {folder}")
            make_world(folder, size=recipe.data.world_size, seed=seed)
        world = load_world(folder)
        pairs.append((world.landcover_of(pair.t1_year), world.landcover_of(pair.t2_year)))
    return pairs


def pair_chip_config(recipe: ChangeRecipe, t1: Path, t2: Path) -> change.PairChipConfig:
    data = recipe.data
    return change.PairChipConfig(
        t1=t1,
        t2=t2,
        legend=data.legend or "nlcd",
        chip_size=data.chip_size,
        stride=data.stride,
        block_size=recipe.pair.block_size,
        test_fraction=data.test_fraction,
        val_fraction=recipe.pair.val_fraction,
        seed=recipe.train.seed,
        align=recipe.pair.align,
    )


def merge_pair_chips(parts: list[Path], out: Path) -> Path:
    """One chip file of the chips of several pairs (train with train, validation with validation)."""
    sets = [load_chips(part, mmap=False) for part in parts]
    metadata = dict(sets[0].metadata)
    metadata["sources"] = {"pair_chips": [part.name for part in parts]}
    metadata["counts"] = {"train": sum(len(s.train_data) for s in sets), "test": sum(len(s.test_data) for s in sets)}
    del metadata["change_pair"], metadata["split"]  # each pair's own are in its part file and in change.json
    return write_chips(
        out,
        *(np.concatenate([getattr(s, key) for s in sets]) for key in ("train_data", "test_data")),
        *(np.concatenate([getattr(s, key) for s in sets]) for key in ("train_coords", "test_coords")),
        metadata,
    )


def change_metadata(record: dict[str, Any], run_dir: Path, counts: np.ndarray) -> dict[str, Any]:
    """What using the model on another pair needs, stored in its export (``extra.change``) so that a model
    without its run folder (the packaged one) can still be evaluated and simulated with Markov quantities:
    the block split's settings, the align flag and the transition counts of its training pairs' train blocks.
    Pairs are named relative to the run folder (or by file name), never by an absolute path."""

    def name(path: str) -> str:
        resolved = Path(path)
        return (
            str(resolved.relative_to(run_dir.resolve()))
            if resolved.is_relative_to(run_dir.resolve())
            else resolved.name
        )

    return {
        "block_size": record["block_size"],
        "align": record["align"],
        "test_fraction": record["test_fraction"],
        "val_fraction": record["val_fraction"],
        "split_seed": record["seed"],
        "training_pairs": [[name(pair["t1"]), name(pair["t2"])] for pair in record["pairs"]],
        "train_transitions": counts.tolist(),
    }


def train_change(
    recipe: ChangeRecipe, run_dir: str | os.PathLike[str], resume: bool | str | os.PathLike[str] = False
) -> dict[str, Any]:
    """Cut pair chips into RUN (once; one part per pair when there are several, pooled) and train the land-cover
    model on them with t1 as covariates; writes ``RUN/change.json`` (the pairs, their checks and block roles)
    beside the usual run folder, and what evaluation needs into the model's export (:func:`change_metadata`)."""
    from landformer.landcover.train import train  # Lightning: only training needs it, not simulate or evaluate

    recipe.validate()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pairs = resolve_pairs(recipe, run_dir)
    configs = [pair_chip_config(recipe, t1, t2) for t1, t2 in pairs]
    chips = run_dir / PAIR_CHIPS
    parts = [chips] if len(configs) == 1 else [run_dir / f"pair_chips_{index}.npz" for index in range(len(configs))]
    if not chips.is_file():
        for config, part in zip(configs, parts, strict=True):
            print(f"cutting {config.chip_size} px pair chips (t1 {config.t1} -> t2 {config.t2}) into {part}")
            change.make_pair_chips(config, part)
        if len(parts) > 1:
            merge_pair_chips(parts, chips)
    landcover = copy.deepcopy(recipe)
    landcover.data.chips, landcover.data.world, landcover.data.covariates = chips, None, True
    summary = train(landcover, run_dir, resume=resume)
    config = configs[0]
    pair_records = []
    for (t1, t2), part in zip(pairs, parts, strict=True):
        metadata = load_chips(part).metadata
        pair_records.append(
            {
                "t1": str(Path(t1).resolve()),
                "t2": str(Path(t2).resolve()),
                "roles": metadata["split"]["roles"],
                "check": metadata["change_pair"]["check"],
            }
        )
    record = {
        **pair_records[0],  # the first pair at the top level too, where one-pair records kept it
        "align": recipe.pair.align,
        "legend": config.legend,
        "chip_size": config.chip_size,
        "block_size": config.block_size,
        "test_fraction": config.test_fraction,
        "val_fraction": config.val_fraction,
        "seed": config.seed,
        "pairs": pair_records,
    }
    write_json(run_dir / PAIR_RECORD, record)
    if launch_rank() == 0:
        loaded = load(run_dir)
        counts = sum(training_transitions(pair, record, loaded.legend) for pair in pair_records)
        extra = {**loaded.metadata.get("extra", {}), "change": change_metadata(record, run_dir, counts)}
        save(loaded.model, loaded.legend, run_dir, extra, loaded.channel_names, loaded.covariate_stats)
    summary["pair"] = record
    return summary


def package_change_model(run_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the model of a change run as a shippable file (``out``, a ``.safetensors`` path, with its ``.json``
    beside it): the same weights and metadata less the run folder's absolute paths (its checkpoint and chip
    file), which mean nothing on another machine. ``make change-model`` installs the packaged ``change`` model
    this way."""
    loaded = load(run_dir)
    extra = {
        key: value for key, value in loaded.metadata.get("extra", {}).items() if key not in ("checkpoint", "chips")
    }
    if "change" not in extra:
        raise UserError(f"model {loaded.path} records no land-change settings: train it with `landcover change-train`")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"the packaged change model's file should end in .safetensors, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:  # export.save names its files model.*
        saved = save(loaded.model, loaded.legend, scratch, extra, loaded.channel_names, loaded.covariate_stats)
        os.replace(saved.with_suffix(".json"), out.with_suffix(".json"))
        os.replace(saved, out)
    return out


# ----------------------------------------------------------------------------------------------- simulation


def pyramid_weights(size: int) -> np.ndarray:
    """(size, size) weights highest at the centre and 1 at the corners: a window trusts its middle most."""
    ramp = np.minimum(np.arange(1, size + 1), np.arange(size, 0, -1)).astype(np.float32)
    return np.outer(ramp, ramp)


def t1_covariates(loaded: LoadedModel, t1: np.ndarray) -> torch.Tensor:
    """(B, H, W) t1 class indices -> the model's z-scored one-hot covariates (B, K, H, W)."""
    chips = np.concatenate(
        [np.full((t1.shape[0], 1, *t1.shape[1:]), -1, np.float32), change.one_hot(t1, loaded.legend.n_classes)], 1
    )
    _, covariates = model_inputs(chips, loaded.covariate_stats)
    if covariates is None:
        raise UserError(f"model {loaded.path} reads no covariates: it is not a change model (train it on pairs)")
    return covariates


def check_change_model(loaded: LoadedModel) -> None:
    expected = loaded.legend.n_classes
    if loaded.config.covariate_channels != expected:
        raise UserError(
            f"model {loaded.path} reads {loaded.config.covariate_channels} covariate channel(s), a change model of "
            f"legend '{loaded.legend.name}' reads its {expected} one-hot t1 classes: train it with `landcover "
            "change-train`"
        )


@dataclass
class RegionSimulation:
    probabilities: np.ndarray  # (K, H, W) float32: p(t2 = j) per pixel; 0 at t1 nodata
    sample: np.ndarray | None  # (H, W) int64: one draw, each pixel from the window that weighs it most; -1 nodata


def window_marginals(loaded: LoadedModel, chips: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """p(t2 at each cell | t1) (B, K, S, S) of t1 chips (B, S, S) in one pass: every cell is asked first, seeing
    only the t1 prefix (each query attends to the prefix and itself, as the first cell of a training order)."""
    model = loaded.model
    batch, size = chips.shape[0], chips.shape[-1]
    n_cells = size * size
    with torch.inference_mode():
        state = model.start_decoding(
            batch, size, size, covariates=t1_covariates(loaded, chips).to(model.device), max_query=n_cells
        )
        cells = torch.arange(n_cells, device=model.device).expand(batch, n_cells)
        logits = model.decode_step(state, None, cells)
        probabilities = (logits.float() / temperature).softmax(dim=-1)
    return probabilities.transpose(1, 2).reshape(batch, -1, size, size).cpu().numpy()


def simulate_region(
    loaded: LoadedModel,
    t1: np.ndarray,
    n_samples: int = CHANGE_DRAWS,
    steps: int | None = None,
    temperature: float = 1.0,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    keep: np.ndarray | None = None,
    method: Literal["samples", "marginal"] = "samples",
) -> RegionSimulation:
    """p(t2 = j | t1) per pixel of a region (H, W) at least a chip wide.

    ``samples``: the class shares of ``n_samples`` draws per window (spatially coherent draws; one of them is
    kept as :attr:`RegionSimulation.sample`). ``marginal``: each cell's p(t2 | t1 of its window) in one pass per
    window (smooth, and hundreds of times cheaper; no draw). ``keep`` (H, W) bool marks pixels that cannot
    change (protected land, water): they are known cells of the draws, so the draws around them know it too,
    and their probability is their t1 class.
    """
    check_change_model(loaded)
    size = loaded.chip_size
    height, width = t1.shape
    if height < size or width < size:
        raise UserError(f"the t1 region is {height}x{width}; it must be at least the model's {size}x{size} chip")
    n_classes = loaded.legend.n_classes
    windows = [(r, c) for r in window_starts(height, size, size // 2) for c in window_starts(width, size, size // 2)]
    weights = pyramid_weights(size)
    totals = np.zeros((n_classes, height, width), dtype=np.float32)
    weight_sum = np.zeros((height, width), dtype=np.float32)
    sample = np.full((height, width), NODATA_INDEX, dtype=np.int64)
    best_weight = np.zeros((height, width), dtype=np.float32)
    draws = n_samples if method == "samples" else 1
    jobs = [(index, draw) for index in range(len(windows)) for draw in range(draws)]
    known = np.where(keep, t1, NODATA_INDEX) if keep is not None else np.full_like(t1, NODATA_INDEX)
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        corners = [windows[index] for index, _ in batch]
        chips = np.stack([t1[r : r + size, c : c + size] for r, c in corners])
        if method == "marginal":
            for (r, c), chip_probabilities in zip(corners, window_marginals(loaded, chips, temperature), strict=True):
                totals[:, r : r + size, c : c + size] += chip_probabilities * weights
                weight_sum[r : r + size, c : c + size] += weights
            continue
        drawn = (
            decoding.sample(
                loaded.model,
                covariates=t1_covariates(loaded, chips).to(loaded.model.device),
                known=torch.from_numpy(np.stack([known[r : r + size, c : c + size] for r, c in corners])),
                nodata=torch.from_numpy(chips < 0),
                steps=steps,
                temperature=temperature,
                generator=generator,
            )
            .cpu()
            .numpy()
        )
        for (index, draw), chip in zip(batch, drawn, strict=True):
            r, c = windows[index]
            view = (slice(r, r + size), slice(c, c + size))
            for k in np.unique(chip[chip >= 0]):
                totals[k][view] += (chip == k) * weights
            weight_sum[view] += weights
            if draw == 0:
                better = weights > best_weight[view]
                sample[view] = np.where(better, chip, sample[view])
                best_weight[view] = np.maximum(best_weight[view], weights)
    probabilities = totals / np.maximum(weight_sum, 1e-12)
    kept = (known >= 0) & (t1 >= 0)
    probabilities[:, kept] = np.eye(n_classes, dtype=np.float32)[t1[kept]].T
    probabilities[:, t1 < 0] = 0.0
    sample[t1 < 0] = NODATA_INDEX
    return RegionSimulation(probabilities.astype(np.float32), sample if method == "samples" else None)


@dataclass
class ChangeMaps:
    """Per-pixel summaries of p(t2 | t1) on a region; nodata pixels hold 0 and -1."""

    p_change: np.ndarray  # (H, W) float32: 1 - p(t2 = t1)
    destination: np.ndarray  # (H, W) int64: the most likely class other than t1's; -1 at nodata
    p_destination: np.ndarray  # (H, W) float32: its probability


def change_maps(t1: np.ndarray, probabilities: np.ndarray) -> ChangeMaps:
    valid = t1 >= 0
    own_class = np.where(valid, t1, 0)[None]
    stay = np.take_along_axis(probabilities, own_class, axis=0)[0]
    others = probabilities.copy()
    np.put_along_axis(others, own_class, -1.0, axis=0)
    destination = others.argmax(axis=0)
    p_destination = np.take_along_axis(others, destination[None], axis=0)[0]
    return ChangeMaps(
        p_change=np.where(valid, 1.0 - stay, 0.0).astype(np.float32),
        destination=np.where(valid, destination, NODATA_INDEX),
        p_destination=np.where(valid, p_destination, 0.0).astype(np.float32),
    )


def transition_probability(t1: np.ndarray, probabilities: np.ndarray, targets: list[int]) -> np.ndarray:
    """p(t2 in ``targets``) where t1 is outside them, 0 where it is inside (no transition) or nodata."""
    into = probabilities[targets].sum(axis=0)
    return np.where((t1 >= 0) & ~np.isin(t1, targets), into, 0.0).astype(np.float32)


def probability_bins(p: np.ndarray, bins: int = ALLOCATION_BINS) -> np.ndarray:
    return np.clip((p * bins).astype(np.int64), 0, bins)


class QuantityAllocation:
    """The most likely map under the model's own expected quantities (see the module docstring).

    :meth:`add` regions one by one (tiles of a raster, held-out blocks), then :meth:`thresholds` gives, per
    transition i -> j, the lowest probability bin at which the pixels of class i whose likeliest new class is j
    number at most the expected count of that transition; :meth:`apply` changes the pixels at or above it.
    """

    def __init__(self, n_classes: int, bins: int = ALLOCATION_BINS) -> None:
        self.n_classes, self.bins = n_classes, bins
        self.expected = np.zeros((n_classes, n_classes))
        self.histogram = np.zeros((n_classes, n_classes, bins + 1), dtype=np.int64)

    def add(self, t1: np.ndarray, probabilities: np.ndarray, maps: ChangeMaps) -> None:
        valid = t1 >= 0
        for i in np.unique(t1[valid]):
            self.expected[i] += probabilities[:, t1 == i].sum(axis=1)
        bins = probability_bins(maps.p_destination[valid], self.bins)
        np.add.at(self.histogram, (t1[valid], maps.destination[valid], bins), 1)

    @property
    def quantities(self) -> np.ndarray:
        quantities = np.round(self.expected).astype(np.int64)
        np.fill_diagonal(quantities, 0)
        return quantities

    def markov_quantities(self, matrix: np.ndarray) -> np.ndarray:
        """(K, K) pixels of each transition a Markov matrix expects for the pixels added so far (probabilities
        sum to 1 per pixel, so the rows of ``expected`` sum to the t1 class counts)."""
        quantities = np.round(self.expected.sum(axis=1, keepdims=True) * matrix).astype(np.int64)
        np.fill_diagonal(quantities, 0)
        return quantities

    def thresholds(self, quantities: np.ndarray | None = None) -> np.ndarray:
        """(K, K) int64 bins for the model's own quantities, or ``quantities`` (K, K) from elsewhere (a Markov
        matrix); ``bins + 1`` (never reached) where a transition gets no pixel."""
        quantities = self.quantities if quantities is None else quantities
        at_least = self.histogram[..., ::-1].cumsum(axis=-1)[..., ::-1]  # pixels in bin b or above
        at_least = np.concatenate([at_least, np.zeros((*at_least.shape[:2], 1), dtype=np.int64)], axis=-1)
        # Bin 0 (p below 1 / bins: kept pixels, classes the model never draws there) never changes.
        return np.maximum((at_least <= quantities[..., None]).argmax(axis=-1), 1)

    def apply(self, t1: np.ndarray, maps: ChangeMaps, thresholds: np.ndarray) -> np.ndarray:
        valid = t1 >= 0
        safe_t1, safe_destination = np.where(valid, t1, 0), np.where(valid, maps.destination, 0)
        changes = valid & (probability_bins(maps.p_destination, self.bins) >= thresholds[safe_t1, safe_destination])
        return np.where(changes, maps.destination, t1)


# ------------------------------------------------------------------------------------------------ evaluation


def pair_record(loaded: LoadedModel) -> dict[str, Any] | None:
    """The ``change.json`` of the model's run folder, or None for a model file without one (the packaged model,
    whose own ``change.json`` beside it is its export record, not a pair record)."""
    path = Path(loaded.path).parent / PAIR_RECORD
    if loaded.path.name != MODEL_FILE or not path.is_file():
        return None
    return read_json(path, "change model's pair record (change.json)")


def recorded_pairs(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The training pairs of a change record (records of one pair written before ``pairs`` existed hold it at
    the top level)."""
    if record is None:
        return []
    return record.get("pairs") or [record]


def change_settings(loaded: LoadedModel, record: dict[str, Any] | None) -> dict[str, Any]:
    """The block split and align flag of a change model: from its export (``extra.change``), else from the
    ``change.json`` of run folders trained before the export held them."""
    stored = loaded.metadata.get("extra", {}).get("change")
    if stored:
        return stored
    if record is None:
        raise UserError(
            f"model {loaded.path} records no land-change settings (extra.change in its JSON, or change.json in its "
            "run folder): train it with `landformer landcover change-train`"
        )
    keys = ("block_size", "align", "test_fraction", "val_fraction")
    return {**{key: record[key] for key in keys}, "split_seed": record["seed"]}


def training_counts(loaded: LoadedModel, record: dict[str, Any] | None) -> np.ndarray:
    """(K, K) transition counts of the train blocks of the pairs the model trained on (its Markov matrix)."""
    stored = loaded.metadata.get("extra", {}).get("change", {}).get("train_transitions")
    if stored is not None:
        return np.array(stored, dtype=np.int64)
    pairs = recorded_pairs(record)
    if not pairs:
        raise UserError(f"model {loaded.path} records no training pair, so it has no Markov matrix of its own")
    return sum(training_transitions(pair, record, loaded.legend) for pair in pairs)


def training_transitions(pair: dict[str, Any], record: dict[str, Any], legend: Legend) -> np.ndarray:
    """(K, K) transition counts over the train blocks of one pair of a change record (``t1``, ``t2``, ``roles``)."""
    roles = np.array(pair["roles"], dtype=np.int8)
    block, align = int(record["block_size"]), bool(record["align"])
    t1, t2 = Path(pair["t1"]), Path(pair["t2"])
    with change.open_pair(t1, t2, legend, align) as (first, _, _):
        height, width = first.height, first.width
    blocks = change.role_blocks(roles, change.TRAIN, block, height, width)
    pairs = change.read_pair_blocks(t1, t2, legend, blocks, align)
    return sum(change.transition_counts(a, b, legend.n_classes) for a, b in pairs)


def heldout_chips(blocks_t1: list[np.ndarray], blocks_t2: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping chips (N, S, S) of t1 and t2 inside the blocks, from each block's corner."""
    firsts, seconds = [], []
    for first, second in zip(blocks_t1, blocks_t2, strict=True):
        for r in range(0, first.shape[0] - size + 1, size):
            for c in range(0, first.shape[1] - size + 1, size):
                firsts.append(first[r : r + size, c : c + size])
                seconds.append(second[r : r + size, c : c + size])
    if not firsts:
        raise UserError(f"the held-out blocks hold no {size}x{size} chip to score")
    return np.stack(firsts), np.stack(seconds)


def model_bits(
    loaded: LoadedModel,
    t1_chips: np.ndarray,
    t2_chips: np.ndarray,
    conditional: bool,
    orders: int = 2,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Mean -log2 p(t2 | t1) per valid pixel over ``orders`` random orders (or p(t2), the null conditioning)."""
    generator = torch.Generator(device=loaded.model.device).manual_seed(seed)
    labels = torch.from_numpy(np.where(t1_chips >= 0, t2_chips, -1))
    total, count = 0.0, int((labels >= 0).sum()) * orders
    for _ in range(orders):
        for start in range(0, len(labels), batch_size):
            part = slice(start, start + batch_size)
            covariates = t1_covariates(loaded, t1_chips[part]).to(loaded.model.device) if conditional else None
            log_p = decoding.log_likelihood(loaded.model, labels[part], "random", covariates, None, generator)
            total -= float(torch.nansum(log_p.double()))
    return total / max(count, 1) / math.log(2)


def unconditional_bits(model: str | os.PathLike[str], t2_chips: np.ndarray, orders: int, seed: int) -> float:
    """Bits per pixel of t2 under a separately trained land-cover model without conditioning."""
    loaded = load(model)
    if loaded.model.is_conditional:
        raise UserError(f"--unconditional model {model} is conditioned; give a model trained without covariates")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.from_numpy(t2_chips)
    totals = [
        float(-decoding.log_likelihood(loaded.model, labels, "random", None, None, generator).nanmean())
        for _ in range(orders)
    ]
    return sum(totals) / len(totals) / math.log(2)


def choose_ca_radius(
    blocks_t1: list[np.ndarray], blocks_t2: list[np.ndarray], matrix: np.ndarray, seed: int
) -> tuple[int, dict[str, float]]:
    """The Markov-CA neighbourhood radius with the best Figure of Merit on the validation blocks."""
    n_classes = matrix.shape[0]
    foms = {}
    for radius in CA_RADII:
        predicted = change.markov_ca(blocks_t1, matrix, radius, seed)
        foms[str(radius)] = change.pooled_score(blocks_t1, blocks_t2, predicted, n_classes).figure_of_merit
    best = max(CA_RADII, key=lambda radius: np.nan_to_num(foms[str(radius)], nan=-1.0))
    return best, foms


@dataclass
class ModelPredictions:
    """The model's maps of t2 on some blocks under each quantity source, and its change probabilities."""

    maps: dict[str, list[np.ndarray]]  # "model_own_quantity", "model_markov_quantity" (+ "model_one_draw")
    p_change: list[np.ndarray]
    expected_change: float  # the model's own expected share of changed pixels


def model_predictions(
    loaded: LoadedModel,
    blocks_t1: list[np.ndarray],
    matrix: np.ndarray,
    method: Literal["samples", "marginal"],
    n_samples: int,
    steps: int | None,
    temperature: float,
    batch_size: int,
    generator: torch.Generator,
) -> ModelPredictions:
    """Simulate each block, then place the model's own expected quantities, or the Markov matrix's, where the
    model is surest (over all blocks together, as Markov-CA does)."""
    allocation = QuantityAllocation(loaded.legend.n_classes)
    simulations, maps = [], []
    for first in blocks_t1:
        simulations.append(
            simulate_region(loaded, first, n_samples, steps, temperature, batch_size, generator, method=method)
        )
        maps.append(change_maps(first, simulations[-1].probabilities))
        allocation.add(first, simulations[-1].probabilities, maps[-1])
    predictions = {
        name: [allocation.apply(first, m, thresholds) for first, m in zip(blocks_t1, maps, strict=True)]
        for name, thresholds in (
            ("model_own_quantity", allocation.thresholds()),
            ("model_markov_quantity", allocation.thresholds(allocation.markov_quantities(matrix))),
        )
    }
    if method == "samples":
        predictions["model_one_draw"] = [simulation.sample for simulation in simulations]
    pixels = sum(int((block >= 0).sum()) for block in blocks_t1)
    return ModelPredictions(predictions, [m.p_change for m in maps], allocation.quantities.sum() / max(pixels, 1))


@dataclass
class ChangeEvaluation:
    summary: dict[str, Any]
    blocks_t1: list[np.ndarray]
    blocks_t2: list[np.ndarray]
    predictions: dict[str, list[np.ndarray]]
    p_change: list[np.ndarray]


def evaluate_change(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    t1: str | os.PathLike[str] | None = None,
    t2: str | os.PathLike[str] | None = None,
    method: Literal["samples", "marginal"] = "samples",
    n_samples: int = CHANGE_DRAWS,
    steps: int | None = None,
    temperature: float = 1.0,
    batch_size: int = 64,
    orders: int = 2,
    unconditional: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> ChangeEvaluation:
    """Score the change model, persistence and Markov-CA on the test blocks of a pair; writes
    ``change_eval.json`` and ``change_eval.png`` into ``out``.

    The pair is the model's own (its run folder's ``change.json``) unless ``t1`` and ``t2`` name another. A pair
    the model trained on keeps the block roles of its training; any other pair is cut into its own train /
    validation / test blocks with the model's block size, fractions and split seed (on the grid of a training
    pair, the same blocks). Either way the Markov matrix is counted on the pair's train blocks, Markov-CA's
    radius and the model's quantity source are chosen on its validation blocks, and everything is scored on its
    test blocks; the model never trains on a pair it is evaluated on this way."""
    began = time.perf_counter()
    loaded = load(model, device)
    check_change_model(loaded)
    record = pair_record(loaded)
    settings_of_model = change_settings(loaded, record)
    legend = loaded.legend
    n_classes = legend.n_classes
    if (t1 is None) != (t2 is None):
        raise UserError("change-evaluate: give --t1 and --t2 together")
    if t1 is None:
        pairs = recorded_pairs(record)
        if len(pairs) != 1:
            trained_on = f"was trained on {len(pairs)} pairs" if pairs else "has no run folder with its training pair"
            raise UserError(f"model {loaded.path} {trained_on}: give --t1 and --t2, a pair to evaluate it on")
        t1, t2 = pairs[0]["t1"], pairs[0]["t2"]
    t1, t2 = Path(t1), Path(t2)
    own = [
        pair for pair in recorded_pairs(record) if (pair["t1"], pair["t2"]) == (str(t1.resolve()), str(t2.resolve()))
    ]
    block = int(settings_of_model["block_size"])
    align = bool(settings_of_model["align"])
    with change.open_pair(t1, t2, legend, align) as (first, _, _):
        height, width = first.height, first.width
    if own:
        roles = np.array(own[0]["roles"], dtype=np.int8)
        split = "the model's training pair: its own test blocks, held out from training"
    else:
        roles = change.block_roles(
            height,
            width,
            loaded.chip_size,
            block,
            float(settings_of_model["test_fraction"]),
            float(settings_of_model["val_fraction"]),
            int(settings_of_model["split_seed"]),
            str(t1),
        )
        split = "a pair the model did not train on, cut into its own train / validation / test blocks"

    def read(role: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        pairs = change.read_pair_blocks(t1, t2, legend, change.role_blocks(roles, role, block, height, width), align)
        return [a for a, _ in pairs], [b for _, b in pairs]

    train_t1, train_t2 = read(change.TRAIN)
    counts = sum(
        (change.transition_counts(a, b, n_classes) for a, b in zip(train_t1, train_t2, strict=True)),
        np.zeros((n_classes, n_classes), dtype=np.int64),
    )
    matrix = change.transition_matrix(counts)
    val_t1, val_t2 = read(change.VALIDATION)
    radius, radius_foms = choose_ca_radius(val_t1, val_t2, matrix, seed) if val_t1 else (CA_RADII[0], {})
    generator = torch.Generator(device=loaded.model.device).manual_seed(seed)
    settings = (method, n_samples, steps, temperature, batch_size, generator)
    quantity_foms: dict[str, float] = {}
    if val_t1:
        validation = model_predictions(loaded, val_t1, matrix, *settings)
        for name in ("model_own_quantity", "model_markov_quantity"):
            score = change.pooled_score(val_t1, val_t2, validation.maps[name], n_classes)
            quantity_foms[name] = score.figure_of_merit
    best = max(quantity_foms, key=lambda name: np.nan_to_num(quantity_foms[name], nan=-1.0)) if quantity_foms else None
    chosen = best or "model_own_quantity"
    test_t1, test_t2 = read(change.TEST)
    model_maps = model_predictions(loaded, test_t1, matrix, *settings)
    predictions = {
        "persistence": [a.copy() for a in test_t1],
        "markov_ca": change.markov_ca(test_t1, matrix, radius, seed),
        "model": model_maps.maps[chosen],
        **model_maps.maps,
    }
    scores = {
        name: change.pooled_score(test_t1, test_t2, maps_, n_classes).to_dict() for name, maps_ in predictions.items()
    }
    observed = change.pooled_score(test_t1, test_t2, test_t2, n_classes)
    t1_chips, t2_chips = heldout_chips(test_t1, test_t2, loaded.chip_size)
    bits = {
        "model_given_t1": model_bits(loaded, t1_chips, t2_chips, True, orders, batch_size, seed),
        "model_null_conditioning": model_bits(loaded, t1_chips, t2_chips, False, orders, batch_size, seed),
        "markov_per_pixel": change.markov_bits(t1_chips, t2_chips, counts),
    }
    if unconditional is not None:
        bits["unconditional_model"] = unconditional_bits(
            unconditional, np.where(t1_chips >= 0, t2_chips, -1), orders, seed
        )
    summary = {
        "model": str(loaded.path),
        "t1": str(t1),
        "t2": str(t2),
        "split": split,
        "blocks": {name: int((roles == role).sum()) for name, role in BLOCK_ROLES.items()},
        "markov_fitted_on": "the train blocks of this pair",
        "test_blocks": len(test_t1),
        "test_pixels": observed.pixels,
        "observed_change": (observed.hits + observed.wrong_hits) / max(observed.pixels, 1),
        "expected_change_model": float(model_maps.expected_change),
        "method": method,
        "model_quantity": chosen,
        "model_quantity_fom_on_validation": quantity_foms,
        "n_samples": n_samples,
        "steps": steps,
        "temperature": temperature,
        "markov_ca_radius": radius,
        "markov_ca_radius_fom_on_validation": radius_foms,
        "scores": scores,
        "bits_per_pixel": bits,
        "bits_chips": len(t1_chips),
        "seconds": round(time.perf_counter() - began, 2),
    }
    result = ChangeEvaluation(summary, test_t1, test_t2, predictions, model_maps.p_change)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    picture = plots.change_panel(
        out / "change_eval.png", result.blocks_t1, result.blocks_t2, result.predictions, result.p_change, legend
    )
    summary["picture"] = str(picture)
    summary["json"] = str(write_json(out / "change_eval.json", summary))
    return result


# ------------------------------------------------------------------------------------------- large rasters


def _span(start: int, length: int, total: int, margin: int, size: int) -> tuple[int, int]:
    """The rows (or columns) read for an output span: ``margin`` more on each side, at least ``size`` wide."""
    low, high = max(0, start - margin), min(total, start + length + margin)
    if high - low < size:
        low = max(0, high - size)
        high = min(total, low + size)
    return low, high


def transition_targets(legend: Legend, name: str, flag: str = "--to") -> list[int]:
    """Class indices of a transition of interest (``--to``) or of classes kept (``--keep``): a legend group
    (developed) or one class code or name."""
    if name in legend.groups:
        return legend.group_indices(name)
    for index, (code, class_name) in enumerate(zip(legend.codes, legend.names, strict=True)):
        if name in (str(code), class_name):
            return [index]
    raise UserError(
        f"{flag} {name!r} is neither a group ({', '.join(legend.groups) or 'none'}) nor a class code or name of legend "
        f"'{legend.name}'"
    )


def simulate_change(
    model: str | os.PathLike[str],
    t1: str | os.PathLike[str],
    out: str | os.PathLike[str],
    n_samples: int = CHANGE_DRAWS,
    steps: int | None = None,
    temperature: float = 1.0,
    transitions: tuple[str, ...] = ("developed",),
    keep_classes: tuple[str, ...] = (),
    method: Literal["samples", "marginal"] = "samples",
    quantity: Literal["model", "markov"] = "model",
    tile: int = 256,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
    assume_crs: str | None = None,
) -> dict[str, Any]:
    """Simulate t2 from a t1 raster of any size, tile by tile (t1 classes in ``keep_classes`` never change), with
    p(t2 | t1) from ``method`` (see :func:`simulate_region`) and the map's quantities from the model or from the
    Markov matrix of its training pair (``quantity``); writes GeoTIFFs on t1's grid into ``out``:
    ``t2_map.tif`` (the most likely map, legend codes), ``p_change.tif``, ``p_to_<name>.tif`` per transition,
    ``destination.tif`` (each pixel's likeliest new class), ``p_destination.tif`` and ``change_simulation.json``."""
    began = time.perf_counter()
    if n_samples < 1 or tile < 1 or batch_size < 1:
        raise UserError(f"change-simulate: samples {n_samples}, tile {tile} and batch size {batch_size} should be >= 1")
    loaded = load(model, device)
    check_change_model(loaded)
    legend, size = loaded.legend, loaded.chip_size
    targets = {name: transition_targets(legend, name) for name in transitions}
    kept = [index for name in keep_classes for index in transition_targets(legend, name, "--keep")]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=loaded.model.device).manual_seed(seed)
    allocation = QuantityAllocation(legend.n_classes)
    nodata_code = legend.nodata_codes[0] if legend.nodata_codes else 0
    code_dtype = class_dtype(legend)
    paths = {
        "p_change": out / "p_change.tif",
        "destination": out / "destination.tif",
        "p_destination": out / "p_destination.tif",
        **{f"p_to_{name}": out / f"p_to_{name}.tif" for name in transitions},
    }
    with open_raster(t1, assume_crs) as dataset:
        grid = RasterGrid.of(dataset)
        if grid.height < size or grid.width < size:
            raise UserError(f"t1 raster {t1} is {grid.height}x{grid.width} px, smaller than the model's {size} px chip")
        read = change.class_reader(dataset, legend)

        with contextlib.ExitStack() as stack:
            writers = {
                name: stack.enter_context(
                    geotiff_writer(
                        path,
                        grid.width,
                        grid.height,
                        1,
                        code_dtype if name == "destination" else np.float32,
                        grid.transform,
                        grid.crs,
                        nodata=nodata_code if name == "destination" else NODATA_PROBABILITY,
                        band_names=[name],
                        tags={"model": str(loaded.path), "t1": str(t1), "samples": n_samples},
                        legend=legend if name == "destination" else None,
                    )
                )
                for name, path in paths.items()
            }
            for window in iter_windows(grid.height, grid.width, tile):
                row, col, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
                rows = _span(row, h, grid.height, size // 2, size)
                cols = _span(col, w, grid.width, size // 2, size)
                region = read(Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0]))
                keep = np.isin(region, kept) if kept else None
                simulation = simulate_region(
                    loaded, region, n_samples, steps, temperature, batch_size, generator, keep, method
                )
                inner = (slice(row - rows[0], row - rows[0] + h), slice(col - cols[0], col - cols[0] + w))
                first = region[inner]
                probabilities = simulation.probabilities[:, inner[0], inner[1]]
                maps = change_maps(first, probabilities)
                allocation.add(first, probabilities, maps)
                nodata = first < 0
                bands = {
                    "p_change": maps.p_change,
                    "destination": legend.decode(maps.destination, nodata_code).astype(code_dtype),
                    "p_destination": maps.p_destination,
                    **{f"p_to_{n}": transition_probability(first, probabilities, t) for n, t in targets.items()},
                }
                for name, values in bands.items():
                    if name != "destination":
                        values = np.where(nodata, NODATA_PROBABILITY, values).astype(np.float32)
                    writers[name].write(values[None], window=window)
        if quantity == "markov":
            matrix = change.transition_matrix(training_counts(loaded, pair_record(loaded)))
            quantities = allocation.markov_quantities(matrix)
        else:
            quantities = allocation.quantities
        thresholds = allocation.thresholds(quantities)
        index_of = {code: index for index, code in enumerate(legend.codes)}
        lookup = np.full(int(max(legend.codes)) + 1, NODATA_INDEX, dtype=np.int64)
        lookup[list(index_of)] = list(index_of.values())
        map_path = out / "t2_map.tif"
        with (
            open_raster(paths["destination"]) as destination_file,
            open_raster(paths["p_destination"]) as probability_file,
            geotiff_writer(
                map_path,
                grid.width,
                grid.height,
                1,
                code_dtype,
                grid.transform,
                grid.crs,
                nodata=nodata_code,
                band_names=["t2"],
                tags={"model": str(loaded.path), "t1": str(t1), "samples": n_samples, "legend": legend.name},
                legend=legend,
            ) as writer,
        ):
            for window in iter_windows(grid.height, grid.width, tile):
                first = read(window)
                codes = destination_file.read(1, window=window).astype(np.int64)
                destination = np.where(codes <= lookup.size - 1, lookup[np.minimum(codes, lookup.size - 1)], -1)
                maps = ChangeMaps(
                    np.zeros_like(first, np.float32), destination, probability_file.read(1, window=window)
                )
                predicted = allocation.apply(first, maps, thresholds)
                writer.write(legend.decode(predicted, nodata_code).astype(code_dtype)[None], window=window)
    summary = {
        "model": str(loaded.path),
        "t1": str(t1),
        "height": grid.height,
        "width": grid.width,
        "n_samples": n_samples,
        "steps": steps,
        "temperature": temperature,
        "method": method,
        "quantity": quantity,
        "expected_changes": int(quantities.sum()),
        "transitions": {
            f"{legend.codes[i]}->{legend.codes[j]}": int(quantities[i, j])
            for i, j in zip(*np.nonzero(quantities), strict=True)
        },
        "files": {name: str(path) for name, path in {**paths, "t2_map": map_path}.items()},
        "seconds": round(time.perf_counter() - began, 2),
    }
    summary["json"] = str(write_json(out / "change_simulation.json", summary))
    return summary
