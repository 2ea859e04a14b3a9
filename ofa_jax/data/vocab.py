"""Text vocabularies in OFA's id layout: four specials, the text pieces, `<mask>`, 8192 image codes, 1000 box bins
(a vocabulary of a smaller image tokenizer, as the synthetic world's, may hold fewer codes).

| ids | tokens |
|---|---|
| 0 / 1 / 2 / 3 | `<s>` `<pad>` `</s>` `<unk>` |
| 4 .. 4+T-1 | T text pieces |
| 4+T | `<mask>` |
| then 8192 | `<code_0>` ... `<code_8191>` |
| then 1000 | `<bin_0>` ... `<bin_999>` |

`OFAVocabulary` reads OFA's own files (GPT-2 byte-level BPE, pieces in fairseq dictionary order, T = 50260), which
gives the module constants below. `SentencePieceVocabulary` puts a SentencePiece model's pieces in the text slots, for
pretraining with a new vocabulary; `train_sentencepiece` (or `python -m ofa_jax.data.vocab train_spm`) makes one.

`encode` reads its text literally, as fairseq's BPE does: a `<bin_5>` inside the text is BPE'd like any other
characters. Mask, code and bin tokens come from `mask_id`, `code_id` and `bin_id`.
"""

import abc
import argparse
import functools
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

BOS, PAD, EOS, UNK = 0, 1, 2, 3
NUM_SPECIALS = 4
MASK = 50264
CODE_OFFSET = 50265
NUM_CODES = 8192
BIN_OFFSET = 58457
NUM_BINS = 1000
OFA_VOCAB_SIZE = 59457


