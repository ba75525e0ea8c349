"""Random-order autoregressive transformer for categorical land-cover maps (after RandAR, arXiv 2412.01827).

A chip of H x W class labels is a sequence of N = H * W cells visited in an order that is a fresh random
permutation for every sample. Before each class token the model reads a *position instruction* that names the
cell it must predict next:

    [conditioning prefix..., p(o1), x(o1), p(o2), x(o2), ..., p(oN)]

The logits read at p(ot) predict x(ot); the class tokens only feed later predictions. The last class token is
never fed because nothing comes after it. Because the order is random, one network gives p(x_cell | any set of
known cells), which is what inpainting, scoring in any order, parallel decoding and Gibbs sampling need.

Positions. Every position instruction is the same learned vector, rotated in embedding space by the 2-D RoPE
of its target cell, so the instruction itself says which absolute cell is asked for (chip edges matter). In
attention, every token (instruction, class, conditioning) also has its queries and keys rotated by the 2-D RoPE
of its cell, so what a cell attends to depends on relative offsets, which suits a map whose statistics are
roughly the same everywhere. There is no 1-D sequence position: a token's meaning does not depend on where in
the sequence it sits, which is what lets decoding ask for several cells at once or put any cell last.

Nodata. Nodata pixels (label -1) are fed as an extra "unknown" class id (n_classes) so the model knows the cell
is empty, and their targets are left out of the loss.

Conditioning. The prefix always starts with a learned start token. Optional covariate rasters (elevation, ...)
become one token per patch (a strided convolution), placed at the patch centre; optional lon/lat becomes one
token (Fourier features of the angles through a small MLP). During training each sample's whole conditioning is
replaced with learned "null" tokens with probability ``cond_dropout``; the same null tokens give the
unconditional branch of classifier-free guidance and stand in when a conditioned model is run without
conditioning. The prefix is causal like the rest so training can use the fused causal SDPA kernel; later
tokens see the whole prefix anyway.

Decoding. :meth:`LandCoverRandAR.start_decoding`, :meth:`~LandCoverRandAR.decode_commit` and
:meth:`~LandCoverRandAR.decode_step` extend a preallocated KV cache so that it always holds exactly the
training-time sequence of the cells decided so far; ``decoding.py`` builds sampling, inpainting, scoring and
Gibbs sampling on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landformer.core.errors import UserError
from landformer.core.nn import KVCache, RoPE2D, Transformer, swiglu_hidden
from landformer.landcover.config import LandCoverConfig


def random_orders(
    batch_size: int,
    n_cells: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A fresh random permutation of ``range(n_cells)`` per sample, (B, N) int64, made in one argsort.

    Drawn on the generator's device when a generator is given (move the result where it is needed), else on
    ``device`` from the global generator.
    """
    if generator is not None:
        device = generator.device
    return torch.rand(batch_size, n_cells, generator=generator, device=device).argsort(dim=1)


def raster_order(batch_size: int, n_cells: int, device: torch.device | str | None = None) -> Tensor:
    """Row-major order for every sample, (B, N) int64: the fixed-order baseline."""
    return torch.arange(n_cells, device=device).expand(batch_size, n_cells)


def interleave(first: Tensor, second: Tensor) -> Tensor:
    """(B, n, ...) and (B, n, ...) -> (B, 2n, ...) as first[0], second[0], first[1], second[1], ..."""
    return torch.stack([first, second], dim=2).flatten(1, 2)


class LonLatEmbedding(nn.Module):
    """Longitude/latitude in degrees -> sines and cosines at octave frequencies -> MLP -> one token.

    Angles rather than raw degrees keep longitude continuous across the antimeridian.
    """

    frequencies: Tensor

    def __init__(self, n_frequencies: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("frequencies", 2.0 ** torch.arange(n_frequencies).float(), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(4 * n_frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, lonlat: Tensor) -> Tensor:
        angles = torch.deg2rad(lonlat.float()).unsqueeze(-1) * self.frequencies
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1))


