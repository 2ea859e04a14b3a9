"""Scores of OFA's downstream tasks, computed the way their official scorers compute them.

    bleu4(refs, cands), bleu(refs, cands, n)    captioning: pycocoevalcap's Bleu(4)
    cider(refs, cands)                          captioning: CIDEr-D, pycocoevalcap's Cider
    ptb_tokenize(text), strip_punctuation(text) captioning: the COCO evaluation's tokenizer; OFA's hypothesis cleaning
    vqa_accuracy(answers, preds)                VQA v2: the official VQA evaluation (GT-Vision-Lab/VQA)
    grounding_accuracy(pred_boxes, gt_boxes)    RefCOCO/+/g: Acc@0.5
    accuracy(preds, targets)                    SNLI-VE and other classification tasks

Caption and answer inputs are dicts keyed by image or question id. Caption text must already be tokenized
(`ptb_tokenize`: the COCO evaluation runs the PTB tokenizer first); it is split on whitespace. Only the ids of the
candidates are scored, as in COCO's caption evaluation, so references may hold more ids than the candidates.
"""

import math
import re
import string
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

# BLEU's smoothing: added to the clipped n-gram matches and to the n-gram counts, so that an order with no match gives
# a tiny precision instead of a zero division, and the length ratio of an empty corpus stays finite.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9
_CIDER_N = 4
_CIDER_SIGMA = 6.0

Ngram = tuple[str, ...]

# The tokens pycocoevalcap's PTBTokenizer drops after tokenizing. It tokenizes with -lowerCase, so its brackets come
# out as '-lrb-' and never match the upper-case entries here: brackets stay in the scored text, as in the COCO scores.
PTB_PUNCTUATIONS = frozenset(
    ["''", "'", '``', '`', '-LRB-', '-RRB-', '-LCB-', '-RCB-', '.', '?', '!', ',', ':', '-', '--', '...', ';']
)
_PTB_WORD_SPLITS = {
    'cannot': ['can', 'not'],
    'gonna': ['gon', 'na'],
    'gotta': ['got', 'ta'],
    'wanna': ['wan', 'na'],
    'lemme': ['lem', 'me'],
    'gimme': ['gim', 'me'],
}
_PTB_ABBREVIATIONS = (
    'mr|mrs|ms|dr|st|jr|sr|prof|mt|vs|etc|inc|co|ltd|ave|no|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec'
)
_PTB_CHARACTERS = str.maketrans(
    {
        '"': " '' ",  # opening or closing, a quote is dropped
        '\u201c': ' `` ',
        '\u201d': " '' ",
        '\u2018': ' ` ',
        '\u2019': " ' ",
        '\u2013': ' -- ',
        '\u2014': ' -- ',
        '\u2026': ' ... ',
        '(': ' -lrb- ',
        ')': ' -rrb- ',
        '[': ' -lsb- ',
        ']': ' -rsb- ',
        '{': ' -lcb- ',
        '}': ' -rcb- ',
    }
)
_PTB_TOKEN = re.compile(
    r"\.\.\.|--|``|''|-[lr][rsc]b-"  # dots, dashes, quotes, brackets
    rf'|(?:[^\W\d_]\.){{2,}}|(?:{_PTB_ABBREVIATIONS})\.(?!\w)'  # u.s., p.m., st.: the period stays on
    r'|[!?]+'  # '!!' and '?!' are one token each, and not dropped
    r'|\d+(?:[.,:/]\d+)+|\d+(?![\w-])'  # 3.5, 1,000, 3:30, 1/2; 5th and 12-year-old are words
    r"|'(?:s|m|d|re|ve|ll)(?!\w)"
    r"|[\w&@]+(?:[-/'][\w&@]+)*"  # t-shirt, cat/dog, at&t, o'clock
    r'|\S'
)
_PTB_CLITIC = re.compile(r"(.+?)(n't|'s|'m|'d|'re|'ve|'ll)$")
_PUNCTUATION_TABLE = str.maketrans('', '', string.punctuation)