class Vocabulary(abc.ABC):
    """Token ids in OFA's layout; subclasses supply the text pieces (ids 4 .. 4+num_text_pieces-1).

    `decode` skips bos, eos and pad, renders unk, mask, codes and bins as `<unk>`, `<mask>`, `<code_N>`, `<bin_N>`,
    and decodes each run of text ids between them the way the text of one `encode` call decodes.
    """

    def __init__(self, num_text_pieces: int, num_codes: int = NUM_CODES):
        if not 0 < num_codes <= NUM_CODES:
            raise ValueError(f'num_codes {num_codes} is outside [1, {NUM_CODES}]')
        self._num_codes = num_codes
        self._mask_id = NUM_SPECIALS + num_text_pieces
        self._code_offset = self._mask_id + 1
        self._bin_offset = self._code_offset + num_codes
        self._size = self._bin_offset + NUM_BINS

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos or eos."""

    @abc.abstractmethod
    def _decode_text(self, ids: list[int]) -> str:
        """The text of a run of text-piece ids."""

    def encode_spaced(self, text: str) -> list[int]:
        """Token ids of `text` as it reads after a space: how OFA encodes targets, answers and the words of a
        passage (the BPE of `' ' + text`), so that a text's words encode alike wherever they stand."""
        return self.encode(' ' + text)

    def _symbol(self, token_id: int) -> str | None:
        """How a text-slot id that `_decode_text` cannot take is rendered; None for ordinary text pieces."""
        return None

    @property
    def size(self) -> int:
        return self._size

    @property
    def bos_id(self) -> int:
        return BOS

    @property
    def pad_id(self) -> int:
        return PAD

    @property
    def eos_id(self) -> int:
        return EOS

    @property
    def unk_id(self) -> int:
        return UNK

    @property
    def mask_id(self) -> int:
        return self._mask_id

    @property
    def num_codes(self) -> int:
        return self._num_codes

    @property
    def num_bins(self) -> int:
        return NUM_BINS

    def code_id(self, i: int) -> int:
        """Token id of image code `i` (0 <= i < num_codes)."""
        if not 0 <= i < self._num_codes:
            raise ValueError(f'code index {i} is outside [0, {self._num_codes})')
        return self._code_offset + int(i)

    def code_range(self, num_codes: int | None = None) -> tuple[int, int]:
        """Token ids [lo, hi) of image codes 0 .. num_codes - 1 (default all; a tokenizer may use fewer)."""
        num_codes = self._num_codes if num_codes is None else num_codes
        if not 0 < num_codes <= self._num_codes:
            raise ValueError(f'num_codes {num_codes} is outside [1, {self._num_codes}]')
        return self._code_offset, self._code_offset + num_codes

    def bin_range(self) -> tuple[int, int]:
        """Token ids [lo, hi) of the location bins."""
        return self._bin_offset, self._size

    def constraint_range(self, constraint: str) -> tuple[int, int]:
        """Token ids [lo, hi) a target constrained to `constraint` ('bins' or 'codes', all of them) may take besides
        eos; an unconstrained target is `ofa_jax.data.pipeline.UNCONSTRAINED`."""
        ranges = {'bins': self.bin_range(), 'codes': self.code_range()}
        if constraint not in ranges:
            raise ValueError(f'constraint must be one of {list(ranges)}, got {constraint!r}')
        return ranges[constraint]

    def bin_id(self, i: int) -> int:
        """Token id of location bin `i` (0 <= i < 1000)."""
        if not 0 <= i < NUM_BINS:
            raise ValueError(f'bin index {i} is outside [0, {NUM_BINS})')
        return self._bin_offset + int(i)

    def is_code(self, token_id: int) -> bool:
        return self._code_offset <= token_id < self._bin_offset

    def is_bin(self, token_id: int) -> bool:
        return self._bin_offset <= token_id < self._size

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids (any int sequence or array); ValueError for an id outside the vocabulary."""
        parts: list[str] = []
        run: list[int] = []
        for token_id in map(int, ids):
            if not 0 <= token_id < self._size:
                raise ValueError(f'token id {token_id} is outside the vocabulary [0, {self._size})')
            is_text = NUM_SPECIALS <= token_id < self._mask_id and self._symbol(token_id) is None
            if is_text:
                run.append(token_id)
                continue
            if run:
                parts.append(self._decode_text(run))
                run = []
            if token_id in (BOS, PAD, EOS):
                continue
            parts.append(self._render(token_id))
        if run:
            parts.append(self._decode_text(run))
        return ''.join(parts)

    def _render(self, token_id: int) -> str:
        if token_id == UNK:
            return '<unk>'
        if token_id == self._mask_id:
            return '<mask>'
        if self.is_code(token_id):
            return f'<code_{token_id - self._code_offset}>'
        if self.is_bin(token_id):
            return f'<bin_{token_id - self._bin_offset}>'
        return self._symbol(token_id)


def _read_text(path: str) -> str:
    if not os.path.isfile(path):
        raise ValueError(f'{path}: file not found')
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f'{path}: cannot be read as UTF-8 text ({e})') from e


class OFAVocabulary(Vocabulary):
    """OFA's vocabulary from a directory holding `encoder.json`, `vocab.bpe` and `dict.txt`.

    Text goes through GPT-2's byte-level BPE (pre-tokenization as GPT-2 and fairseq do it, no prefix space added), and
    each GPT-2 id becomes the OFA id of its line in dict.txt (line k -> id k+4); a GPT-2 id absent from dict.txt
    becomes unk. dict.txt lines whose symbol is not a GPT-2 id (fairseq's `madeupword0000` fillers) keep their slot
    and decode as that symbol.
    """

    def __init__(self, bpe_dir: str | os.PathLike):
        bpe_dir = os.fspath(bpe_dir)
        if not os.path.isdir(bpe_dir):
            raise ValueError(f'{bpe_dir}: not a directory holding encoder.json, vocab.bpe and dict.txt')
        encoder = self._read_encoder(os.path.join(bpe_dir, 'encoder.json'))
        merges = self._read_merges(os.path.join(bpe_dir, 'vocab.bpe'))
        dict_path = os.path.join(bpe_dir, 'dict.txt')
        symbols = self._read_dictionary(dict_path)
        super().__init__(len(symbols))

        try:
            bpe = models.BPE(vocab=encoder, merges=merges)
        except Exception as e:  # the Rust side reports merges whose pieces are not in encoder.json
            raise ValueError(f'{os.path.join(bpe_dir, "vocab.bpe")}: does not fit encoder.json ({e})') from e
        self._tokenizer = Tokenizer(bpe)
        self._tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self._tokenizer.decoder = decoders.ByteLevel()

        num_gpt2 = max(encoder.values()) + 1
        self._gpt2_to_ofa = np.full(num_gpt2, UNK, np.int64)
        self._ofa_to_gpt2 = np.full(self.mask_id, -1, np.int64)
        self._symbols: dict[int, str] = {}
        for line_no, symbol in enumerate(symbols):
            ofa_id = NUM_SPECIALS + line_no
            if symbol.isascii() and symbol.isdigit():
                gpt2_id = int(symbol)
                if gpt2_id >= num_gpt2:
                    raise ValueError(
                        f'{dict_path}: line {line_no + 1} names GPT-2 id {gpt2_id}, '
                        f'beyond encoder.json (ids < {num_gpt2})'
                    )
                self._gpt2_to_ofa[gpt2_id] = ofa_id
                self._ofa_to_gpt2[ofa_id] = gpt2_id
            else:
                self._symbols[ofa_id] = symbol

    @staticmethod
    def _read_encoder(path: str) -> dict[str, int]:
        try:
            encoder = json.loads(_read_text(path))
        except json.JSONDecodeError as e:
            raise ValueError(f'{path}: not valid JSON ({e})') from e
        if (
            not isinstance(encoder, dict)
            or not encoder
            or not all(isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in encoder.items())
        ):
            raise ValueError(f'{path}: expected a JSON object mapping BPE pieces to non-negative ids')
        if len(set(encoder.values())) != len(encoder):
            raise ValueError(f'{path}: two pieces share an id')
        # Every byte needs its own piece, otherwise some text could not be encoded at all.
        missing = [c for c in pre_tokenizers.ByteLevel.alphabet() if c not in encoder]
        if missing:
            raise ValueError(f'{path}: lacks the byte-level pieces {missing[:8]} (and {max(len(missing) - 8, 0)} more)')
        return encoder

    @staticmethod
    def _read_merges(path: str) -> list[tuple[str, str]]:
        merges = []
        for line_no, line in enumerate(_read_text(path).split('\n'), 1):
            if not line or (line_no == 1 and line.startswith('#version')):
                continue
            parts = line.split(' ')
            if len(parts) != 2 or not all(parts):
                raise ValueError(f'{path}: line {line_no} is not a merge "piece piece": {line!r}')
            merges.append((parts[0], parts[1]))
        if not merges:
            raise ValueError(f'{path}: holds no merges')
        return merges

    @staticmethod
    def _read_dictionary(path: str) -> list[str]:
        """The symbols of a fairseq dictionary (`symbol count` per line), in line order."""
        symbols = []
        seen = set()
        for line_no, line in enumerate(_read_text(path).split('\n'), 1):
            if not line:
                continue
            parts = line.split(' ')
            if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()):
                raise ValueError(f'{path}: line {line_no} is not "symbol count": {line!r}')
            if parts[0] in seen:
                raise ValueError(f'{path}: line {line_no} repeats the symbol {parts[0]!r}')
            seen.add(parts[0])
            symbols.append(parts[0])
        if not symbols:
            raise ValueError(f'{path}: holds no symbols')
        return symbols

    def encode(self, text: str) -> list[int]:
        gpt2_ids = self._tokenizer.encode(text).ids
        return self._gpt2_to_ofa[np.asarray(gpt2_ids, np.int64)].tolist()

    def _symbol(self, token_id: int) -> str | None:
        return self._symbols.get(token_id)

    def _decode_text(self, ids: list[int]) -> str:
        return self._tokenizer.decode(self._ofa_to_gpt2[ids].tolist())


# OFA's BPE files ship with the package, so its exact vocabulary needs no download.
OFA_BPE_DIR = os.path.join(os.path.dirname(__file__), 'assets', 'ofa_bpe')
# The synthetic world's few hundred words: a SentencePiece model of its texts (see assets/README.md), and the 256 codes
# of its patch codebook, so a model of the world needs a 1,740-wide output layer, not OFA's 59,457.
WORLD_SPM_MODEL = os.path.join(os.path.dirname(__file__), 'assets', 'world_spm.model')
WORLD_NUM_CODES = 256


def default_vocabulary() -> 'OFAVocabulary':
    """OFA's own vocabulary (59,457 ids) from the bundled files."""
    return OFAVocabulary(OFA_BPE_DIR)


@functools.lru_cache(maxsize=8)
def vocabulary_from_spec(spec: str) -> Vocabulary:
    """The vocabulary a config names (`data.vocab`): 'ofa' (OFA's own, bundled), 'world' (the synthetic world's,
    bundled), 'bpe:DIR' (OFA-layout BPE files encoder.json, vocab.bpe and dict.txt in DIR) or 'spm:MODEL' (a
    SentencePiece model file)."""
    kind, _, path = spec.partition(':')
    if spec == 'ofa':
        return default_vocabulary()
    if spec == 'world':
        return SentencePieceVocabulary(WORLD_SPM_MODEL, WORLD_NUM_CODES)
    if kind == 'bpe' and path:
        return OFAVocabulary(path)
    if kind == 'spm' and path:
        return SentencePieceVocabulary(path)
    raise ValueError(f"vocabulary {spec!r}: expected 'ofa', 'world', 'bpe:DIR' or 'spm:MODEL_FILE'")


class SentencePieceVocabulary(Vocabulary):
    """A SentencePiece model's pieces in OFA's layout.

    The model's own control pieces (`<s>`, `</s>`, `<pad>` when it has them) and its unknown piece get no slot of their
    own: OFA's ids 0-3 stand for them, and text SentencePiece cannot encode becomes OFA's unk (never happens with
    byte fallback). Every other piece (normal, byte, user-defined, unused), in the model's order, takes ids from 4.
    """

    def __init__(self, model_file: str | os.PathLike, num_codes: int = NUM_CODES):
        model_file = os.fspath(model_file)
        if not os.path.isfile(model_file):
            raise ValueError(f'{model_file}: file not found')
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(model_file)
        except (OSError, RuntimeError) as e:
            raise ValueError(f'{model_file}: not a SentencePiece model ({e})') from e
        n = self._sp.GetPieceSize()
        kept = [i for i in range(n) if not (self._sp.IsControl(i) or self._sp.IsUnknown(i))]
        super().__init__(len(kept), num_codes)
        self._sp_to_ofa = np.full(n, UNK, np.int64)
        self._sp_to_ofa[kept] = np.arange(NUM_SPECIALS, NUM_SPECIALS + len(kept))
        self._ofa_to_sp = np.full(self.mask_id, -1, np.int64)
        self._ofa_to_sp[NUM_SPECIALS:] = kept
        # A model with a dummy prefix reads every text as following a space; an added space would be a piece of its own.
        self._reads_spaced = self._sp.EncodeAsPieces('x')[0].startswith('\u2581')

    def encode(self, text: str) -> list[int]:
        return self._sp_to_ofa[np.asarray(self._sp.Encode(text), np.int64)].tolist()

    def _decode_text(self, ids: list[int]) -> str:
        return self._sp.Decode(self._ofa_to_sp[ids].tolist())

    def encode_spaced(self, text: str) -> list[int]:
        return self.encode(text if self._reads_spaced else ' ' + text)


def train_sentencepiece(
    corpus_files: Sequence[str | os.PathLike], model_prefix: str | os.PathLike, vocab_size: int, **kwargs
) -> str:
    """Trains a SentencePiece model for `SentencePieceVocabulary`; returns the path of the .model file.

    `vocab_size` counts SentencePiece's pieces (its unk and the 256 byte pieces included); the OFA layout adds
    4 specials, mask, codes and bins around them. Defaults: byte fallback (no text maps to unk), no normalization and
    whitespace kept as is (decode(encode(text)) == text), and no bos/eos/pad pieces, since OFA's ids 0-2 play those
    parts. `kwargs` go to `sentencepiece.SentencePieceTrainer.Train` and override these defaults.
    """
    files = [os.fspath(f) for f in corpus_files]
    if not files:
        raise ValueError('no corpus files given')
    for f in files:
        if not os.path.isfile(f):
            raise ValueError(f'{f}: corpus file not found')
    options = dict(
        byte_fallback=True,
        normalization_rule_name='identity',
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
    )
    options.update(kwargs)
    spm.SentencePieceTrainer.Train(input=files, model_prefix=os.fspath(model_prefix), vocab_size=vocab_size, **options)
    return os.fspath(model_prefix) + '.model'


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m ofa_jax.data.vocab', description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    train = commands.add_parser('train_spm', help='train a SentencePiece model for SentencePieceVocabulary')
    train.add_argument('--corpus', nargs='+', required=True, help='text files, one sentence a line')
    train.add_argument('--prefix', required=True, help='output path without extension (.model and .vocab are written)')
    train.add_argument('--vocab_size', type=int, required=True, help="SentencePiece's piece count")
    train.add_argument('--model_type', choices=['unigram', 'bpe'], default='unigram')
    args = parser.parse_args(argv)
    try:
        model_file = train_sentencepiece(args.corpus, args.prefix, args.vocab_size, model_type=args.model_type)
    except (ValueError, RuntimeError) as e:
        parser.error(str(e))
    print(f'{model_file}: {SentencePieceVocabulary(model_file).size} ids in the OFA layout')


if __name__ == '__main__':
    main()