@dataclass
class DecodeState:
    """A batch of partial sequences held in a KV cache.

    The conditioning prefix is not run on its own: it is prepended to the first chunk after the cache is empty,
    so that a chunk of known cells committed from scratch (inpainting, every Gibbs block) goes through the fused
    causal attention kernel, which skips the masked half; a chunk after cached tokens needs an explicit mask.
    ``key_valid`` marks which cached slots hold real tokens: samples of one batch may commit different numbers of
    cells (inpainting with different known pixels), and the shorter ones are padded with slots nobody attends to.
    ``pending_cells`` are the cells whose instructions were asked for in the last
    :meth:`LandCoverRandAR.decode_step` and whose classes the next step must supply; with ``reuse_queries`` all of
    their instructions stay cached, otherwise only the first one.
    """

    caches: list[KVCache]
    key_valid: Tensor
    width: int
    prefix_tokens: Tensor
    prefix_positions: Tensor
    reuse_queries: bool = False
    has_padding: bool = False
    pending_cells: Tensor | None = None
    pending_valid: Tensor | None = None

    @property
    def length(self) -> int:
        return self.caches[0].length

    def rewind(self, length: int) -> None:
        """Keep the first ``length`` cached tokens: 0 (the prefix runs again with the next chunk) or at least the
        prefix. Whatever padding was cached stays masked, and nothing is pending afterwards."""
        if 0 < length < self.prefix_tokens.shape[1]:
            raise ValueError(f"cannot rewind into the conditioning prefix ({length} tokens)")
        for cache in self.caches:
            cache.truncate(length)
        if length == 0:
            self.has_padding = False
        self.pending_cells = self.pending_valid = None


