"""Answer lists (OFA's trainval_ans2label.pkl, JSON) and their tries; prompted and trie-constrained batches."""

import json
import pickle

import numpy as np
import pytest

from ofa_jax.data import pipeline
from ofa_jax.data import vocab as V
from ofa_jax.data.answers import AnswerTrie, read_answers
from ofa_jax.data.registry import DropExample, Task
from ofa_jax.data.vocab import default_vocabulary

VOCAB = default_vocabulary()


def test_answer_lists_read_in_label_order(tmp_path):
    ans2label = {'no': 1, 'yes': 0, 'two people': 2}
    (tmp_path / 'trainval_ans2label.pkl').write_bytes(pickle.dumps(ans2label, protocol=2))
    (tmp_path / 'ans2label.json').write_text(json.dumps(ans2label))
    (tmp_path / 'answers.json').write_text(json.dumps(['yes', ' no ', 'two people']))
    for name in ('trainval_ans2label.pkl', 'ans2label.json', 'answers.json'):
        assert read_answers(tmp_path / name) == ['yes', 'no', 'two people']


@pytest.mark.parametrize(
    'content, error',
    [
        ('{"yes": "0"}', 'integer labels'),
        ('[]', 'non-empty list'),
        ('["yes", 3]', 'non-blank strings'),
        ('["yes", "  "]', 'non-blank strings'),
        ('{"yes": 0', 'not JSON'),
    ],
)
def test_a_bad_answer_list_fails_naming_the_file(tmp_path, content, error):
    path = tmp_path / 'answers.json'
    path.write_text(content)
    with pytest.raises(ValueError, match=error) as caught:
        read_answers(path)
    assert str(path) in str(caught.value)


def test_the_trie_allows_what_continues_some_answer():
    answers = ['two', 'two people', 'tennis', 'yes']
    trie = AnswerTrie.of_answers(VOCAB, answers)
    two, two_people = VOCAB.encode_spaced('two'), VOCAB.encode_spaced('two people')
    allowed = np.unpackbits(trie.allowed_tokens(two_people), axis=-1, count=VOCAB.size).astype(bool)
    assert allowed.shape == (len(two_people) + 1, VOCAB.size)
    first = {VOCAB.encode_spaced(a)[0] for a in answers}
    assert set(np.flatnonzero(allowed[0])) == first
    # After 'two': eos ends 'two', the next token continues 'two people'.
    assert set(np.flatnonzero(allowed[len(two)])) == {V.EOS, two_people[len(two)]}
    assert set(np.flatnonzero(allowed[-1])) == {V.EOS}
    with pytest.raises(DropExample, match='answer_not_in_list'):
        trie.allowed_tokens(VOCAB.encode_spaced('three'))
    with pytest.raises(ValueError, match='outside'):
        AnswerTrie([[5, VOCAB.size]], VOCAB.size)


def test_the_trie_masks_over_its_own_tokens_agree_with_the_masks_over_the_vocabulary():
    """Scoring computes only the logits of the trie's tokens: its masks over them must allow what the full ones do."""
    answers = ['two', 'two people', 'tennis', 'yes']
    trie = AnswerTrie.of_answers(VOCAB, answers)
    ids = [VOCAB.encode_spaced(a) for a in answers]
    assert list(trie.tokens) == sorted({t for answer in ids for t in answer} | {V.EOS})
    for answer in ids:
        assert list(trie.tokens[trie.columns([*answer, V.EOS])]) == [*answer, V.EOS]
        for node in trie.nodes(answer):
            full = np.unpackbits(trie.packed_mask(node), count=VOCAB.size).astype(bool)
            over_tokens = np.unpackbits(trie.packed_token_mask(node), count=len(trie.tokens)).astype(bool)
            np.testing.assert_array_equal(over_tokens, full[trie.tokens])
            assert full.sum() == over_tokens.sum()  # nothing allowed outside the trie's tokens


def example(prompt_type: str, source: list[int], target: list[int], **fields) -> dict:
    return {'task': 't', 'source_ids': source, 'target_ids': target, 'prompt_type': prompt_type, **fields}


def test_a_prompted_answer_is_never_cut():
    spec = pipeline.BatchSpec(2, 8, max_source_length=8, max_target_length=8)
    # The decoder reads the prompt and the answer (its targets: PAD under the prompt but the last, the answer, eos).
    fits = example('prev_output', [10, 11, 12, 13, 14, 15], [20])  # bos + 6 + 1 = 8 positions
    cut = example('prev_output', [10, 11, 12, 13, 14, 15], [20, 21])
    src = example('src', [10, 11, 12, 13, 14, 15], [20])  # bos + 6 + eos + 1 = 9 positions
    task = Task('t', [fits, cut, src, fits], [lambda record, rng: record])
    batch, *_ = pipeline.batches([task], [1.0], spec, seed=0, repeat=False)
    assert batch['dropped'] == {'t/answer_past_max_target_length': 2}
    np.testing.assert_array_equal(batch['prev_output_tokens'][0], [V.BOS, 10, 11, 12, 13, 14, 15, 20])
    np.testing.assert_array_equal(batch['target_tokens'][0], [V.PAD] * 6 + [20, V.EOS])


def test_trie_masks_sit_under_the_answer_and_leave_other_rows_free():
    trie = AnswerTrie.of_answers(VOCAB, ['yes', 'no'])
    spec = pipeline.BatchSpec(3, 8, max_source_length=8, max_target_length=6, trie_vocab_size=VOCAB.size)
    yes = VOCAB.encode_spaced('yes')
    rows = [
        example('prev_output', [10, 11], yes, allowed_tokens=trie.allowed_tokens(yes)),
        example('none', [10, 11], yes, allowed_tokens=trie.allowed_tokens(yes)),
        example('none', [10, 11], [30, 31]),
    ]
    batch = pipeline.to_batch(rows, spec, ['t'])
    allowed = np.unpackbits(batch['allowed_tokens'], axis=-1, count=VOCAB.size).astype(bool)
    for row, start in ((0, 2), (1, 0)):  # the answer's positions: after the prompt [bos, 10, 11]
        assert batch['target_tokens'][row, start] == yes[0]
        assert set(np.flatnonzero(allowed[row, start])) == {VOCAB.encode_spaced(a)[0] for a in ('yes', 'no')}
        assert set(np.flatnonzero(allowed[row, start + 1])) == {V.EOS}
    assert allowed[2].all() and allowed[0, :2].all()
    with pytest.raises(ValueError, match='trie_vocab_size'):
        pipeline.to_batch(rows[:1], pipeline.BatchSpec(1, 8, 8, 6), ['t'])
