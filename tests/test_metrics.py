"""The task metrics against pycocoevalcap's scorers (parity) and against VQA, grounding, detection, exact-match and
accuracy cases worked out by hand."""

import shutil

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from ofa_jax import metrics
from ofa_jax.data.tasks import caption_metrics
from ofa_jax.metrics import (
    accuracy,
    bleu,
    bleu4,
    box_iou,
    cider,
    detection_f1,
    exact_match,
    grounding_accuracy,
    normalize_vqa_answer,
    ptb_tokenize,
    strip_punctuation,
    vqa_accuracy,
    vqa_score,
)

# Captions and what pycocoevalcap's PTBTokenizer (Java, Stanford CoreNLP 3.4.1) made of them, punctuation removed.
PTB_CASES = [
    (
        "A man's colour T-shirt, and a dog (brown) on the U.S. street.",
        "a man 's colour t-shirt and a dog -lrb- brown -rrb- on the u.s. street",
    ),
    (
        "He doesn't \"like\" it... I'm sure they're ok; we'll go: 3:30 p.m.",
        "he does n't like it i 'm sure they 're ok we 'll go 3:30 p.m.",
    ),
    ("A 3.5 inch cat/dog & 50% off $5 at St. Mark's -- wow!", "a 3.5 inch cat/dog & 50 % off $ 5 at st. mark 's wow"),
    (
        "A cat - sitting on a 1,000 foot tower?  Two  cats 'on' a `mat` [big] {x}",
        'a cat sitting on a 1,000 foot tower two cats on a mat -lsb- big -rsb- -lcb- x -rcb-',
    ),
    (
        "cannot gonna wanna Mr. Smith's e-mail isn't couldn't o'clock",
        "can not gon na wan na mr. smith 's e-mail is n't could n't o'clock",
    ),
    (
        'A woman–with a dash—here… and “curly” quotes ‘single’ café naïve',
        'a woman with a dash here and curly quotes single café naïve',
    ),
    (
        'A surfboard.  A man riding a wave on top of a surfboard.',
        'a surfboard a man riding a wave on top of a surfboard',
    ),
    ('A group of people standing around a table with food.', 'a group of people standing around a table with food'),
    ('Two giraffes standing next to each other in a field', 'two giraffes standing next to each other in a field'),
    ('The kitchen has a stove, a sink and a refrigerator.', 'the kitchen has a stove a sink and a refrigerator'),
    ('A close up of a plate of food with broccoli', 'a close up of a plate of food with broccoli'),
    ('a bathroom with a toilet, sink, and shower.', 'a bathroom with a toilet sink and shower'),
    ('A person on a skateboard doing a trick at the park!', 'a person on a skateboard doing a trick at the park'),
    ('A sign that says "STOP" on the side of a road.', 'a sign that says stop on the side of a road'),
    ('A black and white photo of a train at a station', 'a black and white photo of a train at a station'),
    ("AT&T sign above a store's door", "at&t sign above a store 's door"),
    ("the players' bench at a baseball game", 'the players bench at a baseball game'),
    ('A bus parked next to a building at 5:00pm', 'a bus parked next to a building at 5:00 pm'),
    ("Children's toys are on the floor.", "children 's toys are on the floor"),
    (
        'A man wearing a hat (and sunglasses) rides a bike.',
        'a man wearing a hat -lrb- and sunglasses -rrb- rides a bike',
    ),
    ('A plate with a hot dog and french fries on it', 'a plate with a hot dog and french fries on it'),
    ('An older man in a suit and tie.', 'an older man in a suit and tie'),
    (
        'A street sign on a pole at the corner of 5th Ave. and Main St.',
        'a street sign on a pole at the corner of 5th ave. and main st.',
    ),
    ('a cat laying on top of a laptop computer.', 'a cat laying on top of a laptop computer'),
    ("a dog's head sticking out of a car window", "a dog 's head sticking out of a car window"),
    ('There are 2 pizzas on the table, each with 8 slices.', 'there are 2 pizzas on the table each with 8 slices'),
    ('People are flying kites at the beach on a windy day', 'people are flying kites at the beach on a windy day'),
    ('two men playing frisbee in a park.', 'two men playing frisbee in a park'),
    ('A pizza with pepperoni, mushrooms, and olives.', 'a pizza with pepperoni mushrooms and olives'),
    ('A tennis player swings his racket at the ball', 'a tennis player swings his racket at the ball'),
    ('A vase filled with flowers sitting on a table.', 'a vase filled with flowers sitting on a table'),
    ("What a great view!! Isn't it?", "what a great view !! is n't it"),
    ('an elephant walking through the tall grass...', 'an elephant walking through the tall grass'),
    ('The cow is brown & white.', 'the cow is brown & white'),
    ('A half-eaten sandwich and a cup of coffee.', 'a half-eaten sandwich and a cup of coffee'),
    ('a bunch of bananas hanging from a tree', 'a bunch of bananas hanging from a tree'),
    ("Someone's cell phone on a wooden desk", "someone 's cell phone on a wooden desk"),
    ('a 12-year-old boy holding a baseball bat', 'a 12-year-old boy holding a baseball bat'),
    ('A woman holding an umbrella in the rain, smiling.', 'a woman holding an umbrella in the rain smiling'),
    ('This is a bed w/ pillows', 'this is a bed w / pillows'),
    ('a u-turn sign on a street corner', 'a u-turn sign on a street corner'),
    ('the "best" dog.  "Quoted at start" and he said: "hi" ok', 'the best dog quoted at start and he said hi ok'),
    (
        'a man , a plan #1 @home ~tilde * star + plus = eq < lt > gt | pipe ^ caret',
        'a man a plan # 1 @home ~ tilde * star + plus = eq < lt > gt | pipe ^ caret',
    ),
    ('e.g. i.e. a.m. U.K. Dr. who jan. 5 No. 5 Co. ltd.', 'e.g. i.e. a.m. u.k. dr. who jan. 5 no. 5 co. ltd.'),
]


