"""Land-cover RandAR model and decoding: exact identities on a tiny model with sharpened random weights."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from landformer.core.errors import UserError
from landformer.landcover import decoding
from landformer.landcover.config import reference_config, tiny_config
from landformer.landcover.model import (
    LandCoverConfig,
    LandCoverRandAR,
    random_orders,
    raster_order,
)

K, SIZE, N = 5, 8, 64


def build(seed: int = 0, **overrides: object) -> LandCoverRandAR:
    """A tiny model whose weights are scaled up so logits vary by O(1): equalities are then meaningful, and samples
    are far from uniform. ``overrides`` replace any LandCoverConfig field (classes, chip size, shape)."""
    torch.manual_seed(seed)
    fields: dict[str, object] = {"n_classes": K, "chip_size": SIZE, "n_layers": 2, "n_heads": 2, "dim": 32, **overrides}
    config = LandCoverConfig(**fields)  # type: ignore[arg-type]
    model = LandCoverRandAR(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 1 and param.numel() > 1 and not torch.all(param == 1):
                param.normal_(0, 0.3)
    return model


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors run fastest on one thread; two threads on a busy 2-core machine are ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> LandCoverRandAR:
    return build()


@pytest.fixture(scope="module")
def conditional_model() -> LandCoverRandAR:
    return build(seed=1, covariate_channels=2, covariate_patch=4, use_lonlat=True, cond_dropout=0.5)


def random_labels(batch: int, seed: int, nodata: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (batch, SIZE, SIZE), generator=generator)
    labels[torch.rand(batch, SIZE, SIZE, generator=generator) < nodata] = -1
    return labels


def chain_rule_log_probs(model: LandCoverRandAR, labels: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """log p(x_t | x_<t) for every t by re-running the model on each prefix: the explicit chain rule."""
    batch = labels.shape[0]
    targets = labels.reshape(batch, -1).gather(1, order)
    prefix = model.encode_conditioning(batch, SIZE, SIZE)
    steps = []
    for t in range(order.shape[1]):
        logits = model.forward_sequence(order[:, : t + 1], targets[:, :t], SIZE, prefix)[:, -1]
        steps.append(logits.log_softmax(-1).gather(1, targets[:, t : t + 1].clamp(min=0)).squeeze(1))
    return torch.stack(steps, dim=1)


def test_logits_vary(model: LandCoverRandAR) -> None:
    logits, _ = model(random_labels(2, 0))
    assert logits.shape == (2, N, K)
    assert logits.std() > 0.3  # otherwise the equality tests below would prove little


def test_probabilities_sum_to_one(model: LandCoverRandAR) -> None:
    labels = random_labels(2, 1)
    sites = torch.tensor([[0, 9, 63], [5, 5, 30]])
    probs = decoding.conditional_probs(model, labels, sites, generator=torch.Generator().manual_seed(0))
    assert probs.shape == (2, 3, K)
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3))
    # Scoring every possible class of the last cell in an order also sums to one.
    order = raster_order(1, N)
    total = sum(
        decoding.log_likelihood(model, torch.where(torch.arange(N).view(1, SIZE, SIZE) == N - 1, k, labels[:1]), order)[
            0, -1, -1
        ].exp()
        for k in range(K)
    )
    assert float(total) == pytest.approx(1.0, abs=1e-5)


def test_loss_equals_chain_rule_log_likelihood(model: LandCoverRandAR) -> None:
    labels = random_labels(2, 2, nodata=0.2)
    order = random_orders(2, N, torch.Generator().manual_seed(3))
    logits, loss = model(labels, order)
    log_p = chain_rule_log_probs(model, labels, order)
    valid = labels.reshape(2, -1).gather(1, order) >= 0
    torch.testing.assert_close(loss, -log_p[valid].mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        logits.log_softmax(-1).gather(-1, labels.reshape(2, -1).gather(1, order).clamp(min=0)[..., None])[..., 0][
            valid
        ],
        log_p[valid],
        atol=1e-5,
        rtol=1e-5,
    )
    per_pixel = decoding.log_likelihood(model, labels, order)
    assert torch.isnan(per_pixel[labels < 0]).all()
    torch.testing.assert_close(per_pixel[labels >= 0].mean(), -loss, atol=1e-5, rtol=1e-5)


def test_nodata_is_excluded_from_the_loss(model: LandCoverRandAR) -> None:
    labels = random_labels(1, 4)
    order = random_orders(1, N, torch.Generator().manual_seed(5))
    last_cell = int(order[0, -1])
    logits, full_loss = model(labels, order)
    with_nodata = labels.clone()
    with_nodata.view(-1)[last_cell] = -1
    _, loss = model(with_nodata, order)
    # The last cell's class is never fed, so marking it nodata only removes its own cross-entropy term.
    last_term = -logits[0, -1].log_softmax(-1)[labels.view(-1)[last_cell]]
    torch.testing.assert_close(loss * (N - 1), full_loss * N - last_term, atol=1e-4, rtol=1e-5)
    _, empty_loss = model(torch.full_like(labels, -1), order)
    assert float(empty_loss.detach()) == 0.0


def test_raster_config_trains_in_raster_order() -> None:
    model = build(order="raster")
    labels = random_labels(2, 6)
    torch.testing.assert_close(model(labels)[0], model(labels, raster_order(2, N))[0])


def test_cached_and_uncached_logits_are_identical(model: LandCoverRandAR) -> None:
    labels = random_labels(3, 7, nodata=0.1)
    order = random_orders(3, N, torch.Generator().manual_seed(8))
    full_logits, _ = model(labels, order)
    targets = labels.reshape(3, -1).gather(1, order)
    with torch.no_grad():
        state = model.start_decoding(3, SIZE, SIZE)
        model.decode_commit(state, order[:, :10], targets[:, :10])
        classes, cached = None, []
        for t in range(10, N):
            cached.append(model.decode_step(state, classes, order[:, t : t + 1]))
            classes = targets[:, t : t + 1]
    torch.testing.assert_close(torch.cat(cached, dim=1), full_logits[:, 10:], atol=1e-5, rtol=1e-5)
    assert state.length == state.prefix_tokens.shape[1] + 2 * N - 1


def test_parallel_queries_read_the_next_cell_conditional(model: LandCoverRandAR) -> None:
    """Each of several cells queried at once gets p(x | decided cells), as if it were the next in the order."""
    labels = random_labels(2, 9)
    order = random_orders(2, N, torch.Generator().manual_seed(10))
    targets = labels.reshape(2, -1).gather(1, order)
    with torch.no_grad():
        state = model.start_decoding(2, SIZE, SIZE)
        model.decode_commit(state, order[:, :20], targets[:, :20])
        parallel = model.decode_step(state, None, order[:, 20:24])
        after = model.decode_step(state, targets[:, 20:24], order[:, 24:25])
    for j in range(4):
        moved = torch.cat(
            [order[:, :20], order[:, 20 + j : 21 + j], order[:, 20:][:, [i for i in range(N - 20) if i != j]]], 1
        )
        torch.testing.assert_close(parallel[:, j], model(labels, moved)[0][:, 20], atol=1e-5, rtol=1e-5)
    # Committing the drawn classes leaves the cache exactly as the training sequence of the same order.
    torch.testing.assert_close(after[:, 0], model(labels, order)[0][:, 24], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reuse_queries", [False, True])
def test_padding_slots_are_invisible(model: LandCoverRandAR, reuse_queries: bool) -> None:
    """Samples that commit different numbers of cells in one batch score exactly as they do alone."""
    labels = random_labels(2, 11)
    order = random_orders(2, N, torch.Generator().manual_seed(12))
    targets = labels.reshape(2, -1).gather(1, order)
    counts = [7, 15]
    valid = torch.arange(15) < torch.tensor(counts).unsqueeze(1)
    query = torch.stack([order[0, 7:10], order[1, 15:18]])
    query_valid = torch.tensor([[True, True, False], [True, True, True]])
    with torch.no_grad():
        state = model.start_decoding(2, SIZE, SIZE, reuse_queries=reuse_queries)
        model.decode_commit(state, order[:, :15], targets[:, :15], valid)
        batched = model.decode_step(state, None, query, query_valid)
        next_batched = model.decode_step(state, torch.zeros(2, 3, dtype=torch.long), order[:, 30:31])
        for b, count in enumerate(counts):
            alone = model.start_decoding(1, SIZE, SIZE, reuse_queries=reuse_queries)
            model.decode_commit(alone, order[b : b + 1, :count], targets[b : b + 1, :count])
            n_query = int(query_valid[b].sum())
            single = model.decode_step(alone, None, query[b : b + 1, :n_query])
            torch.testing.assert_close(batched[b, :n_query], single[0], atol=1e-5, rtol=1e-5)
            next_single = model.decode_step(alone, torch.zeros(1, n_query, dtype=torch.long), order[b : b + 1, 30:31])
            torch.testing.assert_close(next_batched[b], next_single[0], atol=1e-5, rtol=1e-5)


def decode_in_chunks(
    model: LandCoverRandAR, labels: torch.Tensor, order: torch.Tensor, chunks: list[int], reuse_queries: bool
) -> torch.Tensor:
    """Teacher-forced parallel decoding: the cells of ``order`` queried ``chunks[s]`` at a time, the true classes
    committed; returns the logits of every cell after the first chunk (B, N - chunks[0], K)."""
    targets = labels.reshape(labels.shape[0], -1).gather(1, order)
    state = model.start_decoding(labels.shape[0], SIZE, SIZE, reuse_queries=reuse_queries)
    model.decode_commit(state, order[:, : chunks[0]], targets[:, : chunks[0]])
    logits, classes, begin = [], None, chunks[0]
    for size in chunks[1:]:
        logits.append(model.decode_step(state, classes, order[:, begin : begin + size]))
        classes = targets[:, begin : begin + size]
        begin += size
    return torch.cat(logits, dim=1)


def test_reused_queries_are_exact_in_a_one_layer_model() -> None:
    """Keeping a step's query instructions in the cache only changes what deeper layers read from them.

    First-layer keys and values depend on a token's embedding alone, so with one layer the reused instructions
    are exactly the ones a re-run would give: parallel decoding with reused queries then scores every cell as
    re-running the instructions does. With two layers the instructions are stale (they did not see the classes
    drawn beside them) and the scores move, but the first query of every step still sees exactly the training
    sequence of the decided cells, because its instruction and all earlier class tokens are the training ones.
    """
    chunks = [10, 1, 3, 5, 2, 8, 1, 34]
    labels = random_labels(2, 21)
    order = random_orders(2, N, torch.Generator().manual_seed(22))
    starts = torch.tensor(chunks[:-1]).cumsum(0)[:-1] - chunks[0]  # first query of each step, after chunk 0
    with torch.no_grad():
        one_layer = build(seed=3, n_layers=1)
        reused = decode_in_chunks(one_layer, labels, order, chunks, reuse_queries=True)
        rerun = decode_in_chunks(one_layer, labels, order, chunks, reuse_queries=False)
        torch.testing.assert_close(reused, rerun, atol=1e-5, rtol=1e-5)
        teacher_forced = one_layer(labels, order)[0][:, chunks[0] :]
        torch.testing.assert_close(reused[:, starts], teacher_forced[:, starts], atol=1e-5, rtol=1e-5)

        model = build(seed=3)
        reused = decode_in_chunks(model, labels, order, chunks, reuse_queries=True)
        rerun = decode_in_chunks(model, labels, order, chunks, reuse_queries=False)
        assert (reused - rerun).abs().max() > 1e-3
        torch.testing.assert_close(reused[:, : chunks[1]], rerun[:, : chunks[1]], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            rerun[:, starts], model(labels, order)[0][:, chunks[0] :][:, starts], atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("reuse_queries", [False, True])
def test_parallel_decoding_runs_each_token_once_when_reusing_queries(
    model: LandCoverRandAR, reuse_queries: bool
) -> None:
    """Token passes of a whole parallel sample: 2 per cell with reused queries, about 3 when they are re-run."""
    steps = 6
    passed: list[int] = []
    hook = model.transformer.register_forward_pre_hook(lambda _, inputs: passed.append(inputs[0].shape[1]))
    try:
        decoding.sample(model, 2, steps=steps, generator=torch.Generator().manual_seed(2), reuse_queries=reuse_queries)
    finally:
        hook.remove()
    counts = decoding.decoding_schedule(torch.tensor([N]), steps).diff(dim=1)[0]
    n_prefix, last = model.encode_conditioning(1, SIZE, SIZE)[0].shape[1], int(counts[-1])
    # Every cell's instruction runs once and every class but the last step's once; re-running adds k - 1 per step.
    reused_total = n_prefix + N + (N - last)
    assert len(passed) == steps
    if reuse_queries:
        assert sum(passed) == reused_total
    else:
        assert sum(passed) == reused_total + int((counts[:-1] - 1).sum())


def test_sample_range_and_determinism(model: LandCoverRandAR) -> None:
    def draw(seed: int, steps: int | None) -> torch.Tensor:
        return decoding.sample(model, 3, steps=steps, generator=torch.Generator().manual_seed(seed))

    for steps in (None, 6):
        first = draw(0, steps)
        assert first.shape == (3, SIZE, SIZE)
        assert first.min() >= 0 and first.max() < K
        assert torch.equal(first, draw(0, steps))
        assert not torch.equal(first, draw(1, steps))


def test_cached_sampling_equals_naive_reencoding(model: LandCoverRandAR) -> None:
    cached = decoding.sample(model, 2, generator=torch.Generator().manual_seed(4), top_k=3, temperature=0.8)
    naive = decoding.sample_naive(model, 2, generator=torch.Generator().manual_seed(4), top_k=3, temperature=0.8)
    assert torch.equal(cached, naive)


def test_parallel_with_one_cell_per_step_equals_sequential(model: LandCoverRandAR) -> None:
    sequential = decoding.sample(model, 2, steps=None, generator=torch.Generator().manual_seed(5))
    parallel = decoding.sample(model, 2, steps=N, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sequential, parallel)


def test_decoding_schedule() -> None:
    schedule = decoding.decoding_schedule(torch.tensor([64, 3, 10]), steps=8)
    counts = schedule.diff(dim=1)
    assert schedule[:, 0].tolist() == [0, 0, 0] and schedule[:, -1].tolist() == [64, 3, 10]
    assert (counts[0] >= 1).all() and (counts[2] >= 1).all()
    assert counts[0, 0] < counts[0, -1]  # cosine: few cells first, many at the end
    assert counts[1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert decoding.decoding_schedule(torch.tensor([64]), steps=64).diff(dim=1).eq(1).all()
    assert decoding.decoding_schedule(torch.tensor([4, 2]), steps=None).tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 2, 2]]


def test_on_step_frames_follow_the_schedule(model: LandCoverRandAR) -> None:
    frames: list[torch.Tensor] = []
    result = decoding.sample(model, 2, steps=5, generator=torch.Generator().manual_seed(6), on_step=frames.append)
    decided = [int((frame[0] >= 0).sum()) for frame in frames]
    assert decided == decoding.decoding_schedule(torch.tensor([N]), 5)[0, 1:].tolist()
    assert torch.equal(frames[-1], result)


@pytest.mark.parametrize("steps", [None, 4])
def test_inpainting_never_changes_a_known_pixel(model: LandCoverRandAR, steps: int | None) -> None:
    known = random_labels(4, 13)
    generator = torch.Generator().manual_seed(14)
    keep = torch.rand(4, SIZE, SIZE, generator=generator) < torch.tensor([0.0, 0.3, 0.9, 1.0]).view(4, 1, 1)
    known[~keep] = -1
    result = decoding.sample(model, known=known, steps=steps, generator=generator)
    assert torch.equal(result[keep], known[keep])
    assert result.min() >= 0 and result.max() < K
    complete = decoding.sample(model, known=known[3:], steps=steps, generator=generator)
    assert torch.equal(complete, known[3:])


def test_nodata_cells_stay_nodata_and_are_read_as_in_training(model: LandCoverRandAR) -> None:
    """Cells in ``nodata`` come back -1 and reach the model as nodata tokens, exactly like nodata in a chip.

    Greedy decoding (top-1) in raster order is a fixed point of the teacher-forced forward pass: run the model on
    its own result, nodata cells included as -1, in the order sample used, and every drawn cell is the argmax.
    """
    generator = torch.Generator().manual_seed(31)
    known = random_labels(3, 32)
    known[torch.rand(3, SIZE, SIZE, generator=generator) < 0.6] = -1
    nodata = torch.rand(3, SIZE, SIZE, generator=generator) < 0.2
    nodata[0] = False  # one sample without nodata: the batch mixes different numbers of given cells
    for steps in (None, 5):
        result = decoding.sample(model, known=known, nodata=nodata, steps=steps, order="raster", top_k=1)
        assert torch.equal(result[nodata], torch.full_like(result[nodata], -1))
        given = (known >= 0) & ~nodata
        assert torch.equal(result[given], known[given])
        assert (result[~nodata] >= 0).all()
    result = decoding.sample(model, known=known, nodata=nodata, order="raster", top_k=1)
    flat_given = ((known >= 0) | nodata).reshape(3, N)
    order = (~flat_given).to(torch.uint8).argsort(dim=1, stable=True)
    with torch.no_grad():
        logits, _ = model(result, order)
    drawn = ~flat_given.gather(1, order)
    argmax = logits.argmax(dim=-1)
    assert torch.equal(argmax[drawn], result.reshape(3, N).gather(1, order)[drawn])
    # Without the nodata mask those cells are drawn like any unknown cell.
    filled = decoding.sample(model, known=known.masked_fill(nodata, -1), order="raster", top_k=1)
    assert (filled >= 0).all()
    holes = decoding.sample(model, nodata=nodata, steps=4, generator=generator)
    assert torch.equal(holes < 0, nodata)
    with pytest.raises(UserError, match="nodata mask has shape"):
        decoding.sample(model, known=known, nodata=nodata[:2])


def test_inpainting_conditions_on_known_pixels() -> None:
    """A sample inpainted alone equals the same sample inpainted in a batch with other known-pixel counts."""
    model = build(seed=2)
    known = random_labels(3, 15)
    known[0, 4:] = -1
    known[1, :, 2:] = -1
    known[2] = -1
    batched = decoding.sample(model, known=known, steps=3, order="raster", top_k=1)
    for b in range(3):
        alone = decoding.sample(model, known=known[b : b + 1], steps=3, order="raster", top_k=1)
        assert torch.equal(batched[b : b + 1], alone)


def test_conditional_probs_equal_the_last_position_of_an_explicit_order(model: LandCoverRandAR) -> None:
    labels = random_labels(2, 16, nodata=0.1)
    sites = torch.tensor([[3, 40], [63, 0]])
    probs = decoding.conditional_probs(model, labels, sites, rest_order="raster")
    for b in range(2):
        for s in range(2):
            site = int(sites[b, s])
            order = torch.tensor([[i for i in range(N) if i != site] + [site]])
            logits, _ = model(labels[b : b + 1], order)
            torch.testing.assert_close(probs[b, s], logits[0, -1].softmax(-1), atol=1e-5, rtol=1e-5)


def test_gibbs_with_one_block_is_sequential_sampling(model: LandCoverRandAR) -> None:
    start = random_labels(2, 17)
    (state,) = decoding.gibbs(model, start, sweeps=1, block_size=N, generator=torch.Generator().manual_seed(7))
    assert torch.equal(state, decoding.sample(model, 2, generator=torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_gibbs_blocks_draw_from_the_conditional_with_the_block_last(model: LandCoverRandAR, block_size: int) -> None:
    """The cached blocked sweep equals a reference that re-runs the model on the explicit order for every cell."""
    start = random_labels(2, 22, nodata=0.1)
    (cached,) = decoding.gibbs(model, start, 1, block_size=block_size, generator=torch.Generator().manual_seed(11))
    generator = torch.Generator().manual_seed(11)
    state = start.reshape(2, N).clone()
    blocks = random_orders(2, N, generator).split(block_size, dim=1)
    for j, block in enumerate(blocks):
        order = torch.cat([*blocks[:j], *blocks[j + 1 :], block], dim=1)
        for t in range(block.shape[1]):
            logits, _ = model(state.reshape(2, SIZE, SIZE), order)
            drawn = decoding.sample_from_logits(
                logits[:, N - block.shape[1] + t : N - block.shape[1] + t + 1], generator=generator
            )
            site = block[:, t : t + 1]
            state.scatter_(1, site, torch.where(state.gather(1, site) < 0, -1, drawn))
    assert torch.equal(cached, state.reshape(2, SIZE, SIZE))


def test_gibbs_keeps_nodata_and_fixed_cells(model: LandCoverRandAR) -> None:
    start = random_labels(3, 18, nodata=0.2)
    fixed = torch.zeros_like(start, dtype=torch.bool)
    fixed[:, :2] = True
    states = list(
        decoding.gibbs(model, start, sweeps=2, block_size=5, fixed=fixed, generator=torch.Generator().manual_seed(8))
    )
    again = list(
        decoding.gibbs(model, start, sweeps=2, block_size=5, fixed=fixed, generator=torch.Generator().manual_seed(8))
    )
    assert len(states) == 2 and all(torch.equal(a, b) for a, b in zip(states, again, strict=True))
    for state in states:
        assert torch.equal(state[start < 0], start[start < 0])
        assert torch.equal(state[fixed], start[fixed])
        assert state[start >= 0].min() >= 0 and state.max() < K
    assert not torch.equal(states[-1], start)


def test_gibbs_naive_is_reproducible(model: LandCoverRandAR) -> None:
    start = random_labels(1, 19, nodata=0.1)
    (first,) = decoding.gibbs_naive(model, start, 1, generator=torch.Generator().manual_seed(9))
    (second,) = decoding.gibbs_naive(model, start, 1, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first, second)
    assert torch.equal(first[start < 0], start[start < 0])


def test_perplexity_matches_the_loss(model: LandCoverRandAR) -> None:
    labels = random_labels(2, 20, nodata=0.1)
    result = decoding.perplexity(model, labels, n_orders=3, generator=torch.Generator().manual_seed(10))
    _, raster_loss = model(labels, raster_order(2, N))
    assert result["raster"] == pytest.approx(math.exp(float(raster_loss.detach())), rel=1e-5)
    assert len(result["random_per_order"]) == 3
    assert result["random"] == pytest.approx(math.exp(sum(math.log(p) for p in result["random_per_order"]) / 3))


def test_filter_logits() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(decoding.filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(decoding.filter_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(decoding.filter_logits(logits, top_p=0.81)).tolist() == [[False, False, False, True]]
    greedy = decoding.sample_from_logits(logits.expand(10, 4), top_k=1, generator=torch.Generator().manual_seed(0))
    assert greedy.eq(0).all()


def test_conditioning_dropout_and_guidance(conditional_model: LandCoverRandAR) -> None:
    labels = random_labels(2, 21)
    covariates = torch.randn(2, 2, SIZE, SIZE)
    lonlat = torch.tensor([[-84.2, 36.5], [10.0, 50.0]])
    order = raster_order(2, N)
    conditioned, _ = conditional_model(labels, order, covariates, lonlat)
    dropped, _ = conditional_model(labels, order, covariates, lonlat, drop_cond=torch.tensor([True, False]))
    unconditioned, _ = conditional_model(labels, order)
    torch.testing.assert_close(dropped[0], unconditioned[0])
    torch.testing.assert_close(dropped[1], conditioned[1])
    assert not torch.allclose(conditioned, unconditioned, atol=1e-3)
    # Training mode drops the conditioning of some samples at random (cond_dropout=0.5).
    conditional_model.train()
    torch.manual_seed(0)
    trained, _ = conditional_model(
        labels[:1].expand(16, -1, -1),
        raster_order(16, N),
        covariates[:1].expand(16, -1, -1, -1),
        lonlat[:1].expand(16, -1),
    )
    conditional_model.eval()
    is_null = torch.isclose(trained, unconditioned[:1], atol=1e-5).flatten(1).all(1)
    assert 0 < int(is_null.sum()) < 16

    def draw(guidance: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(3)
        return decoding.sample(
            conditional_model, 2, steps=4, covariates=covariates, lonlat=lonlat, guidance=guidance, generator=generator
        )

    assert torch.equal(draw(0.0), draw(0.0))
    guided = draw(3.0)
    assert guided.min() >= 0 and guided.max() < K
    assert not torch.equal(guided, draw(0.0))
    with pytest.raises(UserError, match="guidance needs conditioning"):
        decoding.sample(conditional_model, 1, guidance=2.0)


def test_bad_input_is_a_user_error(model: LandCoverRandAR, conditional_model: LandCoverRandAR) -> None:
    with pytest.raises(UserError, match="known holds values"):
        decoding.sample(model, known=torch.full((1, SIZE, SIZE), K))
    with pytest.raises(UserError, match="covariates have shape"):
        conditional_model(random_labels(1, 0), covariates=torch.zeros(1, 3, SIZE, SIZE))
    with pytest.raises(UserError, match="built without covariates"):
        model(random_labels(1, 0), covariates=torch.zeros(1, 2, SIZE, SIZE))
    with pytest.raises(UserError, match="temperature"):
        decoding.sample(model, 1, temperature=0.0)
    with pytest.raises(UserError, match="multiple of 4"):
        LandCoverRandAR(LandCoverConfig(dim=30, n_heads=2))


def test_presets() -> None:
    reference = reference_config(16)
    assert (reference.n_layers, reference.n_heads, reference.dim, reference.chip_size) == (16, 16, 256, 32)
    tiny = LandCoverRandAR(tiny_config(16))
    assert sum(p.numel() for p in tiny.parameters()) < 500_000


def test_a_few_steps_learn_a_striped_map() -> None:
    """Training signal works end to end: a map of horizontal stripes becomes far more predictable."""
    torch.manual_seed(0)
    model = LandCoverRandAR(LandCoverConfig(n_classes=3, chip_size=SIZE, n_layers=2, n_heads=2, dim=32)).train()
    stripes = (torch.arange(SIZE).view(1, SIZE, 1) // 2 % 3).expand(4, SIZE, SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        _, loss = model(stripes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
