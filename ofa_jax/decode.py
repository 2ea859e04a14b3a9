"""Sequence generation for OFA: beam search, greedy decoding and sampling, jitted with static shapes.

Beam search follows fairseq's SequenceGenerator as OFA uses it: each step keeps the best 2 * beam candidates, finishes
those ending in eos among the first beam of them (score = sum log p / length ** length_penalty), continues with the
first beam that do not, and stops a row once beam hypotheses have finished. Greedy is beam 1 without sampling.

Each step feeds one token to the decoder, whose self-attention keys and values are cached per layer and whose
cross-attention keys and values of the encoder output are computed once (`use_cache=False` recomputes the whole
prefix instead: slower, same tokens and scores).

`max_length` counts every generated token including eos: a hypothesis that has not ended by then is closed with eos
(fairseq's max_len_b is max_length - 1).
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax.data import vocab as V
from ofa_jax.data.answers import AnswerTrie
from ofa_jax.data.pipeline import PROMPT_TYPES
from ofa_jax.model import OFA, validate_source

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    beam_size: int = 5
    max_length: int = 16  # new tokens after bos (and after any forced prefix), eos included
    min_length: int = 0  # eos masked before this many tokens
    length_penalty: float = 1.0  # score = sum log p / length ** length_penalty (OFA/fairseq)
    no_repeat_ngram_size: int = 0
    sampling: bool = False  # sample instead of beam search (beam_size samples per row)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f'DecodeSettings.beam_size must be >= 1, got {self.beam_size}')
        if self.max_length < 1:
            raise ValueError(f'DecodeSettings.max_length must be >= 1, got {self.max_length}')
        if not 0 <= self.min_length < self.max_length:
            raise ValueError(
                f'DecodeSettings.min_length must be in [0, max_length={self.max_length}), got {self.min_length}'
            )
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f'DecodeSettings.no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}')
        if self.temperature <= 0:
            raise ValueError(f'DecodeSettings.temperature must be > 0, got {self.temperature}')
        if self.top_k < 0:
            raise ValueError(f'DecodeSettings.top_k must be >= 0 (0: off), got {self.top_k}')
        if not 0 < self.top_p <= 1:
            raise ValueError(f'DecodeSettings.top_p must be in (0, 1] (1: off), got {self.top_p}')


@flax.struct.dataclass
class Trie:
    """Allowed continuations as a flat edge list (node 0 is the root), so lookups run inside jit.

    Each sequence is one candidate's token ids (no bos); eos is appended unless the sequence already ends in it."""

    parents: jax.Array  # [edges] int32
    tokens: jax.Array  # [edges] int32
    children: jax.Array  # [edges] int32

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]]) -> 'Trie':
        edges: dict[tuple[int, int], int] = {}
        for sequence in sequences:
            ids = [int(i) for i in sequence]
            if not ids or ids[-1] != V.EOS:
                ids.append(V.EOS)
            if V.PAD in ids or V.BOS in ids:
                raise ValueError(f'Trie.from_sequences: sequence {list(sequence)} holds bos or pad')
            node = 0
            for token in ids:
                node = edges.setdefault((node, token), len(edges) + 1)
        if not edges:
            raise ValueError('Trie.from_sequences: no sequences given')
        parents, tokens = np.array(list(edges), np.int32).T
        return cls(jnp.asarray(parents), jnp.asarray(tokens), jnp.asarray(np.array(list(edges.values()), np.int32)))

    def allowed(self, nodes: jax.Array, vocab_size: int) -> jax.Array:
        """Bool [n, vocab]: the tokens that continue each of nodes [n] (none for node -1)."""
        at_node = (self.parents[None] == nodes[:, None]).astype(jnp.int32)
        return jnp.zeros((nodes.shape[0], vocab_size), jnp.int32).at[:, self.tokens].max(at_node) > 0

    def advance(self, nodes: jax.Array, tokens: jax.Array) -> jax.Array:
        """The child [n] reached from nodes [n] by tokens [n]; -1 where the trie has no such edge."""
        match = (self.parents[None] == nodes[:, None]) & (self.tokens[None] == tokens[:, None])
        return jnp.max(jnp.where(match, self.children[None], -1), axis=1)