# Several images, five references each; candidates short and long, with repeated n-grams, one sharing no word with its
# references, one equally close to references of 7 and 9 words (BLEU takes the shorter), one of a single word.
HAND_REFS = {
    'kitchen': [
        'a man is cooking in a small kitchen',
        'a person prepares food on a stove',
        'a man standing at the stove cooking dinner',
        'someone cooking food in the kitchen',
        'a man in an apron cooks in a kitchen',
    ],
    'dogs': [
        'two dogs are playing in the grass',
        'a pair of dogs run across a green field',
        'two brown dogs play together outside',
        'dogs playing on a lawn',
        'two dogs chase each other on grass',
    ],
    'beach': [
        'a crowd of people on a sunny beach',
        'people walking on the sand near the ocean',
        'a busy beach with many people and umbrellas',
        'the beach is full of people',
        'many people enjoy a day at the beach',
    ],
    'bus': [
        'a red double decker bus on a city street',
        'a bus driving down the road',
        'a double decker bus parked by the curb',
        'a large red bus in traffic',
        'a red bus stops at a bus stop',
    ],
    'cat': [
        'a cat sleeping on a laptop keyboard',
        'a cat lying on top of a computer',
        'a sleepy cat on a laptop',
        'a grey cat naps on the keyboard of a laptop',
        'the cat is asleep on the laptop',
    ],
    'skier': [
        'a skier going down a snowy hill',
        'a person skiing down the mountain',
        'someone skis on fresh snow',
        'a skier in a red jacket on a slope',
        'a man skiing down a steep slope',
    ],
}
HAND_CANDS = {
    'kitchen': 'a man cooking in a kitchen',
    'dogs': 'two dogs two dogs two dogs playing in the grass grass grass',
    'beach': 'purple elephants juggle violins',
    'bus': 'a red bus a red bus on a street',
    'cat': 'cat',
    'skier': 'a skier skiing down a snowy slope',
}


def random_captions(seed: int, images: int = 40, vocabulary: int = 12) -> tuple[dict, dict]:
    """Captions of 0 to 14 words from a small vocabulary, so that n-grams repeat within and across images."""
    rng = np.random.default_rng(seed)
    words = [f'w{i}' for i in range(vocabulary)]

    def sentence():
        return ' '.join(rng.choice(words, size=rng.integers(0, 15)))

    refs = {image: [sentence() for _ in range(5)] for image in range(images)}
    cands = {image: sentence() for image in range(images)}
    return refs, cands


def coco_scores(refs: dict, cands: dict) -> tuple[list[float], float]:
    """pycocoevalcap's corpus BLEU-1..4 and CIDEr-D."""
    res = {key: [cand] for key, cand in cands.items()}
    bleus, _ = Bleu(4).compute_score(refs, res, verbose=0)
    cider_d, _ = Cider().compute_score(refs, res)
    return bleus, float(cider_d)