class LandCoverRandAR(nn.Module):
    """Random-order autoregressive transformer over (B, H, W) class maps; see the module docstring."""

    def __init__(self, config: LandCoverConfig) -> None:
        super().__init__()
        if config.dim < 4 * config.n_heads or config.dim % (4 * config.n_heads) != 0:
            raise UserError(
                f"landcover model: dim {config.dim} must be a multiple of 4 * n_heads ({4 * config.n_heads}) "
                "for 2-D rotary embeddings"
            )
        self.config = config
        dim = config.dim
        self.unknown_id = config.n_classes
        self.class_embedding = nn.Embedding(config.n_classes + 1, dim)
        self.position_instruction = nn.Parameter(torch.randn(dim) * 0.02)
        self.instruction_rope = RoPE2D(dim, config.rope_base)
        self.start_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.covariate_embedding: nn.Conv2d | None = None
        self.lonlat_embedding: LonLatEmbedding | None = None
        if config.covariate_channels > 0:
            patch = config.covariate_patch
            self.covariate_embedding = nn.Conv2d(config.covariate_channels, dim, patch, stride=patch)
            self.null_covariates = nn.Parameter(torch.randn(dim) * 0.02)
        if config.use_lonlat:
            self.lonlat_embedding = LonLatEmbedding(config.lonlat_frequencies, dim)
            self.null_lonlat = nn.Parameter(torch.randn(dim) * 0.02)
        self.transformer = Transformer(
            dim,
            config.n_layers,
            config.n_heads,
            mlp_hidden=swiglu_hidden(dim, config.mlp_ratio),
            causal=True,
            dropout=config.dropout,
            rope_base=config.rope_base,
        )
        self.head = nn.Linear(dim, config.n_classes, bias=False)
        nn.init.normal_(self.class_embedding.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)

    @property
    def is_conditional(self) -> bool:
        return self.covariate_embedding is not None or self.lonlat_embedding is not None

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    # ----------------------------------------------------------------------------------------- embeddings

    def encode_conditioning(
        self,
        batch_size: int,
        height: int,
        width: int,
        covariates: Tensor | None = None,
        lonlat: Tensor | None = None,
        drop_cond: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The prefix tokens (B, P, dim) and their cell positions (B, P, 2).

        Missing conditioning, and samples where ``drop_cond`` (B,) is True, get the learned null tokens.
        """
        device, dim = self.device, self.config.dim
        centre = torch.tensor([(height - 1) / 2, (width - 1) / 2], device=device)
        tokens = [self.start_token.expand(batch_size, 1, dim)]
        positions = [centre.expand(batch_size, 1, 2)]
        if covariates is not None and self.covariate_embedding is None:
            raise UserError("landcover model: covariates were given but the model was built without covariates")
        if lonlat is not None and self.lonlat_embedding is None:
            raise UserError("landcover model: lon/lat was given but the model was built without use_lonlat")
        if self.covariate_embedding is not None:
            patch = self.config.covariate_patch
            if height % patch or width % patch:
                raise UserError(f"landcover model: chip {height}x{width} is not a multiple of covariate_patch {patch}")
            grid_rows = torch.arange(height // patch, device=device) * patch + (patch - 1) / 2
            grid_cols = torch.arange(width // patch, device=device) * patch + (patch - 1) / 2
            grid = torch.stack(torch.meshgrid(grid_rows, grid_cols, indexing="ij"), dim=-1).reshape(-1, 2)
            null = self.null_covariates.expand(batch_size, grid.shape[0], dim)
            if covariates is None:
                patches = null
            else:
                expected = (batch_size, self.config.covariate_channels, height, width)
                if tuple(covariates.shape) != expected:
                    raise UserError(
                        f"landcover model: covariates have shape {tuple(covariates.shape)}, expected {expected}"
                    )
                covariates = covariates.to(device=device, dtype=self.covariate_embedding.weight.dtype)
                patches = self.covariate_embedding(covariates).flatten(2).transpose(1, 2)
                if drop_cond is not None:
                    patches = torch.where(drop_cond.view(-1, 1, 1), null.to(patches.dtype), patches)
            tokens.append(patches)
            positions.append(grid.expand(batch_size, -1, 2))
        if self.lonlat_embedding is not None:
            null = self.null_lonlat.expand(batch_size, 1, dim)
            if lonlat is None:
                place = null
            else:
                if tuple(lonlat.shape) != (batch_size, 2):
                    raise UserError(
                        f"landcover model: lonlat has shape {tuple(lonlat.shape)}, expected ({batch_size}, 2)"
                    )
                place = self.lonlat_embedding(lonlat.to(device)).unsqueeze(1)
                if drop_cond is not None:
                    place = torch.where(drop_cond.view(-1, 1, 1), null.to(place.dtype), place)
            tokens.append(place)
            positions.append(centre.expand(batch_size, 1, 2))
        return torch.cat(tokens, dim=1), torch.cat(positions, dim=1)

    def cell_positions(self, cells: Tensor, width: int) -> Tensor:
        """Flat cell indices (B, n) -> (row, col) as float (B, n, 2)."""
        return torch.stack([cells // width, cells % width], dim=-1).float()

    def embed_instructions(self, positions: Tensor) -> Tensor:
        """Position instructions (B, n, dim): the shared learned vector rotated by each target cell's 2-D RoPE."""
        batch, n = positions.shape[:2]
        shared = self.position_instruction.expand(batch, n, 1, self.config.dim)
        return self.instruction_rope.rotate(shared, positions).squeeze(2)

    def embed_classes(self, classes: Tensor) -> Tensor:
        """Class tokens (B, n, dim); -1 (nodata or unknown) maps to the extra unknown id."""
        return self.class_embedding(classes.masked_fill(classes < 0, self.unknown_id))

    # ---------------------------------------------------------------------------------------- training

    def forward_sequence(self, cells: Tensor, classes: Tensor, width: int, prefix: tuple[Tensor, Tensor]) -> Tensor:
        """Logits (B, n, K) at the n instruction slots of [prefix, p(c1), x(c1), ..., p(cn) (, x(cn))].

        ``cells`` (B, n) is the visiting order, ``classes`` (B, m) with m in {n - 1, n} the classes of its first
        m cells. This re-encodes everything: training, scoring and the naive decoding baseline use it.
        """
        n, m = cells.shape[1], classes.shape[1]
        positions = self.cell_positions(cells, width)
        instructions = self.embed_instructions(positions)
        tokens = self.embed_classes(classes)
        if m < n:
            tokens = torch.cat([tokens, torch.zeros_like(instructions[:, m:])], dim=1)
        sequence = interleave(instructions, tokens)[:, : n + m]
        sequence_positions = positions.repeat_interleave(2, dim=1)[:, : n + m]
        prefix_tokens, prefix_positions = prefix
        hidden = self.transformer(
            torch.cat([prefix_tokens.to(sequence.dtype), sequence], dim=1),
            torch.cat([prefix_positions, sequence_positions], dim=1),
        )
        return self.head(hidden[:, prefix_tokens.shape[1] :: 2])

    def forward(
        self,
        labels: Tensor,
        order: Tensor | None = None,
        covariates: Tensor | None = None,
        lonlat: Tensor | None = None,
        drop_cond: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced pass over (B, H, W) labels (-1 = nodata) in ``order`` (B, N).

        Returns logits (B, N, K), where ``logits[:, t]`` predicts cell ``order[:, t]``, and the mean cross-entropy
        over the cells that are not nodata. Without an order, each sample gets a fresh random permutation
        (or raster order when the config says so). In training mode, conditioning is dropped per sample with
        probability ``cond_dropout`` unless ``drop_cond`` says otherwise.
        """
        if labels.dim() != 3:
            raise UserError(f"landcover model: labels should be (B, H, W), got shape {tuple(labels.shape)}")
        batch, height, width = labels.shape
        n_cells = height * width
        if order is None:
            if self.config.order == "random":
                order = random_orders(batch, n_cells, device=labels.device)
            else:
                order = raster_order(batch, n_cells, device=labels.device)
        if drop_cond is None and self.training and self.is_conditional and self.config.cond_dropout > 0:
            drop_cond = torch.rand(batch, device=labels.device) < self.config.cond_dropout
        targets = labels.reshape(batch, n_cells).long().gather(1, order)
        prefix = self.encode_conditioning(batch, height, width, covariates, lonlat, drop_cond)
        logits = self.forward_sequence(order, targets[:, :-1], width, prefix)
        return logits, self.forward_loss(logits, targets)

    def forward_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy over targets that are not nodata (-1); 0 when a batch is all nodata."""
        valid = targets >= 0
        per_cell = F.cross_entropy(
            logits.float().flatten(0, 1), targets.clamp(min=0).flatten(), reduction="none"
        ).view_as(targets)
        return (per_cell * valid).sum() / valid.sum().clamp(min=1)

    # ---------------------------------------------------------------------------------------- decoding

    def start_decoding(
        self,
        batch_size: int,
        height: int,
        width: int,
        covariates: Tensor | None = None,
        lonlat: Tensor | None = None,
        drop_cond: Tensor | None = None,
        max_cells: int | None = None,
        max_query: int | None = None,
        reuse_queries: bool = False,
    ) -> DecodeState:
        """Embed the conditioning prefix and allocate KV caches; the prefix runs with the first chunk.

        The caches hold ``max_cells`` committed cells (default the chip's H * W; more when padding slots are
        committed) plus ``max_query`` queries of one :meth:`decode_step` (default H * W). ``reuse_queries`` picks
        how :meth:`decode_step` commits the cells of a step that queried several at once (see there).
        """
        prefix_tokens, prefix_positions = self.encode_conditioning(
            batch_size, height, width, covariates, lonlat, drop_cond
        )
        n_cells = height * width
        max_len = prefix_tokens.shape[1] + 2 * (max_cells or n_cells) + (max_query or n_cells)
        return DecodeState(
            caches=self.transformer.make_caches(batch_size, max_len),
            key_valid=torch.ones(batch_size, max_len, dtype=torch.bool, device=self.device),
            width=width,
            prefix_tokens=prefix_tokens,
            prefix_positions=prefix_positions,
            reuse_queries=reuse_queries,
        )

    def decode_commit(self, state: DecodeState, cells: Tensor, classes: Tensor, valid: Tensor | None = None) -> None:
        """Teacher-force known cells: append [p(c), x(c)] for each of ``cells`` (B, k) with ``classes`` (B, k).

        ``valid`` (B, k) marks real entries when samples have different numbers of known cells; the rest is
        padding that later tokens never attend to.
        """
        if state.pending_cells is not None:
            raise ValueError("decode_commit needs the classes of the pending cells first (call decode_step)")
        tokens, positions = self.known_tokens(cells, classes, state.width)
        pair_valid = valid.repeat_interleave(2, dim=1) if valid is not None else None
        self._extend(state, tokens, positions, pair_valid, tokens.shape[1], None)

    def decode_commit_and_query(self, state: DecodeState, cells: Tensor, classes: Tensor, query_cell: Tensor) -> Tensor:
        """:meth:`decode_commit` of ``cells`` (B, k) and :meth:`decode_step` of one ``query_cell`` (B, 1) in one pass.

        [p(c1), x(c1), ..., p(ck), x(ck), p(q)] is a stretch of a training sequence, so plain causal attention
        gives exactly the two calls' logits (B, 1, K) while reading the weights once instead of twice: what a
        batch-1 step costs on a CPU. ``query_cell`` is pending afterwards, as after :meth:`decode_step`.
        """
        if state.pending_cells is not None:
            raise ValueError("decode_commit_and_query needs the classes of the pending cells first (decode_step)")
        if query_cell.shape[1] != 1:
            raise ValueError(f"decode_commit_and_query asks for one cell per sample, got {query_cell.shape[1]}")
        tokens, positions = self.known_tokens(cells, classes, state.width)
        query_positions = self.cell_positions(query_cell, state.width)
        tokens = torch.cat([tokens, self.embed_instructions(query_positions)], dim=1)
        positions = torch.cat([positions, query_positions], dim=1)
        hidden = self._extend(state, tokens, positions, None, tokens.shape[1], None)
        state.pending_cells, state.pending_valid = query_cell, None
        return self.head(hidden[:, -1:])

    def known_tokens(self, cells: Tensor, classes: Tensor, width: int) -> tuple[Tensor, Tensor]:
        """The training-sequence stretch [p(c1), x(c1), ..., p(ck), x(ck)] (B, 2k, dim) and its positions (B, 2k, 2)."""
        positions = self.cell_positions(cells, width)
        tokens = interleave(self.embed_instructions(positions), self.embed_classes(classes))
        return tokens, positions.repeat_interleave(2, dim=1)

    def decode_step(
        self, state: DecodeState, classes: Tensor | None, query_cells: Tensor, query_valid: Tensor | None = None
    ) -> Tensor:
        """Commit ``classes`` (B, k_prev) of the pending cells, then predict ``query_cells`` (B, k): logits (B, k, K).

        Each query p(q) attends to the committed cells and to itself, not to the other queries of its step, so it
        reads p(x_q | decided cells) exactly as if q were the next cell of a training order (there is no 1-D
        position to contradict that). With one query per step this is plain sequential decoding, and the cache
        holds exactly the training sequence of the decided cells in both modes below.

        With several queries per step the two modes differ in how the pending cells a1..ak are committed:

        - ``reuse_queries=False``: one pass on [x(a1), p(a2), x(a2), ..., p(ak), x(ak), p(q1), ..., p(qk)]. Only
          p(a1) was kept from the previous step; p(a2)...p(ak) run again so that they see x(a1)... like in
          training, and p(q2)...p(qk) are thrown away after this pass. The cache stays exactly the training
          sequence, at the price of about 3 token passes per cell.
        - ``reuse_queries=True``: every query instruction stays in the cache, and the pass is
          [x(a1), ..., x(ak), p(q1), ..., p(qk)]: 2 token passes per cell, like sequential decoding. x(ai)
          attends to the same tokens as in training (p(a1..ai), x(a1..ai) and what came before), but the cached
          p(a2)...p(ak) were computed without seeing the classes drawn in the same step. Keys and values of the
          first layer depend on a token's embedding only, so a one-layer model decodes exactly as with
          ``reuse_queries=False``; deeper layers carry that small staleness.
        """
        if query_cells.shape[1] == 0:
            raise ValueError("decode_step needs at least one query cell")
        n_query = query_cells.shape[1]
        query_positions = self.cell_positions(query_cells, state.width)
        pieces: list[tuple[Tensor, Tensor, Tensor | None]] = []
        n_pending = 0
        if state.pending_cells is not None:
            if classes is None:
                raise ValueError("decode_step needs the classes of the cells queried in the previous step")
            n_pending = state.pending_cells.shape[1]
            if state.reuse_queries:
                positions = self.cell_positions(state.pending_cells, state.width)
                pieces.append((self.embed_classes(classes), positions, state.pending_valid))
            else:
                tokens, pair_positions = self.known_tokens(state.pending_cells, classes, state.width)
                valid = (
                    state.pending_valid.repeat_interleave(2, dim=1)[:, 1:] if state.pending_valid is not None else None
                )
                pieces.append((tokens[:, 1:], pair_positions[:, 1:], valid))
        pieces.append((self.embed_instructions(query_positions), query_positions, query_valid))
        tokens = torch.cat([piece[0] for piece in pieces], dim=1)
        positions = torch.cat([piece[1] for piece in pieces], dim=1)
        valid = None
        if any(piece[2] is not None for piece in pieces):
            valid = torch.cat(
                [
                    piece[2] if piece[2] is not None else torch.ones_like(piece[1][..., 0], dtype=torch.bool)
                    for piece in pieces
                ],
                dim=1,
            )
        n_commit = tokens.shape[1] - n_query
        if n_query == 1 and (n_pending <= 1 or not state.reuse_queries):
            n_keep, local_mask = tokens.shape[1], None  # everything is committed in training order: causal
        elif state.reuse_queries:
            n_keep, local_mask = tokens.shape[1], reused_queries_mask(n_pending, n_query, tokens.device)
        else:
            n_keep, local_mask = n_commit + 1, commit_then_query_mask(n_commit + 1, n_query - 1, tokens.device)
        hidden = self._extend(state, tokens, positions, valid, n_keep, local_mask)
        state.pending_cells, state.pending_valid = query_cells, query_valid
        return self.head(hidden[:, -n_query:])

    def _extend(
        self,
        state: DecodeState,
        tokens: Tensor,
        positions: Tensor,
        valid: Tensor | None,
        n_keep: int,
        local_mask: Tensor | None,
    ) -> Tensor:
        """Run a chunk of T tokens after the cache; keep its first ``n_keep`` tokens there, drop the rest.

        ``local_mask`` (T, W + T) says which of the last W cached tokens and of the chunk each chunk token attends
        to; everything cached before those W is visible to the whole chunk. ``None`` means plain causal attention.
        Returns the hidden states of the chunk (B, T, dim).
        """
        n_prefix = 0
        device = tokens.device
        if state.length == 0:
            n_prefix = state.prefix_tokens.shape[1]
            tokens = torch.cat([state.prefix_tokens.to(tokens.dtype), tokens], dim=1)
            positions = torch.cat([state.prefix_positions, positions], dim=1)
            if valid is not None:
                valid = torch.cat([valid.new_ones(valid.shape[0], n_prefix), valid], dim=1)
            if local_mask is not None:
                chunk = local_mask.shape[0]
                prefix_rows = torch.cat(
                    [causal_mask(n_prefix, device), torch.zeros(n_prefix, chunk, dtype=torch.bool, device=device)], 1
                )
                chunk_rows = torch.cat([torch.ones(chunk, n_prefix, dtype=torch.bool, device=device), local_mask], 1)
                local_mask = torch.cat([prefix_rows, chunk_rows], dim=0)
            n_keep += n_prefix
        length = tokens.shape[1]
        start = state.length
        state.key_valid[:, start : start + length] = valid if valid is not None else True
        attn_mask = None
        if local_mask is not None or valid is not None or state.has_padding:
            if local_mask is None:
                local_mask = causal_mask(length, device)
            seen_by_all = start + length - local_mask.shape[1]
            attn_mask = torch.cat([torch.ones(length, seen_by_all, dtype=torch.bool, device=device), local_mask], 1)
            if valid is not None or state.has_padding:
                # Padding slots are invisible; each token still sees itself so no attention row is empty.
                attn_mask = attn_mask & state.key_valid[:, None, : start + length]
                index = torch.arange(length, device=device)
                attn_mask[:, index, start + index] = True
                attn_mask = attn_mask.unsqueeze(1)
        hidden = self.transformer(tokens, positions, caches=state.caches, attn_mask=attn_mask)
        for cache in state.caches:
            cache.truncate(start + n_keep)
        state.has_padding = state.has_padding or valid is not None
        return hidden[:, n_prefix:]


def causal_mask(length: int, device: torch.device) -> Tensor:
    """(T, T) boolean: token i attends to tokens 0..i."""
    index = torch.arange(length, device=device)
    return index.unsqueeze(0) <= index.unsqueeze(1)


def commit_then_query_mask(n_commit: int, n_extra_queries: int, device: torch.device) -> Tensor:
    """Local mask (T, T) of a chunk [n_commit committed tokens, n_extra_queries throw-away queries].

    The committed tokens are causal (the last of them is the step's first query, p(q1)); each extra query sees
    the committed tokens before p(q1) and itself.
    """
    length = n_commit + n_extra_queries
    mask = causal_mask(length, device)
    index = torch.arange(length, device=device)
    mask[n_commit:] = index.unsqueeze(0) < n_commit - 1
    mask[index[n_commit:], index[n_commit:]] = True
    return mask


def reused_queries_mask(n_pending: int, n_query: int, device: torch.device) -> Tensor:
    """Local mask (k + n_query, 2k + n_query) over [p(a1..ak) cached | x(a1..ak), p(q1..q_n_query) in the chunk].

    x(ai) sees p(a1..ai) and x(a1..ai), the tokens it follows in a training sequence; each query p(qj) sees all of
    the cached and committed tokens and itself, not the other queries of its step.
    """
    k = n_pending
    mask = torch.zeros(k + n_query, 2 * k + n_query, dtype=torch.bool, device=device)
    earlier = causal_mask(k, device)
    mask[:k, :k] = earlier
    mask[:k, k : 2 * k] = earlier
    mask[k:, : 2 * k] = True
    query = torch.arange(n_query, device=device)
    mask[k + query, 2 * k + query] = True
    return mask