def generate(
    model: OFA,
    variables: Any,
    src_tokens: jax.Array,
    patch_images: jax.Array | None,
    patch_masks: jax.Array | None,
    settings: DecodeSettings,
    *,
    constraint_ranges: jax.Array | None = None,
    trie: Trie | None = None,
    prefix_tokens: jax.Array | None = None,
    rng: jax.Array | None = None,
    code_masks: jax.Array | None = None,
    use_cache: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """tokens [batch, beam, max_length] int32 (no bos; PAD after eos), scores [batch, beam] float32, best first.

    src_tokens [b, s]; patch_images [b, h, w, 3] or None; patch_masks [b] or None;
    constraint_ranges [b, 2]: generated ids limited to [lo, hi) and eos, renormalized over them (OFA's generator
    also leaves ids 0-3 in the softmax, and bos and unk as choices);
    trie: only continuations the trie allows after the prefix (renormalized over them);
    prefix_tokens [b, p]: forced decoder prefix, PAD-padded on the right (rows may differ in length); prefix tokens
    are neither returned nor scored, and no-repeat-ngram blocking sees them;
    rng: required when settings.sampling; code_masks [b]: rows whose targets are image codes.
    Rows that finish fewer than beam hypotheses (a narrow trie) fill the rest with PAD tokens and score -inf."""
    validate_source(model.config, src_tokens, patch_images, patch_masks)
    batch = src_tokens.shape[0]
    if settings.sampling and rng is None:
        raise ValueError('generate: rng is required when settings.sampling is True')
    if constraint_ranges is not None and np.shape(constraint_ranges) != (batch, 2):
        raise ValueError(f'generate: constraint_ranges must have shape [{batch}, 2], got {np.shape(constraint_ranges)}')
    if constraint_ranges is not None and trie is not None:
        raise ValueError('generate: give constraint_ranges or trie, not both')
    if prefix_tokens is not None:
        prefix = np.asarray(prefix_tokens)
        if prefix.ndim != 2 or prefix.shape[0] != batch or not np.issubdtype(prefix.dtype, np.integer):
            raise ValueError(f'generate: prefix_tokens must be integer [{batch}, p], got {prefix.dtype} {prefix.shape}')
        if np.any((prefix[:, 1:] != V.PAD) & (prefix[:, :-1] == V.PAD)):
            raise ValueError('generate: prefix_tokens must be PAD-padded on the right')
    return _generate(
        model,
        settings,
        use_cache,
        variables,
        jnp.asarray(src_tokens, jnp.int32),
        patch_images,
        patch_masks,
        constraint_ranges,
        trie,
        prefix_tokens,
        rng,
        code_masks,
    )


def sample_codes(
    model: OFA,
    variables: Any,
    src_tokens: jax.Array,
    code_range: tuple[int, int],
    samples: int,
    rng: jax.Array,
    *,
    prefix_tokens: jax.Array | None = None,
    **settings: Any,
) -> tuple[jax.Array, jax.Array]:
    """OFA's text-to-image decoding: `samples` code grids per row, each exactly (code_image_size / 8)^2 code tokens
    drawn by top-k sampling (k 256 unless `settings` overrides it) among the ids [lo, hi) of `code_range`.

    src_tokens [b, s] (text only). Returns tokens [b, samples, side * side] int32 (no eos), scores [b, samples]."""
    side = model.config.code_image_size // 8
    count = side * side
    settings = DecodeSettings(
        **{
            'top_k': 256,
            **settings,
            'beam_size': samples,
            'sampling': True,
            'min_length': count,
            'max_length': count + 1,
        }
    )
    batch = np.shape(src_tokens)[0]
    tokens, scores = generate(
        model,
        variables,
        src_tokens,
        None,
        None,
        settings,
        constraint_ranges=np.tile(np.asarray(code_range, np.int32), (batch, 1)),
        prefix_tokens=prefix_tokens,
        rng=rng,
        code_masks=np.ones((batch,), bool),
    )
    return tokens[:, :, :count], scores


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _generate(
    model,
    settings,
    use_cache,
    variables,
    src_tokens,
    patch_images,
    patch_masks,
    constraint_ranges,
    trie,
    prefix_tokens,
    rng,
    code_masks,
):
    batch, beam, vocab = src_tokens.shape[0], settings.beam_size, model.config.vocab_size
    rows = batch * beam
    encoder_out = model.apply(variables, src_tokens, patch_images, patch_masks, method=OFA.encode)
    encoder_out = jax.tree_util.tree_map(lambda x: jnp.repeat(x, beam, axis=0), encoder_out)
    if code_masks is not None:
        code_masks = jnp.repeat(code_masks, beam)
    if prefix_tokens is None:
        prefix_tokens = jnp.zeros((batch, 0), jnp.int32)
    prefix_tokens = jnp.asarray(prefix_tokens, jnp.int32)
    prefix_lengths = jnp.sum(prefix_tokens != V.PAD, axis=1)
    steps = prefix_tokens.shape[1] + settings.max_length  # decoder positions: bos, prefix, generated
    forced = jnp.pad(prefix_tokens, ((0, 0), (0, settings.max_length)), constant_values=V.PAD)

    if use_cache:

        def decoder(tokens, position, cache):
            logits, mutated = model.apply(
                {**variables, **cache},
                encoder_out,
                tokens[:, position],
                position,
                steps,
                code_masks,
                method=OFA.decode_step,
                mutable=['cache'],
            )
            return logits, {**cache, **mutated}
    else:

        def decoder(tokens, position, cache):
            logits = model.apply(variables, encoder_out, tokens[:, :steps], code_masks, method=OFA.decode)
            return jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False), cache

    tokens = jnp.full((rows, steps + 1), V.PAD, jnp.int32).at[:, 0].set(V.BOS)
    if use_cache:
        logits, cache = model.apply(
            variables,
            encoder_out,
            tokens[:, 0],
            0,
            steps,
            code_masks,
            method=OFA.decode_step,
            mutable=['cache', 'encoder_cache'],
        )
    else:
        logits, cache = decoder(tokens, 0, {})
    ids = jnp.arange(vocab)
    state = dict(
        step=jnp.zeros((), jnp.int32),
        tokens=tokens,
        logits=logits,
        cache=cache,
        scores=jnp.zeros((batch, beam), jnp.float32),
        nodes=jnp.zeros((rows,), jnp.int32),
        done=jnp.zeros((batch,), bool),
        finished_tokens=jnp.full((batch, beam, steps + 1), V.PAD, jnp.int32),
        finished_scores=jnp.full((batch, beam), NEG_INF, jnp.float32),
        finished_count=jnp.zeros((batch,), jnp.int32),
    )

    def log_probs(state, generated):
        """Processed log-probabilities [batch, beam, vocab] of the next token; generated [batch] counts the tokens
        each row has produced after its prefix (negative inside the prefix)."""
        logits = state['logits'].reshape(batch, beam, vocab) / settings.temperature
        free = (generated < 0)[:, None, None]
        if constraint_ranges is not None:
            low, high = constraint_ranges[:, 0, None, None], constraint_ranges[:, 1, None, None]
            logits = jnp.where(free | ((ids >= low) & (ids < high)) | (ids == V.EOS), logits, NEG_INF)
        if trie is not None:
            allowed = trie.allowed(state['nodes'], vocab).reshape(batch, beam, vocab)
            logits = jnp.where(free | allowed, logits, NEG_INF)
        lp = jax.nn.log_softmax(logits, axis=-1)
        lp = jnp.where(jnp.isnan(lp) | (ids == V.PAD), NEG_INF, lp)
        lp = jnp.where((ids == V.EOS) & (generated < settings.min_length)[:, None, None], NEG_INF, lp)
        lp = jnp.where((ids != V.EOS) & (generated >= settings.max_length - 1)[:, None, None], NEG_INF, lp)
        if settings.no_repeat_ngram_size:
            banned = _repeated_ngrams(state['tokens'], state['step'], settings.no_repeat_ngram_size, vocab)
            lp = jnp.where(banned.reshape(batch, beam, vocab) & (generated >= 0)[:, None, None], NEG_INF, lp)
        return lp

    def body(state):
        step = state['step']
        generated = step - prefix_lengths
        lp = log_probs(state, generated)
        if settings.sampling:
            update = _sample_step(state, lp, generated, jax.random.fold_in(rng, step), settings)
        else:
            update = _beam_step(state, lp, generated, settings)
        origin, chosen, scores = update.pop('origin'), update.pop('chosen'), update.pop('scores')
        in_prefix = (generated < 0)[:, None]
        frozen = state['done'][:, None] | in_prefix
        origin = jnp.where(frozen, jnp.arange(beam), origin)
        chosen = jnp.where(in_prefix, forced[:, step, None], chosen)
        scores = jnp.where(frozen, state['scores'], scores)
        flat_origin = (origin + jnp.arange(batch)[:, None] * beam).reshape(-1)
        tokens = state['tokens'][flat_origin].at[:, step + 1].set(chosen.reshape(-1))
        nodes = state['nodes'][flat_origin]
        if trie is not None:
            nodes = jnp.where(jnp.repeat(generated >= 0, beam), trie.advance(nodes, chosen.reshape(-1)), nodes)
        cache = dict(state['cache'])
        if 'cache' in cache:
            # Scanned layers stack their caches on a leading [layers] axis: the beams are the next one.
            beam_axis = 1 if model.config.scan_layers else 0
            cache['cache'] = jax.tree_util.tree_map(lambda x: jnp.take(x, flat_origin, beam_axis), cache['cache'])
        logits, cache = decoder(tokens, jnp.minimum(step + 1, steps - 1), cache)
        return dict(
            state, step=step + 1, tokens=tokens, logits=logits, cache=cache, scores=scores, nodes=nodes, **update
        )

    state = jax.lax.while_loop(lambda s: (s['step'] < steps) & ~jnp.all(s['done']), body, state)
    order = jnp.argsort(-state['finished_scores'], axis=1, stable=True)
    scores = jnp.take_along_axis(state['finished_scores'], order, axis=1)
    finished = jnp.take_along_axis(state['finished_tokens'], order[..., None], axis=1)
    columns = 1 + prefix_lengths[:, None, None] + jnp.arange(settings.max_length)
    tokens = jnp.take_along_axis(finished, jnp.broadcast_to(columns, finished.shape[:2] + columns.shape[2:]), axis=2)
    return tokens, scores