@pytest.mark.parity
@pytest.mark.parametrize(
    'refs, cands', [(HAND_REFS, HAND_CANDS), random_captions(0), random_captions(1)], ids=['hand', 'random0', 'random1']
)
def test_caption_metrics_equal_pycocoevalcap(refs, cands):
    want_bleus, want_cider = coco_scores(refs, cands)
    assert bleu(refs, cands) == pytest.approx(want_bleus, rel=0, abs=1e-9)
    assert bleu4(refs, cands) == pytest.approx(want_bleus[3], rel=0, abs=1e-9)
    assert cider(refs, cands) == pytest.approx(want_cider, rel=0, abs=1e-9)
    assert 0 < want_bleus[3] < want_bleus[0] < 1 and want_cider > 0  # the sets exercise every term


@pytest.mark.parity
def test_caption_metrics_per_image_cases_equal_pycocoevalcap():
    """Each hand-written image beside one other, so that the short and the unrelated candidates weigh in."""
    for key in HAND_CANDS:
        refs = {key: HAND_REFS[key], 'dogs2': HAND_REFS['dogs']}
        cands = {key: HAND_CANDS[key], 'dogs2': 'dogs on grass'}
        want_bleus, want_cider = coco_scores(refs, cands)
        assert bleu(refs, cands) == pytest.approx(want_bleus, rel=0, abs=1e-9)
        assert cider(refs, cands) == pytest.approx(want_cider, rel=0, abs=1e-9)


@pytest.mark.parity
def test_caption_metrics_score_the_candidate_ids_only():
    """CIDEr's document frequencies and its log(#images) come from the scored images, not every reference given."""
    cands = {key: HAND_CANDS[key] for key in ('kitchen', 'dogs', 'bus')}
    want_bleus, want_cider = coco_scores({key: HAND_REFS[key] for key in cands}, cands)
    assert bleu(HAND_REFS, cands) == pytest.approx(want_bleus, rel=0, abs=1e-9)
    assert cider(HAND_REFS, cands) == pytest.approx(want_cider, rel=0, abs=1e-9)
    assert cider(HAND_REFS, cands) != pytest.approx(cider(HAND_REFS, HAND_CANDS))


def test_caption_metrics_of_known_values():
    refs = {0: ['a b c d'], 1: ['e f g h']}
    assert bleu4(refs, {0: 'a b c d', 1: 'e f g h'}) == pytest.approx(1.0)
    assert cider({0: ['a b c d'], 1: ['e f g h']}, {0: 'a b c d', 1: 'e f g h'}) == pytest.approx(10.0)
    assert cider(refs, {0: 'x y z', 1: 'p q'}) == 0.0
    assert cider({0: ['a b c']}, {0: 'a b c'}) == 0.0  # one image: log(1) - log(df) = 0 for every n-gram


def test_bleu_takes_the_shorter_of_two_equally_close_references():
    # 8 words between references of 6 and 10: the reference length is 6 (no penalty), not 10.
    refs = {0: ['x x x x x x', 'x x x x x x x x x x']}
    assert bleu(refs, {0: 'x x x x x x x x'}, n=1)[0] == pytest.approx(1.0)
    assert bleu(refs, {0: 'x x x x x'}, n=1)[0] == pytest.approx(np.exp(1 - 6 / 5))


def test_caption_metrics_reject_bad_inputs():
    with pytest.raises(ValueError, match='cands is empty'):
        bleu4(HAND_REFS, {})
    with pytest.raises(ValueError, match='refs is empty'):
        cider({}, {'cat': 'a cat'})
    with pytest.raises(ValueError, match="ids of cands are missing from refs.*'horse'"):
        cider(HAND_REFS, {'horse': 'a horse'})
    with pytest.raises(ValueError, match=r"refs\['cat'\] is empty"):
        bleu4({'cat': []}, {'cat': 'a cat'})
    with pytest.raises(TypeError, match=r"refs\['cat'\] is a str"):
        bleu4({'cat': 'a cat'}, {'cat': 'a cat'})
    with pytest.raises(TypeError, match=r"cands\['cat'\] is a list"):
        cider(HAND_REFS, {'cat': ['a cat']})
    with pytest.raises(ValueError, match='n must be at least 1'):
        bleu(HAND_REFS, HAND_CANDS, n=0)


