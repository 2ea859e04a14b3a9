"""Closed answer sets and their tries.

OFA trains VQA and SNLI-VE with the loss limited, at each answer position, to the tokens that continue some answer of
the set (its constraint_trie: data/mm_data/vqa_gen_dataset.py, snli_ve_dataset.py), and scores candidate answers
renormalized over the same trie. VQA's set is OFA's `trainval_ans2label.pkl` (the 3,129 answers of VQA v2's
train+val), SNLI-VE's is yes / no / maybe.
"""

import json
import os
from collections.abc import Sequence

import numpy as np
from etils import epath

from ofa_jax import torch_pickle
from ofa_jax.data import vocab as V
from ofa_jax.data.registry import DropExample
from ofa_jax.data.vocab import Vocabulary


def read_answers(path: str | os.PathLike) -> list[str]:
    """The answers of an answer-list file, in label order: OFA's `trainval_ans2label.pkl` ({answer: label}, read by
    the safe unpickler: nothing in it runs), or JSON (a list of answers, or {answer: label}). ValueError names the
    file and what is wrong."""
    path = os.fspath(path)
    if path.endswith('.json'):
        try:
            loaded = json.loads(epath.Path(path).read_text(encoding='utf-8'))
        except json.JSONDecodeError as error:
            raise ValueError(f'{path}: not JSON: {error}') from None
    else:
        loaded = torch_pickle.load_pickle(path)
    if isinstance(loaded, dict):
        if not all(isinstance(label, int) for label in loaded.values()):
            raise ValueError(f'{path}: an answer-to-label dict needs integer labels')
        loaded = sorted(loaded, key=loaded.get)
    if not isinstance(loaded, list) or not loaded:
        raise ValueError(f'{path}: expected a non-empty list of answers or an {{answer: label}} dict')
    bad = [a for a in loaded if not isinstance(a, str) or not a.strip()]
    if bad:
        raise ValueError(f'{path}: answers must be non-blank strings, got {bad[:3]!r}')
    return [a.strip() for a in loaded]


class AnswerTrie:
    """The trie of answers' token ids (each followed by eos, as OFA inserts them), giving the tokens allowed at each
    position of an answer as packed masks over a vocabulary of `vocab_size` ids."""

    def __init__(self, sequences: Sequence[Sequence[int]], vocab_size: int):
        if not sequences:
            raise ValueError('AnswerTrie needs at least one answer')
        self.vocab_size = vocab_size
        self._children: list[dict[int, int]] = [{}]
        for sequence in sequences:
            node = 0
            for token in [*sequence, V.EOS]:
                if not 0 <= token < vocab_size:
                    raise ValueError(f'AnswerTrie: token {token} of {list(sequence)} is outside [0, {vocab_size})')
                if token not in self._children[node]:
                    self._children[node][token] = len(self._children)
                    self._children.append({})
                node = self._children[node][token]
        self._packed: dict[int, np.ndarray] = {}
        # Every token some node allows (the answers' tokens and eos), ascending: the only logits a score needs.
        self.tokens = np.array(sorted({t for children in self._children for t in children}), np.int32)
        self._column = {int(t): i for i, t in enumerate(self.tokens)}
        self._packed_over_tokens: dict[int, np.ndarray] = {}

    @classmethod
    def of_answers(cls, vocab: Vocabulary, answers: Sequence[str]) -> 'AnswerTrie':
        """The trie of answer texts, each encoded as a target is (`vocab.encode_spaced`)."""
        return cls([vocab.encode_spaced(answer) for answer in answers], vocab.size)

    @property
    def mask_width(self) -> int:
        """Bytes of one packed mask: ceil(vocab_size / 8)."""
        return -(-self.vocab_size // 8)

    def nodes(self, answer_ids: Sequence[int]) -> list[int]:
        """The node before each token of answer_ids [n] then eos: n + 1 nodes; DropExample('answer_not_in_list')
        when the answer leaves the trie."""
        nodes, node = [], 0
        for token in [*answer_ids, V.EOS]:
            nodes.append(node)
            if token not in self._children[node]:
                raise DropExample('answer_not_in_list', f'{list(answer_ids)} is not an answer of the list')
            node = self._children[node][token]
        return nodes

    def packed_mask(self, node: int) -> np.ndarray:
        """uint8 [mask_width]: bit v (np.packbits order) set when token v continues `node`."""
        if node not in self._packed:
            allowed = np.zeros(self.vocab_size, bool)
            allowed[list(self._children[node])] = True
            self._packed[node] = np.packbits(allowed)
        return self._packed[node]

    def packed_token_mask(self, node: int) -> np.ndarray:
        """uint8 [ceil(len(tokens) / 8)]: bit i (np.packbits order) set when tokens[i] continues `node`."""
        if node not in self._packed_over_tokens:
            allowed = np.zeros(len(self.tokens), bool)
            allowed[[self._column[t] for t in self._children[node]]] = True
            self._packed_over_tokens[node] = np.packbits(allowed)
        return self._packed_over_tokens[node]

    def columns(self, token_ids: Sequence[int]) -> list[int]:
        """The index in `tokens` of each of token_ids (tokens of the trie)."""
        return [self._column[t] for t in token_ids]

    def allowed_tokens(self, answer_ids: Sequence[int]) -> np.ndarray:
        """uint8 [n + 1, mask_width]: the packed tokens allowed at each position of answer_ids [n] and its eos."""
        return np.stack([self.packed_mask(node) for node in self.nodes(answer_ids)])
