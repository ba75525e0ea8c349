"""Sampling, inpainting, scoring and Gibbs sampling with a :class:`~landformer.landcover.model.LandCoverRandAR`.

Everything is batched and draws its randomness from one ``torch.Generator`` (on the model's device, or the CPU
for a CPU model), so a seed reproduces a result exactly.

- :func:`sample` decodes cells in a (random) order through the KV cache, one cell per step (``steps=None``) or
  several per step on a cosine schedule (parallel decoding). With ``known`` it inpaints: known cells go first in
  the order, are teacher-forced into the cache, and come back unchanged.
- :func:`sample_naive` re-encodes the whole decoded prefix at every step: the baseline the cache is measured
  against (same generator consumption, so it returns the same maps as sequential :func:`sample`).
- :func:`log_likelihood` and :func:`perplexity` score maps in given, random or raster orders.
- :func:`conditional_probs` gives p(x_site | every other cell) by putting the site last in the order.
- :func:`gibbs` resamples sites (or blocks of sites) from p(x | rest), the site last in the order, many chains at
  once, re-encoding about sqrt(N) cells per update; :func:`gibbs_naive` is the one-site-one-full-forward baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor

from landformer.core.errors import UserError
from landformer.landcover.model import LandCoverRandAR, random_orders, raster_order

OrderKind = Literal["random", "raster"]


@contextmanager
def _inference(model: LandCoverRandAR) -> Iterator[None]:
    """Eval mode and no autograd for the duration, restoring the model's training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _check_labels(model: LandCoverRandAR, labels: Tensor, name: str) -> None:
    if labels.dim() != 3:
        raise UserError(f"{name} should be (B, H, W) class indices, got shape {tuple(labels.shape)}")
    low, high = int(labels.min()), int(labels.max())
    if low < -1 or high >= model.config.n_classes:
        raise UserError(
            f"{name} holds values {low}..{high}; expected -1 or class indices 0..{model.config.n_classes - 1}"
        )


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise UserError(f"temperature must be > 0 and finite, got {temperature} (use top_k=1 for greedy decoding)")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Keep the ``top_k`` most likely classes and the smallest set whose probability reaches ``top_p``."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_index = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a class once the classes before it already reach top_p; the most likely class always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, sorted_index, sorted_logits.masked_fill(drop, -math.inf))
    return logits