def _beam_step(state, lp, generated, settings):
    """fairseq's BeamSearch.step plus SequenceGenerator's finalization, for every row at once."""
    batch, beam, vocab = lp.shape
    step = state['step']
    candidates = state['scores'][..., None] + lp
    # At a row's first generated token all beams are the same hypothesis: expand only the first.
    candidates = jnp.where((generated == 0)[:, None, None] & (jnp.arange(beam) > 0)[:, None], NEG_INF, candidates)
    top_scores, top = _top_k(candidates.reshape(batch, beam * vocab), min(2 * beam, beam * vocab - 1))
    top_beams, top_tokens = top // vocab, top % vocab
    is_eos = (top_tokens == V.EOS) & (top_scores > NEG_INF)

    active = ~state['done'] & (generated >= 0)
    eos_first = is_eos[:, :beam] & active[:, None]
    slot = state['finished_count'][:, None] + jnp.cumsum(eos_first, axis=1) - 1
    accept = eos_first & (slot < beam)
    slot = jnp.where(accept, slot, beam)  # out of range: dropped by the scatter
    flat_beams = (top_beams[:, :beam] + jnp.arange(batch)[:, None] * beam).reshape(-1)
    ended = state['tokens'][flat_beams].reshape(batch, beam, -1).at[:, :, step + 1].set(V.EOS)
    normalized = top_scores[:, :beam] / (generated[:, None] + 1.0) ** settings.length_penalty
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], slot.shape)
    finished_tokens = state['finished_tokens'].at[rows, slot].set(ended, mode='drop')
    finished_scores = state['finished_scores'].at[rows, slot].set(normalized, mode='drop')
    finished_count = state['finished_count'] + jnp.sum(accept, axis=1)
    done = state['done'] | (active & ((finished_count >= beam) | (generated >= settings.max_length - 1)))

    # Continue with the first beam candidates that do not end in eos.
    rank = jnp.where(is_eos, top.shape[1], 0) + jnp.arange(top.shape[1])
    keep = jnp.argsort(rank, axis=1)[:, :beam]
    return dict(
        origin=jnp.take_along_axis(top_beams, keep, axis=1),
        chosen=jnp.take_along_axis(top_tokens, keep, axis=1),
        scores=jnp.take_along_axis(top_scores, keep, axis=1),
        finished_tokens=finished_tokens,
        finished_scores=finished_scores,
        finished_count=finished_count,
        done=done,
    )