def ptb_tokenize(text: str) -> str:
    """A caption as the COCO caption evaluation scores it: pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1's
    PTBTokenizer, -lowerCase, one line per caption) followed by its removal of PTB_PUNCTUATIONS, without Java.

    Lower case; punctuation split from words ('surfboard.' -> 'surfboard'), clitics split ("man's" -> "man 's",
    "doesn't" -> "does n't", 'cannot' -> 'can not'), abbreviations keep their period ('u.s.', 'st.'), numbers their
    separators ('3.5', '1,000', '3:30'), words their inner hyphens and slashes ('t-shirt', 'cat/dog'); quotes become
    `` and '' and brackets -lrb- / -rrb-. Checked against the Java tokenizer on the captions of tests/test_metrics.py.
    """
    words: list[str] = []
    for chunk in text.lower().translate(_PTB_CHARACTERS).split():
        for token in _PTB_TOKEN.findall(chunk):
            clitic = _PTB_CLITIC.match(token)
            if token in _PTB_WORD_SPLITS:
                words += _PTB_WORD_SPLITS[token]
            elif clitic:
                words += clitic.groups()
            else:
                words.append(token)
    return ' '.join(word for word in words if word not in PTB_PUNCTUATIONS)


def strip_punctuation(text: str) -> str:
    """OFA's cleaning of a generated caption before scoring: every character of `string.punctuation` deleted."""
    return text.translate(_PUNCTUATION_TABLE).strip()


def _ngram_counts(words: list[str], n: int) -> Counter[Ngram]:
    # Orders first, then positions: the order in which CIDEr's sums run, so that its floats add up the same way.
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check_ids(refs: Mapping, cands: Mapping, refs_name: str, cands_name: str) -> None:
    for name, value in ((refs_name, refs), (cands_name, cands)):
        if not value:
            raise ValueError(f'{name} is empty')
    missing = [key for key in cands if key not in refs]
    if missing:
        raise ValueError(f'{len(missing)} ids of {cands_name} are missing from {refs_name}, e.g. {missing[:5]}')


def _check_texts(texts: Mapping[Hashable, str], name: str) -> None:
    for key, text in texts.items():
        if not isinstance(text, str):
            raise TypeError(f'{name}[{key!r}] is a {type(text).__name__}, not a str')


def _check_text_lists(lists: Mapping[Hashable, Sequence[str]], keys: Sequence[Hashable], name: str) -> None:
    for key in keys:
        texts = lists[key]
        if isinstance(texts, str):  # a str would be taken as a list of one-character texts
            raise TypeError(f'{name}[{key!r}] is a str, not a list of str')
        if not texts:
            raise ValueError(f'{name}[{key!r}] is empty')


def _caption_pairs(
    refs: Mapping[Hashable, Sequence[str]], cands: Mapping[Hashable, str]
) -> list[tuple[list[str], list[list[str]]]]:
    """(candidate words, [reference words]) for each candidate id."""
    _check_ids(refs, cands, 'refs', 'cands')
    _check_texts(cands, 'cands')
    _check_text_lists(refs, list(cands), 'refs')
    return [(cand.split(), [ref.split() for ref in refs[key]]) for key, cand in cands.items()]