@pytest.mark.parametrize(
    'answer, normalized',
    [
        ('Two', '2'),
        ('a dog', 'dog'),
        ('The Dog.', 'dog'),
        ('dont', "don't"),
        ('yes.', 'yes'),
        ('3.5', '3.5'),
        ('none', '0'),
        ('an apple', 'apple'),
        ('t-shirt', 't shirt'),
        ('red, white', 'red white'),
        ('1,000', '1000'),
        ('hot dog!', 'hot dog'),
        (' black\tand\nwhite ', 'black and white'),
        ('whats up', "what's up"),
        ('Im', 'im'),
        ("somebody'd", 'somebodyd'),
    ],
)
def test_normalize_vqa_answer(answer, normalized):
    assert normalize_vqa_answer(answer) == normalized


def test_vqa_accuracy_averages_the_leave_one_out_subsets():
    others = ['cat', 'bird', 'horse', 'cow', 'sheep', 'goat', 'pig', 'mouse']
    # k of 10 annotators said "dog". Leaving out one of those k leaves k-1 matches, leaving out another leaves k.
    for k in range(11):
        answers = ['dog'] * k + (others * 2)[: 10 - k]
        want = (k * min(1, (k - 1) / 3) + (10 - k) * min(1, k / 3)) / 10
        assert vqa_accuracy({'q': answers}, {'q': 'dog'}) == pytest.approx(want)
    assert vqa_accuracy({'q': ['dog'] * 2 + others}, {'q': 'dog'}) == pytest.approx(0.6)  # (2 * 1/3 + 8 * 2/3) / 10
    assert vqa_accuracy({'q': ['dog'] * 3 + others[:7]}, {'q': 'dog'}) == pytest.approx(0.9)  # (3 * 2/3 + 7) / 10
    assert vqa_accuracy({'q': ['dog'] * 4 + others[:6]}, {'q': 'dog'}) == pytest.approx(1.0)


def test_vqa_accuracy_normalizes_the_prediction():
    answers = {1: ['2'] * 4 + ['3'] * 6, 2: ['dog'] * 5 + ['puppy'] * 5, 3: ["don't"] * 10, 4: ['yes'] * 10}
    assert vqa_accuracy(answers, {1: 'Two', 2: 'a dog', 3: 'dont', 4: 'yes.'}) == pytest.approx(1.0)
    assert vqa_accuracy(answers, {1: '2', 2: 'cat', 3: 'do', 4: 'no'}) == pytest.approx(0.25)


def test_vqa_accuracy_gives_annotator_answers_only_the_punctuation_step():
    mixed = ['t-shirt'] * 9 + ['shirt']
    assert vqa_accuracy({'q': mixed}, {'q': 't-shirt'}) == pytest.approx(1.0)  # both sides become "t shirt"
    # Ten identical answers are left as they are, so the prediction's "t shirt" matches none of them.
    assert vqa_accuracy({'q': ['t-shirt'] * 10}, {'q': 't-shirt'}) == 0.0
    # Number words and articles are not mapped on the annotators' side.
    assert vqa_accuracy({'q': ['Two'] * 5 + ['2'] * 5}, {'q': 'two'}) == pytest.approx(1.0)
    assert vqa_accuracy({'q': ['Two'] * 9 + ['2']}, {'q': 'two'}) == pytest.approx(0.3)
    assert vqa_accuracy({'q': ['a dog'] * 10}, {'q': 'a dog'}) == 0.0


def test_vqa_accuracy_averages_over_questions_and_checks_inputs():
    answers = {1: ['yes'] * 10, 2: ['no'] * 10, 3: ['2'] * 2 + ['3'] * 8}
    assert vqa_accuracy(answers, {1: 'yes', 2: 'yes', 3: '2'}) == pytest.approx((1 + 0 + 0.6) / 3)
    assert vqa_accuracy(answers, {3: '3'}) == pytest.approx(1.0)  # only the predicted questions count
    with pytest.raises(ValueError, match='preds is empty'):
        vqa_accuracy(answers, {})
    with pytest.raises(ValueError, match='answers is empty'):
        vqa_accuracy({}, {1: 'yes'})
    with pytest.raises(ValueError, match='ids of preds are missing from answers'):
        vqa_accuracy(answers, {4: 'yes'})
    with pytest.raises(ValueError, match=r'answers\[1\] is empty'):
        vqa_accuracy({1: []}, {1: 'yes'})