def _top_k(x: jax.Array, k: int, chunk: int = 128) -> tuple[jax.Array, jax.Array]:
    """lax.top_k over the last axis of x [rows, n]: values and indices [rows, k], ties to the lower index.

    Inside the decoding loop XLA:CPU turns lax.top_k into a full sort, hundreds of times slower than a pass over the
    beam * vocab candidates for a small k. So one pass takes the maximum of each run of `chunk` entries; the k chunks
    with the largest maxima hold the top k (a chunk holding one of them has a maximum at least the k-th value, and
    at most k chunks do, ties going to the lower chunks, which hold the lower indices); and the top k of their
    k * chunk entries are the answer. Both of those sorts are small."""
    rows, n = x.shape
    if n <= k * chunk:
        return jax.lax.top_k(x, k)
    padded = jnp.pad(x, ((0, 0), (0, -n % chunk)), constant_values=-jnp.inf)  # after the real entries: never ahead
    chunks = padded.reshape(rows, -1, chunk)
    best_chunks = jnp.sort(jax.lax.top_k(chunks.max(axis=-1), k)[1], axis=-1)  # index order keeps ties lower first
    values, positions = jax.lax.top_k(jnp.take_along_axis(chunks, best_chunks[..., None], axis=1).reshape(rows, -1), k)
    return values, jnp.take_along_axis(best_chunks, positions // chunk, axis=1) * chunk + positions % chunk


def _sample_step(state, lp, generated, rng, settings):
    """fairseq's Sampling search: each beam is an independent sample that ends at its eos."""
    batch, beam, vocab = lp.shape
    step = state['step']
    truncated = lp
    if settings.top_k:
        kth = jax.lax.top_k(lp, settings.top_k)[0][..., -1:]
        truncated = jnp.where(lp >= kth, lp, NEG_INF)
    if settings.top_p < 1:
        # Keep the smallest set of most likely tokens whose mass reaches top_p.
        sorted_lp = jnp.sort(truncated, axis=-1)[..., ::-1]
        mass_before = jnp.cumsum(jnp.exp(sorted_lp), axis=-1) - jnp.exp(sorted_lp)
        cutoff = jnp.min(jnp.where(mass_before < settings.top_p, sorted_lp, jnp.inf), axis=-1, keepdims=True)
        truncated = jnp.where(truncated >= cutoff, truncated, NEG_INF)
    chosen = jax.random.categorical(rng, truncated, axis=-1)
    scores = state['scores'] + jnp.take_along_axis(lp, chosen[..., None], axis=-1)[..., 0]

    # A sample is live until it has ended; a finished sample keeps its slot (finished_scores > -inf).
    live = (state['finished_scores'] == NEG_INF) & (~state['done'] & (generated >= 0))[:, None]
    ends = live & (chosen == V.EOS)
    ended = state['tokens'].reshape(batch, beam, -1).at[:, :, step + 1].set(V.EOS)
    normalized = scores / (generated[:, None] + 1.0) ** settings.length_penalty
    finished_tokens = jnp.where(ends[..., None], ended, state['finished_tokens'])
    finished_scores = jnp.where(ends, normalized, state['finished_scores'])
    done = state['done'] | ((generated >= 0) & jnp.all(finished_scores > NEG_INF, axis=1))
    chosen = jnp.where(live & ~ends, chosen, V.PAD)
    return dict(
        origin=jnp.broadcast_to(jnp.arange(beam), (batch, beam)),
        chosen=chosen,
        scores=scores,
        finished_tokens=finished_tokens,
        finished_scores=finished_scores,
        finished_count=jnp.sum(finished_scores > NEG_INF, axis=1),
        done=done,
    )


def _repeated_ngrams(tokens: jax.Array, step: jax.Array, size: int, vocab: int) -> jax.Array:
    """Bool [rows, vocab]: tokens that would repeat an n-gram of tokens[:, :step + 1] (bos included, as fairseq).

    tokens [rows, length] hold the decoder input so far at positions 0..step."""
    rows, length = tokens.shape
    starts = length - size + 1
    windows = jnp.stack([tokens[:, i : i + starts] for i in range(size)], axis=-1)  # [rows, starts, size]
    last = jax.lax.dynamic_slice_in_dim(jnp.pad(tokens, ((0, 0), (size, 0))), step + 2, size - 1, axis=1)
    match = jnp.all(windows[:, :, :-1] == last[:, None], axis=-1)
    match &= (jnp.arange(starts) + size - 1 <= step) & (step + 2 - size >= 0)
    return (
        jnp.zeros((rows, vocab), jnp.int32)
        .at[jnp.arange(rows)[:, None], windows[:, :, -1]]
        .max(match.astype(jnp.int32))
        > 0
    )


def prompt_prefix(src_tokens: np.ndarray, prompt_type: str) -> np.ndarray | None:
    """The forced decoder prefix of OFA's prompt types, PAD-padded on the right, or None for 'none'.

    src_tokens [b, s] (bos, ids, eos, PAD...): 'src' puts the whole source after the decoder's bos (eos included),
    'prev_output' the source without its eos; the answer follows."""
    if prompt_type not in PROMPT_TYPES:
        raise ValueError(f'prompt_type must be one of {PROMPT_TYPES}, got {prompt_type!r}')
    if prompt_type == 'none':
        return None
    prefix = np.asarray(src_tokens)[:, 1:].copy()
    if prompt_type == 'prev_output':
        prefix[prefix == V.EOS] = V.PAD
    return prefix


def score_candidates(
    model: OFA,
    variables: Any,
    src_tokens: jax.Array,
    patch_images: jax.Array | None,
    patch_masks: jax.Array | None,
    candidates: Sequence[Sequence[int]],
    batch_size: int = 256,
    prefix_tokens: np.ndarray | None = None,
    trie: AnswerTrie | None = None,
) -> jax.Array:
    """OFA's "all candidates" scoring: scores [b, n_candidates], each the summed log-prob of the candidate
    (ids without bos/eos) followed by eos, teacher-forced after bos and the row's prefix_tokens [b, p] (PAD-padded on
    the right, see `prompt_prefix`; not scored). trie: the candidates' AnswerTrie, built once by a caller that
    scores them batch after batch; each position's log-probs are then taken over the tokens that continue some
    candidate there, as OFA's allcand evaluation does (OFA sets the other logits to -inf), and so only the logits of
    the trie's tokens are computed (about 5,000 of 59,457 columns of the output layer for VQA's 3,129 answers);
    None: over the whole vocabulary.

    batch_size bounds the (row, candidate) pairs of one decoder pass, and so the memory of its logits; a pass scores
    at least one candidate for every row. A pass decodes a row's candidates together: their cross-attention projects
    the row's encoder output to keys and values once."""
    validate_source(model.config, src_tokens, patch_images, patch_masks)
    if not candidates or any(len(c) == 0 for c in candidates):
        raise ValueError('score_candidates: candidates must be a non-empty list of non-empty id sequences')
    if batch_size < 1:
        raise ValueError(f'score_candidates: batch_size must be >= 1, got {batch_size}')
    batch, count = src_tokens.shape[0], len(candidates)
    prefix = np.zeros((batch, 0), np.int32) if prefix_tokens is None else np.asarray(prefix_tokens)
    if prefix.ndim != 2 or prefix.shape[0] != batch:
        raise ValueError(f'score_candidates: prefix_tokens must be [{batch}, p], got {prefix.shape}')
    prefixes = [[int(t) for t in row if t != V.PAD] for row in prefix]
    length = max(map(len, prefixes)) + max(len(c) for c in candidates) + 1
    per_pass = min(max(1, batch_size // batch), count)  # candidates of each row in one pass
    padded = -(-count // per_pass) * per_pass  # the last pass repeats the first candidates
    inputs = np.full((batch, padded, length), V.PAD, np.int32)
    # The scored positions' targets: vocabulary ids, or with a trie the columns of its tokens' logits.
    targets, scored = np.zeros((batch, padded, length), np.int32), np.zeros((batch, padded, length), bool)
    # With a trie: per scored position the row of `masks` (packed over trie.tokens) of its trie node; -1 elsewhere.
    mask_rows = np.full((batch, padded, length), -1, np.int32)
    masks = vocab_ids = None
    answers = [[*c, V.EOS] for c in candidates]
    if trie is not None:
        nodes = [trie.nodes(c) for c in candidates]
        row_of = {node: row for row, node in enumerate(sorted({n for path in nodes for n in path}))}
        masks = jnp.asarray(np.stack([trie.packed_token_mask(n) for n in row_of]))
        nodes = [[row_of[n] for n in path] for path in nodes]
        vocab_ids = jnp.asarray(trie.tokens)
        answers = [trie.columns(answer) for answer in answers]
    for row, forced in enumerate(prefixes):
        for j in range(padded):
            candidate = candidates[j % count]
            inputs[row, j, : len(forced) + len(candidate) + 1] = [V.BOS, *forced, *candidate]
            scored_positions = slice(len(forced), len(forced) + len(candidate) + 1)
            targets[row, j, scored_positions], scored[row, j, scored_positions] = answers[j % count], True
            if trie is not None:
                mask_rows[row, j, scored_positions] = nodes[j % count]
    encoder_out = _encode(model, variables, jnp.asarray(src_tokens, jnp.int32), patch_images, patch_masks)
    scores = [
        _score_pass(
            model,
            per_pass,
            variables,
            encoder_out,
            *(x[:, j : j + per_pass].reshape(batch * per_pass, length) for x in (inputs, targets, scored, mask_rows)),
            masks,
            vocab_ids,
        ).reshape(batch, per_pass)
        for j in range(0, padded, per_pass)
    ]
    return jnp.concatenate(scores, axis=1)[:, :count]


@functools.partial(jax.jit, static_argnums=0)
def _encode(model, variables, src_tokens, patch_images, patch_masks):
    return model.apply(variables, src_tokens, patch_images, patch_masks, method=OFA.encode)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _score_pass(model, per_row, variables, encoder_out, inputs, targets, scored, mask_rows, masks, vocab_ids):
    """Summed log-probs [b * per_row] of the scored targets; inputs etc. [b * per_row, length], a row's candidates
    consecutive."""
    logits = model.apply(
        variables, encoder_out, inputs, vocab_ids=vocab_ids, targets_per_source=per_row, method=OFA.decode
    )
    if masks is not None:
        allowed = jnp.unpackbits(masks[jnp.maximum(mask_rows, 0)], axis=-1, count=logits.shape[-1]).astype(bool)
        logits = jnp.where(allowed | ~scored[..., None], logits, NEG_INF)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(scored, lp, 0.0), axis=1)