def bleu(refs: Mapping[Hashable, Sequence[str]], cands: Mapping[Hashable, str], n: int = 4) -> list[float]:
    """Corpus BLEU-1 .. BLEU-n, as pycocoevalcap's Bleu(n) with its "closest" reference length.

    Matches are clipped by the largest count of the n-gram in any one reference of the image. The reference length of
    a candidate is that of its reference closest in length, the shorter one on a tie. Counts are pooled over the
    corpus before the precisions, the geometric means and the brevity penalty are taken.
    """
    if n < 1:
        raise ValueError(f'n must be at least 1, got {n}')
    correct, guess = [0] * n, [0] * n
    cand_len = ref_len = 0
    for cand, image_refs in _caption_pairs(refs, cands):
        max_ref_counts = Counter()
        for ref in image_refs:
            max_ref_counts |= _ngram_counts(ref, n)  # union keeps the larger count
        for gram, count in _ngram_counts(cand, n).items():
            correct[len(gram) - 1] += min(count, max_ref_counts[gram])
        for k in range(n):
            guess[k] += max(0, len(cand) - k)
        cand_len += len(cand)
        ref_len += min((abs(len(ref) - len(cand)), len(ref)) for ref in image_refs)[1]

    scores, precision_product = [], 1.0
    for k in range(n):
        precision_product *= (correct[k] + _BLEU_TINY) / (guess[k] + _BLEU_SMALL)
        scores.append(precision_product ** (1.0 / (k + 1)))
    ratio = (cand_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [score * penalty for score in scores]
    return scores


def bleu4(refs: Mapping[Hashable, Sequence[str]], cands: Mapping[Hashable, str]) -> float:
    """Corpus BLEU-4 of tokenized captions, as pycocoevalcap's Bleu(4); see `bleu`."""
    return bleu(refs, cands, 4)[3]


def _tfidf(
    counts: Counter[Ngram], idf: Mapping[Ngram, float], unseen_idf: float
) -> tuple[list[dict[Ngram, float]], list[float], int]:
    """Per-order tf-idf vectors of one sentence, their norms, and the length CIDEr-D compares."""
    vectors: list[dict[Ngram, float]] = [{} for _ in range(_CIDER_N)]
    squares = [0.0] * _CIDER_N
    for gram, count in counts.items():
        weight = count * idf.get(gram, unseen_idf)
        vectors[len(gram) - 1][gram] = weight
        squares[len(gram) - 1] += weight * weight
    # The official scorer takes the number of bigrams as the sentence length: one less than the number of words.
    length = sum(counts[gram] for gram in vectors[1])
    return vectors, [math.sqrt(s) for s in squares], length


def cider(refs: Mapping[Hashable, Sequence[str]], cands: Mapping[Hashable, str]) -> float:
    """CIDEr-D of tokenized captions, as pycocoevalcap's Cider (n=4, sigma=6).

    Document frequencies come from the references of the scored images only: an n-gram counts once per image whose
    references hold it, and idf = log(#images) - log(max(1, df)). For each order, a candidate's tf-idf weights are
    clipped to the reference's before the cosine, which is then scaled by exp(-d^2 / (2 sigma^2)) with d the
    difference in bigram counts. Per image: the mean over orders, averaged over the references, times 10; the score is
    the mean over images. A corpus of one image scores 0, since every idf is then 0.
    """
    pairs = _caption_pairs(refs, cands)
    image_refs = [[' '.join(ref) for ref in refs_words] for _, refs_words in pairs]
    return float(np.mean(CiderD.of_corpus(image_refs).scores(image_refs, [' '.join(cand) for cand, _ in pairs])))


class CiderD:
    """CIDEr-D (n=4, sigma=6; see `cider`) with document frequencies taken once from a corpus of references, as
    OFA's SCST reward takes them from the training references (its cached coco-train-words)."""

    def __init__(self, document_frequency: Mapping[Ngram, int], log_images: float):
        """document_frequency: of each n-gram (n <= 4), the number of images whose references hold it;
        log_images: the log of the number of images."""
        self.document_frequency, self.log_images = dict(document_frequency), float(log_images)

    @classmethod
    def of_corpus(cls, corpus: Sequence[Sequence[str]]) -> 'CiderD':
        """corpus: each image's references, tokenized (words split by spaces)."""
        if not corpus:
            raise ValueError('CiderD needs a corpus of at least one image')
        per_image = [set().union(*(_ngram_counts(ref.split(), _CIDER_N) for ref in refs)) for refs in corpus]
        # numpy's log, as the official scorer takes it, so that the weights agree to the last bit.
        return cls(Counter(gram for grams in per_image for gram in grams), np.log(float(len(corpus))))

    def scores(self, refs: Sequence[Sequence[str]], cands: Sequence[str]) -> np.ndarray:
        """float64 [n]: the CIDEr-D of each tokenized candidate against its tokenized references."""
        idf = {gram: float(self.log_images - np.log(float(df))) for gram, df in self.document_frequency.items()}
        unseen_idf = float(self.log_images)
        scores = []
        for cand, image_refs in zip(cands, refs, strict=True):
            cand_vectors, cand_norms, cand_length = _tfidf(_ngram_counts(cand.split(), _CIDER_N), idf, unseen_idf)
            per_order = np.zeros(_CIDER_N)
            for ref in image_refs:
                ref_vectors, ref_norms, ref_length = _tfidf(_ngram_counts(ref.split(), _CIDER_N), idf, unseen_idf)
                penalty = math.e ** (-(float(cand_length - ref_length) ** 2) / (2 * _CIDER_SIGMA**2))
                similarity = np.zeros(_CIDER_N)
                for k in range(_CIDER_N):
                    for gram, weight in cand_vectors[k].items():
                        ref_weight = ref_vectors[k].get(gram, 0.0)
                        similarity[k] += min(weight, ref_weight) * ref_weight
                    if cand_norms[k] != 0 and ref_norms[k] != 0:
                        similarity[k] /= cand_norms[k] * ref_norms[k]
                    similarity[k] *= penalty
                per_order += similarity
            scores.append(np.mean(per_order) / len(image_refs) * 10.0)
        return np.array(scores, np.float64)


def scst_text(text: str) -> str:
    """A caption as OFA's SCST reward reads it: punctuation deleted, a final period gone, then ' <eos>' (so that the
    end of a sentence counts in its n-grams, as in OFA's cached document frequencies)."""
    text = ' '.join(strip_punctuation(text).split())
    return f'{text.removesuffix(".").strip()} <eos>'


# The official VQA evaluation's normalization tables.
_VQA_PUNCTUATION = (
    ';',
    '/',
    '[',
    ']',
    '"',
    '{',
    '}',
    '(',
    ')',
    '=',
    '+',
    '\\',
    '_',
    '-',
    '>',
    '<',
    '@',
    '`',
    ',',
    '?',
    '!',
)
_VQA_DIGIT_COMMA_DIGIT = re.compile(r'\d,\d')
_VQA_PERIOD = re.compile(r'\.(?!\d)')  # a period not followed by a digit: "3.5" keeps its point
# The official code passes re.UNICODE (32) where `sub` takes its count, so at most 32 periods go.
_VQA_MAX_PERIODS = 32
_VQA_NUMBERS = {
    'none': '0',
    'zero': '0',
    'one': '1',
    'two': '2',
    'three': '3',
    'four': '4',
    'five': '5',
    'six': '6',
    'seven': '7',
    'eight': '8',
    'nine': '9',
    'ten': '10',
}
_VQA_ARTICLES = frozenset({'a', 'an', 'the'})
# Its entries with capitals ("Im", "Ive") never match lowercased words and are left out, as are those that map a word
# to itself. "somebody'd" -> "somebodyd" runs backwards in the official table and is kept so.
_VQA_CONTRACTIONS = {
    'aint': "ain't",
    'arent': "aren't",
    'cant': "can't",
    'couldve': "could've",
    'couldnt': "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    'didnt': "didn't",
    'doesnt': "doesn't",
    'dont': "don't",
    'hadnt': "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    'hasnt': "hasn't",
    'havent': "haven't",
    'hed': "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    'hes': "he's",
    'howd': "how'd",
    'howll': "how'll",
    'hows': "how's",
    'isnt': "isn't",
    'itd': "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    'itll': "it'll",
    'maam': "ma'am",
    'mightnt': "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    'mightve': "might've",
    'mustnt': "mustn't",
    'mustve': "must've",
    'neednt': "needn't",
    'notve': "not've",
    'oclock': "o'clock",
    'oughtnt': "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    'shant': "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    'shouldve': "should've",
    'shouldnt': "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": 'somebodyd',
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    'somebodyll': "somebody'll",
    'somebodys': "somebody's",
    'someoned': "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    'someonell': "someone'll",
    'someones': "someone's",
    'somethingd': "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    'somethingll': "something'll",
    'thats': "that's",
    'thered': "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    'therere': "there're",
    'theres': "there's",
    'theyd': "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    'theyll': "they'll",
    'theyre': "they're",
    'theyve': "they've",
    'twas': "'twas",
    'wasnt': "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    'weve': "we've",
    'werent': "weren't",
    'whatll': "what'll",
    'whatre': "what're",
    'whats': "what's",
    'whatve': "what've",
    'whens': "when's",
    'whered': "where'd",
    'wheres': "where's",
    'whereve': "where've",
    'whod': "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    'wholl': "who'll",
    'whos': "who's",
    'whove': "who've",
    'whyll': "why'll",
    'whyre': "why're",
    'whys': "why's",
    'wont': "won't",
    'wouldve': "would've",
    'wouldnt': "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    'yall': "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    'youd': "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    'youll': "you'll",
    'youre': "you're",
    'youve': "you've",
}


def _vqa_punctuation(text: str) -> str:
    # Each mark is either deleted or turned into a space everywhere, decided on the whole input: deleted if it touches
    # a space somewhere or if the text has a comma between digits ("1,000"), otherwise a space ("t-shirt" -> "t shirt").
    out = text
    delete_all = _VQA_DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in _VQA_PUNCTUATION:
        out = out.replace(mark, '' if delete_all or mark + ' ' in text or ' ' + mark in text else ' ')
    return _VQA_PERIOD.sub('', out, count=_VQA_MAX_PERIODS)


def normalize_vqa_answer(answer: str) -> str:
    """A predicted answer as the official VQA evaluation compares it.

    Newlines and tabs become spaces, punctuation is deleted or spaced out, periods not followed by a digit go, then
    the lowercased words have number words up to ten turned into digits ("none" -> "0"), articles dropped and
    apostrophe-less contractions restored ("dont" -> "don't").
    """
    text = _vqa_punctuation(answer.replace('\n', ' ').replace('\t', ' ').strip())
    words = [_VQA_NUMBERS.get(word, word) for word in text.lower().split()]
    return ' '.join(_VQA_CONTRACTIONS.get(word, word) for word in words if word not in _VQA_ARTICLES)


def _vqa_question_accuracy(answers: Sequence[str], pred: str) -> float:
    # The annotators' answers only get the punctuation step, and only when they are not all the same: the official
    # data are normalized already. So "Two" from an annotator never matches, and ten identical "t-shirt" answers
    # never match a prediction (which becomes "t shirt").
    if len(set(answers)) > 1:
        answers = [_vqa_punctuation(answer) for answer in answers]
    matches = sum(answer == pred for answer in answers)
    # One leave-one-out subset per annotator; the subset scores min(matches among the others / 3, 1).
    subsets = [min(1.0, (matches - (answer == pred)) / 3) for answer in answers]
    return sum(subsets) / len(subsets)


def vqa_answer_confidences(answers: Sequence[str]) -> dict[str, float]:
    """Each distinct answer of one question's annotators, with the VQA accuracy a prediction of it scores (0.3 for
    one annotator of ten, 0.6 for two, 0.9 for three, 1 for four or more): the soft targets and confidences of OFA's
    VQA data."""
    return {answer: _vqa_question_accuracy(answers, answer) for answer in dict.fromkeys(answers)}


def vqa_accuracy(answers: Mapping[Hashable, Sequence[str]], preds: Mapping[Hashable, str]) -> float:
    """VQA accuracy in [0, 1], as the official VQA evaluation computes it (which reports 100x this, rounded).

    `answers` maps a question id to its annotators' answers (ten in VQA v2); `preds` maps a question id to the
    predicted answer, normalized by `normalize_vqa_answer`. A question scores the mean over its leave-one-out subsets
    of annotators of min(#subset answers equal to the prediction / 3, 1): 0.3 for one matching annotator of ten, 0.6
    for two, 0.9 for three, 1 for four or more. The result is the mean over the predicted questions.
    """
    _check_ids(answers, preds, 'answers', 'preds')
    _check_texts(preds, 'preds')
    _check_text_lists(answers, list(preds), 'answers')
    scores = [_vqa_question_accuracy(answers[key], normalize_vqa_answer(pred)) for key, pred in preds.items()]
    return sum(scores) / len(scores)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes (x0, y0, x1, y1) in continuous coordinates.

    a: [..., 4] and b: [..., 4], broadcast against each other; returns [...] float64. Pairwise IoUs of [N, 4] and
    [M, 4] boxes: box_iou(a[:, None], b[None]) -> [N, M]. Inverted boxes have no area; a zero union gives 0.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape[-1:] != (4,) or b.shape[-1:] != (4,):
        raise ValueError(f'boxes must end in 4 coordinates, got shapes {a.shape} and {b.shape}')
    top_left = np.maximum(a[..., :2], b[..., :2])
    bottom_right = np.minimum(a[..., 2:], b[..., 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[..., 2:] - a[..., :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)
    union = area_a + area_b - intersection
    return np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)


def grounding_accuracy(pred_boxes: np.ndarray, gt_boxes: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of predicted boxes whose IoU with their ground-truth box is at least `threshold` (Acc@0.5).

    pred_boxes, gt_boxes: [N, 4] as (x0, y0, x1, y1), row i of one paired with row i of the other.
    """
    pred_boxes, gt_boxes = np.asarray(pred_boxes, np.float64), np.asarray(gt_boxes, np.float64)
    for name, boxes in (('pred_boxes', pred_boxes), ('gt_boxes', gt_boxes)):
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f'{name} must have shape [N, 4], got {boxes.shape}')
        if not len(boxes):
            raise ValueError(f'{name} is empty')
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(f'pred_boxes has {len(pred_boxes)} boxes but gt_boxes has {len(gt_boxes)}')
    return float(np.mean(box_iou(pred_boxes, gt_boxes) >= threshold))


def accuracy(preds: Mapping[Hashable, str], targets: Mapping[Hashable, str]) -> float:
    """Fraction of `preds` equal to their `targets` entry, both stripped (SNLI-VE's yes/no/maybe, classification)."""
    _check_ids(targets, preds, 'targets', 'preds')
    _check_texts(preds, 'preds')
    _check_texts({key: targets[key] for key in preds}, 'targets')
    return sum(pred.strip() == targets[key].strip() for key, pred in preds.items()) / len(preds)


def exact_match(preds: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> float:
    """Fraction of `preds` equal (stripped) to one of their references."""
    _check_ids(references, preds, 'references', 'preds')
    _check_texts(preds, 'preds')
    _check_text_lists(references, list(preds), 'references')
    return sum(pred.strip() in [r.strip() for r in references[key]] for key, pred in preds.items()) / len(preds)


def vqa_score(preds: Mapping[Hashable, str], answers: Mapping[Hashable, Mapping[str, float]]) -> float:
    """OFA's VQA validation score (utils/eval_utils.py eval_vqa_gen: `ref_dict.get(hyp, 0)`): the mean confidence
    (VQA v2's soft accuracy per question) of each predicted answer, stripped, among its question's answers
    {answer: confidence}, compared as they are: OFA's answers and answer list, and VQA v2's annotations, hold
    normalized answers already. `vqa_accuracy` computes the official score from the annotators' raw answers."""
    _check_ids(answers, preds, 'answers', 'preds')
    _check_texts(preds, 'preds')
    return sum(float(answers[key].get(pred.strip(), 0.0)) for key, pred in preds.items()) / len(preds)


def detection_f1(
    preds: Mapping[Hashable, tuple[np.ndarray, Sequence[str]]],
    targets: Mapping[Hashable, tuple[np.ndarray, Sequence[str]]],
    threshold: float = 0.5,
) -> float:
    """F1 of detected objects over all images: a predicted (box [4], label) is a true positive when it matches an
    unmatched target object of the same label with IoU >= `threshold` (greedily, predictions in order).

    preds, targets: image id -> (boxes [N, 4] as (x0, y0, x1, y1), N labels)."""
    _check_ids(targets, preds, 'targets', 'preds')
    true_positives = predicted = expected = 0
    for key, (boxes, labels) in preds.items():
        target_boxes, target_labels = targets[key]
        boxes, target_boxes = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(target_boxes).reshape(-1, 4)
        predicted, expected = predicted + len(boxes), expected + len(target_boxes)
        free = list(range(len(target_boxes)))
        for box, label in zip(boxes, labels):
            for j in free:
                if target_labels[j] == label and box_iou(box, target_boxes[j]) >= threshold:
                    free.remove(j)
                    true_positives += 1
                    break
    if not predicted + expected:
        return 1.0
    return 2 * true_positives / (predicted + expected)