def sample_from_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one class per row of ``logits`` (..., K) after temperature, top-k and top-p."""
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    if generator is not None:
        flat = flat.to(generator.device)
    draws = torch.multinomial(flat, 1, generator=generator)
    return draws.view(probs.shape[:-1]).to(logits.device)


def decoding_schedule(n_tokens: Tensor, steps: int | None) -> Tensor:
    """Cumulative number of decoded cells after each step, (B, S + 1), starting at 0 and ending at ``n_tokens``.

    ``steps=None`` decodes one cell per step. Otherwise the decoded fraction after step s of S follows
    ``1 - cos(pi/2 * s/S)``: few cells while little is known, many at the end (RandAR, MaskGIT). Every step
    decodes at least one cell; a sample with fewer cells than steps decodes one per step and finishes early.
    """
    n_tokens = n_tokens.long().cpu()
    if steps is None:
        steps = int(n_tokens.max()) if n_tokens.numel() else 0
        return torch.minimum(torch.arange(steps + 1).unsqueeze(0), n_tokens.unsqueeze(1))
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    fractions = 1 - torch.cos(math.pi / 2 * torch.arange(steps + 1, dtype=torch.float64) / steps)
    cumulative = torch.round(fractions.unsqueeze(0) * n_tokens.unsqueeze(1)).long()
    for s in range(1, steps + 1):
        cumulative[:, s] = torch.maximum(cumulative[:, s], cumulative[:, s - 1] + 1)
    cumulative[:, steps] = n_tokens
    for s in range(steps - 1, -1, -1):
        cumulative[:, s] = torch.minimum(cumulative[:, s], cumulative[:, s + 1] - 1)
    one_per_step = torch.minimum(torch.arange(steps + 1).unsqueeze(0), n_tokens.unsqueeze(1))
    return torch.where((n_tokens >= steps).unsqueeze(1), cumulative, one_per_step)


def generation_order(known: Tensor, kind: OrderKind, generator: torch.Generator | None = None) -> Tensor:
    """Visiting order (B, N) with the known cells (>= 0) first, each group in random or raster order."""
    batch, n_cells = known.shape
    if kind == "random":
        order = random_orders(batch, n_cells, generator).to(known.device)
    elif kind == "raster":
        order = raster_order(batch, n_cells, device=known.device)
    else:
        raise UserError(f"order must be 'random' or 'raster', got {kind!r}")
    unknown_first_key = (known.gather(1, order) < 0).to(torch.uint8)
    return order.gather(1, unknown_first_key.argsort(dim=1, stable=True))


class _Session:
    """A decoding session over a batch; doubles the batch with null conditioning for classifier-free guidance."""

    def __init__(
        self,
        model: LandCoverRandAR,
        batch: int,
        height: int,
        width: int,
        covariates: Tensor | None,
        lonlat: Tensor | None,
        guidance: float,
        max_cells: int,
        max_query: int,
        reuse_queries: bool = False,
    ) -> None:
        self.model = model
        self.guidance = guidance
        self.guided = guidance != 0.0
        if self.guided:
            if covariates is None and lonlat is None:
                raise UserError("guidance needs conditioning: pass covariates and/or lonlat to a conditioned model")
            covariates = torch.cat([covariates, covariates]) if covariates is not None else None
            lonlat = torch.cat([lonlat, lonlat]) if lonlat is not None else None
            batch, drop = 2 * batch, torch.arange(2 * batch, device=model.device) >= batch
        else:
            drop = None
        self.state = model.start_decoding(
            batch, height, width, covariates, lonlat, drop, max_cells, max_query, reuse_queries
        )

    def _twice(self, tensor: Tensor | None) -> Tensor | None:
        return torch.cat([tensor, tensor]) if self.guided and tensor is not None else tensor

    def rewind(self, n_cells: int) -> None:
        """Keep the prefix and the first ``n_cells`` committed cells (all of it runs again when ``n_cells`` is 0)."""
        self.state.rewind(self.state.prefix_tokens.shape[1] + 2 * n_cells if n_cells else 0)

    def commit(self, cells: Tensor, classes: Tensor, valid: Tensor | None = None) -> None:
        self.model.decode_commit(self.state, self._twice(cells), self._twice(classes), self._twice(valid))

    def step(self, classes: Tensor | None, cells: Tensor, valid: Tensor | None = None) -> Tensor:
        logits = self.model.decode_step(self.state, self._twice(classes), self._twice(cells), self._twice(valid))
        return self._guide(logits)

    def commit_and_query(self, cells: Tensor, classes: Tensor, query_cell: Tensor) -> Tensor:
        twice = self._twice
        logits = self.model.decode_commit_and_query(self.state, twice(cells), twice(classes), twice(query_cell))
        return self._guide(logits)

    def _guide(self, logits: Tensor) -> Tensor:
        if not self.guided:
            return logits
        conditional, unconditional = logits.float().chunk(2)
        return conditional + self.guidance * (conditional - unconditional)


def _chip_shape(
    model: LandCoverRandAR,
    n: int | None,
    known: Tensor | None,
    nodata: Tensor | None,
    height: int | None,
    width: int | None,
) -> tuple[int, int, int]:
    given = known if known is not None else nodata
    if known is not None and nodata is not None and nodata.shape != known.shape:
        raise UserError(f"nodata mask has shape {tuple(nodata.shape)}, expected the known map's {tuple(known.shape)}")
    if given is not None:
        if given.dim() != 3:
            raise UserError(f"known / nodata should be (B, H, W), got shape {tuple(given.shape)}")
        return given.shape[0], given.shape[1], given.shape[2]
    if n is None or n < 1:
        raise UserError(f"give the number of samples n (>= 1) or a known map to inpaint, got n={n}")
    return n, height or model.config.chip_size, width or model.config.chip_size


def sample(
    model: LandCoverRandAR,
    n: int | None = None,
    order: OrderKind | None = None,
    steps: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    guidance: float = 0.0,
    known: Tensor | None = None,
    nodata: Tensor | None = None,
    height: int | None = None,
    width: int | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[Tensor], None] | None = None,
    reuse_queries: bool = True,
) -> Tensor:
    """Generate (B, H, W) class maps with the KV cache.

    ``steps=None`` decodes one cell per step; an integer S decodes on a cosine schedule in S steps (parallel
    decoding; each step's cells are drawn independently given everything decided before). ``reuse_queries``
    keeps the position instructions of a parallel step in the cache instead of running them again when their
    classes are committed: 2 instead of about 3 token passes per cell, with instructions that did not see the
    classes drawn beside them (see :meth:`LandCoverRandAR.decode_step`); sequential decoding is exact either
    way. ``guidance`` w mixes logits as ``cond + w * (cond - null)``.

    ``known`` (B, H, W) with -1 for unknown cells turns this into inpainting: known cells are placed first and
    teacher-forced, and are returned unchanged. -1 means "draw this cell", so nodata cells that must stay
    nodata go in ``nodata`` (B, H, W) bool instead: they are given to the model as nodata, the way training
    chips show it, whatever ``known`` holds there, and come back as -1. ``nodata`` alone (without ``known``)
    samples maps around fixed holes. ``on_step`` receives the canvas (B, H, W), -1 where undecoded, after every
    step (frames for an animation).
    """
    _check_sampling(temperature, top_k, top_p)
    if known is not None:
        _check_labels(model, known, "known")
    batch, height, width = _chip_shape(model, n, known, nodata, height, width)
    n_cells = height * width
    device = model.device
    with _inference(model):
        if known is None:
            known_flat = torch.full((batch, n_cells), -1, dtype=torch.long, device=device)
        else:
            known_flat = known.reshape(batch, n_cells).long().to(device)
        given = known_flat >= 0
        if nodata is not None:
            nodata_flat = nodata.reshape(batch, n_cells).to(device=device, dtype=torch.bool)
            known_flat = known_flat.masked_fill(nodata_flat, -1)
            given |= nodata_flat
        # generation_order puts cells >= 0 first: every given cell, nodata included.
        cell_order = generation_order(torch.where(given, 0, -1), order or model.config.order, generator)
        n_known = given.sum(dim=1).cpu()
        schedule = decoding_schedule(n_cells - n_known, steps)
        counts = schedule.diff(dim=1)
        most_known = int(n_known.max())
        # Every sample commits as many slots as the widest one, known cells and cells per step (padding).
        capacity = most_known + int(counts.max(dim=0).values.sum())
        widest_step = int(counts.max()) if counts.numel() else 1
        session = _Session(
            model, batch, height, width, covariates, lonlat, guidance, capacity, widest_step, reuse_queries
        )
        if most_known > 0:
            cells = cell_order[:, :most_known]
            padded = not bool((n_known == most_known).all())
            valid = (torch.arange(most_known) < n_known.unsqueeze(1)).to(device) if padded else None
            session.commit(cells, known_flat.gather(1, cells), valid)
        # One spare column takes the writes of padded slots so they can never touch a real cell.
        canvas = torch.cat([known_flat, torch.full((batch, 1), -1, dtype=torch.long, device=device)], dim=1)
        # Every step's cells are gathered up front so the loop itself never waits on a host-to-device copy.
        plan = []
        for step in range(counts.shape[1]):
            step_counts = counts[:, step]
            if int(step_counts.max()) == 0:
                continue
            slots = torch.arange(int(step_counts.max()))
            index = (n_known + schedule[:, step]).unsqueeze(1) + slots
            valid = slots < step_counts.unsqueeze(1)
            cells = cell_order.gather(1, index.clamp(max=n_cells - 1).to(device))
            if bool(valid.all()):
                plan.append((cells, None, cells))
            else:
                valid = valid.to(device)
                plan.append((cells, valid, torch.where(valid, cells, n_cells)))
        classes = None
        for cells, valid, targets in plan:
            logits = session.step(classes, cells, valid)
            classes = sample_from_logits(logits, temperature, top_k, top_p, generator)
            canvas.scatter_(1, targets, classes)
            if on_step is not None:
                on_step(canvas[:, :n_cells].reshape(batch, height, width).clone())
        return canvas[:, :n_cells].reshape(batch, height, width)


def sample_naive(
    model: LandCoverRandAR,
    n: int,
    order: OrderKind | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    height: int | None = None,
    width: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sequential sampling that re-encodes the whole decoded prefix at every step (no KV cache): the baseline."""
    _check_sampling(temperature, top_k, top_p)
    batch, height, width = _chip_shape(model, n, None, None, height, width)
    n_cells = height * width
    device = model.device
    with _inference(model):
        unknown = torch.full((batch, n_cells), -1, dtype=torch.long, device=device)
        cell_order = generation_order(unknown, order or model.config.order, generator)
        prefix = model.encode_conditioning(batch, height, width, covariates, lonlat)
        classes = torch.empty(batch, 0, dtype=torch.long, device=device)
        for t in range(n_cells):
            logits = model.forward_sequence(cell_order[:, : t + 1], classes, width, prefix)[:, -1:]
            classes = torch.cat([classes, sample_from_logits(logits, temperature, top_k, top_p, generator)], dim=1)
        return unknown.scatter(1, cell_order, classes).reshape(batch, height, width)


def _resolve_order(
    model: LandCoverRandAR, order: Tensor | OrderKind, batch: int, n_cells: int, generator: torch.Generator | None
) -> Tensor:
    if isinstance(order, Tensor):
        if tuple(order.shape) != (batch, n_cells):
            raise UserError(f"order has shape {tuple(order.shape)}, expected ({batch}, {n_cells})")
        return order.to(model.device)
    if order == "random":
        return random_orders(batch, n_cells, generator).to(model.device)
    if order == "raster":
        return raster_order(batch, n_cells, device=model.device)
    raise UserError(f"order must be 'random', 'raster' or a (B, N) tensor, got {order!r}")


def log_likelihood(
    model: LandCoverRandAR,
    labels: Tensor,
    order: Tensor | OrderKind = "random",
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-pixel log p(x_cell | cells before it in ``order``), (B, H, W) float32; NaN at nodata pixels."""
    _check_labels(model, labels, "labels")
    batch, height, width = labels.shape
    with _inference(model):
        labels = labels.to(model.device)
        cell_order = _resolve_order(model, order, batch, height * width, generator)
        logits, _ = model(labels, cell_order, covariates, lonlat)
        targets = labels.reshape(batch, -1).long().gather(1, cell_order)
        log_p = logits.float().log_softmax(dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        log_p = log_p.masked_fill(targets < 0, math.nan)
        return torch.empty_like(log_p).scatter(1, cell_order, log_p).reshape(batch, height, width)


def perplexity(
    model: LandCoverRandAR,
    labels: Tensor,
    n_orders: int = 8,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float | list[float]]:
    """Perplexity exp(mean NLL per valid pixel) over ``n_orders`` random orders (NLL averaged) and in raster order."""
    if n_orders < 1:
        raise UserError(f"n_orders must be >= 1, got {n_orders}")

    def mean_nll(order: OrderKind) -> float:
        log_p = log_likelihood(model, labels, order, covariates, lonlat, generator)
        return float(-log_p.nanmean())

    random_nll = [mean_nll("random") for _ in range(n_orders)]
    return {
        "random": math.exp(sum(random_nll) / n_orders),
        "raster": math.exp(mean_nll("raster")),
        "random_per_order": [math.exp(nll) for nll in random_nll],
    }


def conditional_probs(
    model: LandCoverRandAR,
    labels: Tensor,
    sites: Tensor,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    rest_order: OrderKind = "random",
    generator: torch.Generator | None = None,
) -> Tensor:
    """p(x_site | all other cells) for ``sites`` (B, S) flat cell indices: (B, S, K).

    Each (sample, site) pair is one sequence with the site last and the other cells before it in random or
    raster order; all B * S sequences go through one forward pass (chunk the sites to bound memory).
    """
    _check_labels(model, labels, "labels")
    batch, height, width = labels.shape
    n_cells = height * width
    n_sites = sites.shape[1]
    with _inference(model):
        device = model.device
        sites = sites.to(device).reshape(-1, 1)
        flat = labels.to(device).reshape(batch, n_cells).long().repeat_interleave(n_sites, dim=0)
        if rest_order == "random":
            keys = torch.rand(
                batch * n_sites, n_cells, generator=generator, device=generator.device if generator else None
            )
            keys = keys.to(device)
        else:
            keys = torch.arange(n_cells, device=device, dtype=torch.float32).expand(batch * n_sites, n_cells).clone()
        keys.scatter_(1, sites, math.inf)
        cell_order = keys.argsort(dim=1)
        classes = flat.gather(1, cell_order[:, :-1])
        expanded = [c.repeat_interleave(n_sites, dim=0) if c is not None else None for c in (covariates, lonlat)]
        prefix = model.encode_conditioning(batch * n_sites, height, width, *expanded)
        logits = model.forward_sequence(cell_order, classes, width, prefix)[:, -1]
        return logits.float().softmax(dim=-1).reshape(batch, n_sites, -1)


def default_group_size(n_cells: int, block_size: int) -> int:
    """Cells per Gibbs group for single-site updates: about sqrt(N), which balances a group's two costs (see
    :func:`gibbs`), as a multiple of ``block_size``."""
    return max(1, round(math.sqrt(n_cells) / block_size)) * block_size


def gibbs(
    model: LandCoverRandAR,
    labels: Tensor,
    sweeps: int,
    block_size: int | None = None,
    temperature: float = 1.0,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    guidance: float = 0.0,
    fixed: Tensor | None = None,
    generator: torch.Generator | None = None,
    group_size: int | None = None,
) -> Iterator[Tensor]:
    """Gibbs sampling of B chains started from ``labels`` (B, H, W); yields the state (B, H, W) after each sweep.

    A sweep visits every cell once: a random permutation per chain is cut into blocks of ``block_size`` cells,
    and each block b is redrawn from p(x_b | rest) by putting it last in the order; its cells are decoded one at
    a time, so ``block_size=1`` is single-site Gibbs with p(x_i | all other cells). The order of the rest is a
    rearrangement of the sweep's permutation, so it is a uniformly random order of the other cells either way.

    The permutation is also cut into groups of ``group_size`` cells (whole blocks). While the blocks of group g
    are redrawn, the order is [the cells outside g in sweep order, g's other blocks in sweep order, the block].
    What a KV cache can keep between two updates is the part of the order before the first cell that changed,
    so the outside cells are encoded about once per group (half of them on average: the groups before g-1 stay
    cached) and each block re-encodes about half of its group. Per single-site update that is about
    N / (2 G) + G / 2 cells instead of the N / 2 of one group of all N cells, and G ~ sqrt(N) gives about
    sqrt(N) (32 instead of 512 cells at 32x32).

    ``block_size=None`` (the default) means single-site updates in groups of :func:`default_group_size`; with a
    ``block_size`` and no ``group_size``, the whole sweep is one group (the order [other blocks, block], which
    re-encodes about N/2 cells per block). Nodata cells (-1) and cells where ``fixed`` is True keep their values
    and act as context.
    """
    _check_labels(model, labels, "labels")
    _check_sampling(temperature, None, None)
    batch, height, width = labels.shape
    n_cells = height * width
    if block_size is None:
        block_size = 1
        group_size = group_size or default_group_size(n_cells, block_size)
    group_size = min(group_size or n_cells, n_cells)
    # A group holds whole blocks; one group of every cell holds them all, the last one perhaps shorter.
    if sweeps < 0 or block_size < 1 or group_size < 1 or (group_size < n_cells and group_size % block_size):
        raise UserError(
            f"need sweeps >= 0, block_size >= 1 and a group_size that is a multiple of block_size, got "
            f"sweeps={sweeps}, block_size={block_size}, group_size={group_size}"
        )
    device = model.device
    state = labels.to(device).reshape(batch, n_cells).long().clone()
    frozen = state < 0
    if fixed is not None:
        if fixed.shape != labels.shape:
            raise UserError(f"fixed has shape {tuple(fixed.shape)}, expected {tuple(labels.shape)}")
        frozen |= fixed.to(device).reshape(batch, n_cells).bool()
    with _inference(model):
        session = _Session(model, batch, height, width, covariates, lonlat, guidance, n_cells, max_query=1)
    for _ in range(sweeps):
        with _inference(model):
            groups = random_orders(batch, n_cells, generator).to(device).split(group_size, dim=1)
            for g, group in enumerate(groups):
                # Groups before g - 1 are unchanged since the last group's pass: they stay cached.
                stale = _rewind_to_stale(session, groups, g, cached_cells=max(g - 1, 0) * group_size)
                if stale is not None:
                    session.commit(stale, state.gather(1, stale))
                outside = n_cells - group.shape[1]
                blocks = group.split(block_size, dim=1)
                for j, block in enumerate(blocks):
                    stale = _rewind_to_stale(session, blocks, j, cached_cells=outside + max(j - 1, 0) * block_size)
                    classes = None
                    for t in range(block.shape[1]):
                        site = block[:, t : t + 1]
                        if t == 0 and stale is not None:
                            # The stale cells and the first query in one pass: the weights are read once.
                            logits = session.commit_and_query(stale, state.gather(1, stale), site)
                        else:
                            logits = session.step(classes, site)
                        drawn = sample_from_logits(logits, temperature, generator=generator)
                        classes = torch.where(frozen.gather(1, site), state.gather(1, site), drawn)
                        state.scatter_(1, site, classes)
        yield state.reshape(batch, height, width).clone()


def _rewind_to_stale(session: _Session, parts: tuple[Tensor, ...], j: int, cached_cells: int) -> Tensor | None:
    """Rewind the cache to its first ``cached_cells`` cells; return the cells to commit after them so that it
    holds every part but j in their order: the part just redrawn (j - 1) and the parts after j (None if none)."""
    session.rewind(cached_cells)
    stale_parts = parts[max(j - 1, 0) : j] + parts[j + 1 :]
    return torch.cat(stale_parts, dim=1) if stale_parts else None


def gibbs_naive(
    model: LandCoverRandAR,
    labels: Tensor,
    sweeps: int,
    temperature: float = 1.0,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """Single-site Gibbs with one full forward pass per site update (:func:`conditional_probs`): the baseline."""
    _check_labels(model, labels, "labels")
    batch, height, width = labels.shape
    n_cells = height * width
    state = labels.to(model.device).reshape(batch, n_cells).long().clone()
    frozen = state < 0
    for _ in range(sweeps):
        permutation = random_orders(batch, n_cells, generator).to(model.device)
        for t in range(n_cells):
            site = permutation[:, t : t + 1]
            probs = conditional_probs(
                model, state.reshape(batch, height, width), site, covariates, lonlat, "random", generator
            )
            drawn = sample_from_logits(probs.log(), temperature, generator=generator)
            state.scatter_(1, site, torch.where(frozen.gather(1, site), state.gather(1, site), drawn))
        yield state.reshape(batch, height, width).clone()