def test_box_iou_of_known_boxes():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 2, 2], [5, 5, 5, 5]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [1, 1, 3, 3], [5, 5, 5, 5]])
    np.testing.assert_allclose(box_iou(a, b), [1.0, 50 / 150, 0.0, 1 / 7, 0.0])
    assert box_iou(a, b).shape == (5,)
    pairwise = box_iou(a[:, None], b[None])
    assert pairwise.shape == (5, 5)
    np.testing.assert_allclose(np.diagonal(pairwise), box_iou(a, b))
    assert pairwise[0, 3] == pytest.approx(4 / 100)
    assert box_iou([0, 0, 4, 4], [2, 0, 6, 4]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match='4 coordinates'):
        box_iou(np.zeros((2, 3)), np.zeros((2, 4)))


def test_grounding_accuracy():
    gt = np.array([[0, 0, 10, 10]] * 4, np.float32)
    # IoUs 1, 0.5 exactly (10x5 inside 10x10), 1/3 and 0.
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [5, 0, 15, 10], [50, 50, 60, 60]], np.float32)
    assert grounding_accuracy(pred, gt) == 0.5
    assert grounding_accuracy(pred, gt, threshold=0.3) == 0.75
    assert grounding_accuracy(pred, gt, threshold=0.9) == 0.25
    with pytest.raises(ValueError, match='pred_boxes is empty'):
        grounding_accuracy(np.zeros((0, 4)), np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r'gt_boxes must have shape \[N, 4\]'):
        grounding_accuracy(pred, gt[:, :2])
    with pytest.raises(ValueError, match='pred_boxes has 4 boxes but gt_boxes has 3'):
        grounding_accuracy(pred, gt[:3])


def test_accuracy():
    targets = {1: 'yes', 2: 'no', 3: 'maybe', 4: 'yes'}
    assert accuracy({1: ' yes', 2: 'no\n', 3: 'no', 4: 'Yes'}, targets) == 0.5
    assert accuracy({3: 'maybe'}, targets) == 1.0
    with pytest.raises(ValueError, match='preds is empty'):
        accuracy({}, targets)
    with pytest.raises(ValueError, match='ids of preds are missing from targets'):
        accuracy({5: 'yes'}, targets)


def test_exact_match():
    references = {1: ['a red square', 'a square'], 2: ['two circles'], 3: ['yes']}
    assert exact_match({1: ' a square ', 2: 'two circle', 3: 'yes'}, references) == pytest.approx(2 / 3)
    assert exact_match({2: 'two circles'}, references) == 1.0  # only the predicted ids count
    with pytest.raises(ValueError, match='preds is empty'):
        exact_match({}, references)
    with pytest.raises(ValueError, match='ids of preds are missing from references'):
        exact_match({4: 'yes'}, references)
    with pytest.raises(TypeError, match=r'preds\[1\] is a list'):
        exact_match({1: ['a square']}, references)


def test_vqa_score_is_the_confidence_of_the_predicted_answer():
    answers = {1: {'2': 1.0, '3': 0.3}, 2: {'dog': 0.6, 'puppy': 0.3}, 3: {'yes': 1.0}}
    assert vqa_score({1: '2', 2: ' dog ', 3: 'no'}, answers) == pytest.approx((1.0 + 0.6 + 0.0) / 3)
    assert vqa_score({1: '3', 2: 'puppy'}, answers) == pytest.approx((0.3 + 0.3) / 2)
    # Compared as OFA's validation compares them, as they are: 'two', 'a dog' and 'Puppy.' are none of the answers.
    assert vqa_score({1: 'two', 2: 'a dog', 3: 'Yes'}, answers) == 0.0
    assert vqa_score({2: 'Puppy.'}, answers) == 0.0
    with pytest.raises(ValueError, match='ids of preds are missing from answers'):
        vqa_score({4: 'yes'}, answers)
    with pytest.raises(ValueError, match='preds is empty'):
        vqa_score({}, answers)


