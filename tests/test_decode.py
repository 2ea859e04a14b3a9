"""Beam search, greedy decoding, sampling and candidate scoring on a random nano model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ofa_jax import decode
from ofa_jax.data import vocab as V
from ofa_jax.decode import DecodeSettings, Trie, generate, score_candidates
from ofa_jax.model import OFA, init_variables, model_config

# One test process builds this module's fixtures once (tests/run.sh distributes by group).
pytestmark = pytest.mark.xdist_group('decode')

VOCAB = 600  # a small vocabulary keeps the output projection cheap; ids 4.. are ordinary tokens


@pytest.fixture(scope='module')
def setup():
    config = model_config('nano', vocab_size=VOCAB, dropout=0.0)
    variables = nn.meta.unbox(init_variables(config, jax.random.key(0)))
    # Sharper output distributions than N(0, 0.02) weights give, so beams differ and ties are unlikely.
    variables['params']['embed_tokens']['embedding'] *= 20.0
    rng = np.random.default_rng(0)
    src = np.concatenate([np.zeros((3, 1)), rng.integers(4, VOCAB, (3, 6)), np.full((3, 1), V.EOS)], 1)
    # Text-only sources keep the compiles short; tests/test_decode_parity.py decodes from images.
    return OFA(config), variables, jnp.asarray(src, jnp.int32), None


def run(setup, settings, **kwargs):
    model, variables, src, images = setup
    tokens, scores = generate(model, variables, src, images, None, settings, **kwargs)
    return np.asarray(tokens), np.asarray(scores)


def generated(row):
    """The ids before eos."""
    row = list(row)
    return row[: row.index(V.EOS)] if V.EOS in row else row


def test_cache_gives_the_tokens_and_scores_of_recomputation(setup):
    settings = DecodeSettings(beam_size=3, max_length=7, min_length=2, length_penalty=0.7, no_repeat_ngram_size=2)
    prefix = np.array([[50, 60], [70, V.PAD], [V.PAD, V.PAD]], np.int32)  # rows force 2, 1 and 0 tokens
    cached = run(setup, settings, prefix_tokens=prefix)
    recomputed = run(setup, settings, prefix_tokens=prefix, use_cache=False)
    np.testing.assert_array_equal(cached[0], recomputed[0])
    np.testing.assert_allclose(cached[1], recomputed[1], rtol=1e-5)
    tokens, scores = cached
    assert tokens.shape == (3, 3, 7) and scores.shape == (3, 3)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first
    for row in tokens.reshape(-1, 7):
        ids = generated(row)
        assert len(ids) >= 2 and V.PAD not in ids  # min_length; pad never chosen
        assert all(t == V.PAD for t in row[len(ids) + 1 :])
        bigrams = list(zip(ids, ids[1:]))
        assert len(bigrams) == len(set(bigrams))


def test_cache_gives_the_codes_of_recomputation_in_rows_of_image_codes(setup):
    """Rows of image codes take their query positions' 2D embeddings step by step (only the keys' are computed on
    the first step); mixed with a text row, each row decodes as recomputation does."""
    settings = DecodeSettings(beam_size=2, max_length=6)
    codes = np.array([True, False, True])
    cached = run(setup, settings, code_masks=codes)
    recomputed = run(setup, settings, code_masks=codes, use_cache=False)
    np.testing.assert_array_equal(cached[0], recomputed[0])
    np.testing.assert_allclose(cached[1], recomputed[1], rtol=1e-5)
    as_text = run(setup, settings)
    np.testing.assert_allclose(cached[1][~codes], as_text[1][~codes], rtol=1e-5)
    assert not np.allclose(cached[1][codes], as_text[1][codes], rtol=1e-5)  # code rows decode otherwise


def test_greedy_scores_are_the_teacher_forced_log_probs(setup):
    model, variables, src, images = setup
    tokens, scores = run(setup, DecodeSettings(beam_size=1, max_length=6))
    answers = [generated(row) for row in tokens[:, 0]]
    forced = score_candidates(model, variables, src, images, None, answers, batch_size=4)
    lengths = np.array([len(a) + 1 for a in answers])
    np.testing.assert_allclose(scores[:, 0] * lengths, np.diag(np.asarray(forced)), rtol=1e-5)


def test_constraint_ranges_and_trie_restrict_the_tokens(setup):
    ranges = np.array([[100, 120], [300, 310], [4, VOCAB]], np.int32)
    tokens, _ = run(setup, DecodeSettings(beam_size=2, max_length=5, min_length=4), constraint_ranges=ranges)
    for row, (low, high) in zip(tokens, ranges):
        for hypothesis in row:
            assert all(low <= t < high for t in hypothesis[:4]) and hypothesis[4] == V.EOS

    answers = [[10, 11], [10, 12, 13], [20]]
    tokens, scores = run(setup, DecodeSettings(beam_size=4, max_length=5), trie=Trie.from_sequences(answers))
    for row, row_scores in zip(tokens, scores):
        found = [generated(h) for h, s in zip(row, row_scores) if np.isfinite(s)]
        assert sorted(found) == sorted(answers)  # three candidates fill three of four beams
        assert np.all(row[3] == V.PAD) and row_scores[3] == -np.inf


def test_sampling_is_seeded_and_top_k_1_is_greedy(setup):
    settings = DecodeSettings(beam_size=3, max_length=6, sampling=True, top_p=0.9, temperature=1.5)
    first = run(setup, settings, rng=jax.random.key(1))
    again = run(setup, settings, rng=jax.random.key(1))
    other = run(setup, settings, rng=jax.random.key(2))
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])
    assert np.all(np.diff(first[1], axis=1) <= 0)

    greedy = run(setup, DecodeSettings(beam_size=1, max_length=6))
    sampled = run(setup, DecodeSettings(beam_size=2, max_length=6, sampling=True, top_k=1), rng=jax.random.key(3))
    for k in range(2):
        np.testing.assert_array_equal(sampled[0][:, k], greedy[0][:, 0])
        np.testing.assert_allclose(sampled[1][:, k], greedy[1][:, 0], rtol=1e-5)


@pytest.mark.slow  # 1,024 decoding steps
def test_sample_codes_fills_a_code_grid_as_long_as_the_decoder_positions(setup):
    # 16 codes then the forced eos: the decoder sees 17 positions, one past max_positions (OFA's 1,024 codes).
    config = model_config('nano', vocab_size=VOCAB, dropout=0.0, max_positions=16, code_image_size=32)
    variables = nn.meta.unbox(init_variables(config, jax.random.key(0)))
    tokens, scores = decode.sample_codes(OFA(config), variables, setup[2], (100, 140), 2, jax.random.key(0), top_k=8)
    tokens = np.asarray(tokens)
    assert tokens.shape == (3, 2, 16) and np.all((tokens >= 100) & (tokens < 140))
    assert np.all(np.isfinite(np.asarray(scores)))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.sampled_from([5, 37, 300, 1000]),
    k=st.integers(1, 10),
    chunk=st.sampled_from([4, 16, 128]),
    kind=st.sampled_from(['distinct', 'ties', 'mostly -inf', 'fewer finite than k']),
)
def test_top_k_in_chunks_is_lax_top_k(seed, n, k, chunk, kind):
    """Beam search's top k, taken from the best chunks, equals lax.top_k in values and indices, ties (to the lower
    index) and -inf candidates (masked tokens) included."""
    rng = np.random.default_rng(seed)
    k = min(k, n)
    x = rng.standard_normal((3, n)).astype(np.float32)
    if kind == 'ties':
        x = np.round(x)
    elif kind == 'mostly -inf':
        x[rng.random(x.shape) < 0.95] = -np.inf
    elif kind == 'fewer finite than k':
        x[:] = -np.inf
        x[:, rng.integers(0, n, k // 2)] = 1.0
    values, indices = decode._top_k(jnp.asarray(x), k, chunk)
    expected_values, expected_indices = jax.lax.top_k(jnp.asarray(x), k)
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(indices, expected_indices)


def test_bad_arguments_are_named(setup):
    model, variables, src, images = setup
    with pytest.raises(ValueError, match='min_length'):
        DecodeSettings(max_length=4, min_length=4)
    with pytest.raises(ValueError, match='top_p'):
        DecodeSettings(top_p=0.0)
    with pytest.raises(ValueError, match='rng'):
        generate(model, variables, src, images, None, DecodeSettings(sampling=True))
    with pytest.raises(ValueError, match='prefix_tokens'):
        generate(
            model, variables, src, images, None, DecodeSettings(), prefix_tokens=np.array([[V.PAD, 5]] * 3, np.int32)
        )
    with pytest.raises(ValueError, match='constraint_ranges'):
        generate(model, variables, src, images, None, DecodeSettings(), constraint_ranges=np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match='Trie'):
        Trie.from_sequences([])
    with pytest.raises(ValueError, match='candidates'):
        score_candidates(model, variables, src, images, None, [[]])


def test_prompt_prefixes_are_forced_in_decoding_and_scoring(setup):
    model, variables, src, images = setup
    src = np.asarray(src).copy()
    src[2, 5:] = [V.EOS, V.PAD, V.PAD]  # a shorter source
    prefix = decode.prompt_prefix(src, 'prev_output')
    np.testing.assert_array_equal(prefix[2], [*src[2, 1:5], V.PAD, V.PAD, V.PAD])
    np.testing.assert_array_equal(decode.prompt_prefix(src, 'src')[2], [*src[2, 1:6], V.PAD, V.PAD])
    assert decode.prompt_prefix(src, 'none') is None
    with pytest.raises(ValueError, match='prompt_type'):
        decode.prompt_prefix(src, 'prefix')
    tokens, scores = generate(
        model, variables, jnp.asarray(src), None, None, DecodeSettings(beam_size=1, max_length=5), prefix_tokens=prefix
    )
    answers = [generated(row) for row in np.asarray(tokens)[:, 0]]
    forced = np.asarray(
        score_candidates(model, variables, jnp.asarray(src), None, None, answers, batch_size=4, prefix_tokens=prefix)
    )
    lengths = np.array([len(a) + 1 for a in answers])
    np.testing.assert_allclose(np.asarray(scores)[:, 0] * lengths, np.diag(forced), rtol=1e-5)
    unprompted = np.asarray(score_candidates(model, variables, jnp.asarray(src), None, None, answers, batch_size=4))
    assert not np.allclose(np.diag(forced), np.diag(unprompted))