def test_detection_f1_matches_label_and_overlap_once_per_target():
    targets = {
        'a': (np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), ['red square', 'blue circle']),
        'b': (np.array([[0, 0, 8, 8]]), ['green triangle']),
    }
    assert detection_f1(targets, targets) == 1.0
    preds = {
        # right; right box, wrong label; a duplicate of the first (its target is taken)
        'a': (np.array([[0, 0, 10, 9], [20, 20, 30, 30], [0, 0, 10, 10]]), ['red square', 'red square', 'red square']),
        'b': (np.array([[4, 0, 12, 8]]), ['green triangle']),  # IoU 1/3: below 0.5
    }
    # 1 true positive of 4 predictions and 3 targets.
    assert detection_f1(preds, targets) == pytest.approx(2 * 1 / (4 + 3))
    assert detection_f1(preds, targets, threshold=0.3) == pytest.approx(2 * 2 / (4 + 3))
    assert detection_f1({'b': (np.zeros((0, 4)), [])}, targets) == 0.0  # nothing found of one target
    assert detection_f1({'c': (np.zeros((0, 4)), [])}, {'c': (np.zeros((0, 4)), [])}) == 1.0  # nothing to find
    with pytest.raises(ValueError, match='ids of preds are missing from targets'):
        detection_f1({'z': targets['a']}, targets)


@pytest.mark.parametrize('text, tokenized', PTB_CASES)
def test_ptb_tokenize_equals_the_coco_tokenizer(text, tokenized):
    assert ptb_tokenize(text) == tokenized


@pytest.mark.skipif(shutil.which('java') is None, reason='the COCO tokenizer runs Java')
def test_ptb_tokenize_equals_the_coco_tokenizer_run_now():
    captions = [text for text, _ in PTB_CASES] + [ref for refs in HAND_REFS.values() for ref in refs]
    want = PTBTokenizer().tokenize({i: [{'caption': c}] for i, c in enumerate(captions)})
    assert [ptb_tokenize(c) for c in captions] == [want[i][0] for i in range(len(captions))]


def test_caption_metrics_score_as_ofa_does():
    # OFA deletes the hypothesis' punctuation and tokenizes both sides: a reference's final period and upper case no
    # longer keep a caption from matching, and "man's" is two words on both sides.
    references = {
        'surf': ['A man riding a wave on top of a surfboard.', "A surfer's board, in the sea."],
        'kitchen': ['A man is cooking in a small kitchen.', 'Someone cooking food (dinner) in the kitchen'],
        'dogs': ['Two dogs are playing in the grass!', 'A pair of dogs run across a green field.'],
    }
    predictions = {
        'surf': 'a man riding a wave on top of a surfboard.',
        'kitchen': "a man's kitchen",
        'dogs': 'two dogs',
    }
    scores = caption_metrics(predictions, references)
    assert scores['exact_match'] == pytest.approx(1 / 3)
    tokenized_refs = {k: [ptb_tokenize(r) for r in refs] for k, refs in references.items()}
    tokenized_preds = {k: ptb_tokenize(strip_punctuation(p)) for k, p in predictions.items()}
    assert tokenized_preds['kitchen'] == 'a mans kitchen'  # OFA's punctuation strip comes first
    assert tokenized_refs['surf'][1] == "a surfer 's board in the sea"
    want_bleus, want_cider = coco_scores(tokenized_refs, tokenized_preds)
    assert scores['cider'] == pytest.approx(want_cider, rel=0, abs=1e-9) and scores['cider'] > 0
    assert scores['bleu4'] == pytest.approx(want_bleus[3], rel=0, abs=1e-9)
    assert scores['cider'] > cider(
        {k: [r.lower() for r in refs] for k, refs in references.items()}, predictions
    )  # untokenized text scores lower: 'surfboard.' never matches 'surfboard'


@pytest.mark.parity
def test_cider_d_of_a_corpus_scores_each_candidate_as_pycocoevalcap():
    refs, cands = random_captions(2)
    keys = list(cands)
    _, want = Cider().compute_score(refs, {key: [cands[key]] for key in keys})
    scorer = metrics.CiderD.of_corpus([refs[key] for key in keys])
    got = scorer.scores([refs[key] for key in keys], [cands[key] for key in keys])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # Frequencies from a larger corpus (OFA's SCST takes the training references'): an n-gram in every image of it
    # weighs nothing.
    common = metrics.CiderD.of_corpus([[*refs[key], 'w0 w1'] for key in keys])
    assert common.scores([['w0 w1']], ['w0 w1'])[0] == 0.0 < scorer.scores([['w0 w1']], ['w0 w1'])[0]


def test_scst_text_is_what_ofas_reward_reads():
    # criterions/scst_loss.py: punctuation deleted (a final period with it), then ' <eos>'.
    assert metrics.scst_text("A man's T-shirt, on the beach.") == 'A mans Tshirt on the beach <eos>'
    assert metrics.scst_text('  two   dogs ') == 'two dogs <eos>'
