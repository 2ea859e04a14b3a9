"""OFA's finetuning recipes: what ofa-jax builds from a raw record equals what OFA's own procedure builds, each OFA
procedure written out below from the lines of OFA-Sys/OFA it cites."""

import base64
import importlib.util
import io
import json
import pathlib
import re
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, small_config
from PIL import Image

from ofa_jax import sharding, train
from ofa_jax.checkpoint import model_from_config
from ofa_jax.data import mixtures, pipeline
from ofa_jax.data import vocab as V
from ofa_jax.data.pipeline import UNCONSTRAINED
from ofa_jax.data.registry import Task
from ofa_jax.data.tasks import TASKS, resize_transform
from ofa_jax.data.vocab import default_vocabulary

VOCAB = default_vocabulary()
IMAGE = np.full((24, 32, 3), 128, np.uint8)


def preprocess(kind: str, record: dict) -> dict:
    example = dict(record)
    for step in mixtures.finetune_preprocessors(kind, VOCAB, resize_transform(32)):
        example = step(example, np.random.default_rng(0))
    return example


def ofa_caption_target(caption: str, max_tgt_length: int = 20) -> str:
    # data/mm_data/caption_dataset.py:128-131 (training, not SCST): transtab deletes string.punctuation; :138 encodes
    # ' {}'.format(tgt_caption). run_scripts/caption/train_caption_stage1*.sh: --max-tgt-length=20.
    transtab = str.maketrans({key: None for key in string.punctuation})
    caption = caption.translate(transtab).strip()
    return ' '.join(caption.strip().split()[:max_tgt_length])


@pytest.mark.parametrize(
    'caption',
    [
        "A man's T-shirt, on the beach.",
        '  Two dogs   playing (outside) in the snow!  ',
        'A very long caption that goes on and on with many words about a kitchen, a stove, a sink, a fridge and a cat.',
        'DOGS & cats: 3.5 of them',
    ],
)
def test_the_caption_target_is_ofas(caption):
    example = preprocess('caption', {'image': IMAGE, 'caption': caption})
    assert example['target_ids'] == VOCAB.encode(' ' + ofa_caption_target(caption))
    assert example['source_ids'] == VOCAB.encode(' what does the image describe?')  # caption_dataset.py:117


def modelscope_criterion():
    """modelscope's port of OFA's criterion module, loaded on its own (it imports torch and transformers only)."""
    spec = importlib.util.find_spec('modelscope')
    path = pathlib.Path(spec.submodule_search_locations[0]) / 'trainers/multi_modal/ofa/ofa_trainer_utils.py'
    module_spec = importlib.util.spec_from_file_location('ofa_trainer_utils', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('drop_worst_ratio', [0.0, 0.2, 0.5])
@pytest.mark.parametrize('constrained', [False, True])
def test_the_loss_is_ofas_criterion(drop_worst_ratio, constrained):
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(0)
    batch, length, width, eps = 4, 7, 40, 0.1
    logits = rng.normal(size=(batch, length, width)).astype(np.float32) * 3
    targets = rng.integers(4, width, size=(batch, length))
    targets[np.arange(batch), rng.integers(2, length, size=batch)] = V.EOS
    targets[:, -2:] = V.PAD  # padding the loss skips
    start, end = (10, 30) if constrained else (0, width)
    if constrained:
        targets = np.where(targets >= 4, rng.integers(start, end, size=targets.shape), targets)
    ranges = np.tile([start, end], (batch, 1))

    loss, _ = train.token_losses(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(ranges), eps)
    tokens = jnp.asarray(targets != V.PAD)
    if drop_worst_ratio:
        tokens = train.drop_worst_tokens(loss, tokens, drop_worst_ratio)
    ours = float(jnp.where(tokens, loss, 0.0).sum() / tokens.sum())

    # OFA's: logits outside [start, end) but for the 4 special ids at -inf (constraint_start/end), log-softmax,
    # padding removed, then the label-smoothed loss over the kept tokens (update_num 1 > drop_worst_after 0).
    masked = torch.tensor(logits)
    if constrained:
        masked[:, :, 4:start] = -float('inf')
        masked[:, :, end:] = -float('inf')
    lprobs = torch.log_softmax(masked, dim=-1).view(-1, width)
    target = torch.tensor(targets).view(-1)
    lprobs, target = lprobs[target != V.PAD], target[target != V.PAD]
    want, _, _ = modelscope_criterion().label_smoothed_nll_loss(
        lprobs,
        target,
        eps,
        1,
        drop_worst_ratio=drop_worst_ratio,
        drop_worst_after=0,
        constraint_start=start if constrained else None,
        constraint_end=end if constrained else None,
    )
    assert ours == pytest.approx(float(want), rel=1e-5)


def test_a_frozen_token_embedding_is_neither_updated_nor_clipped():
    config = small_config(freeze_token_embedding=True, clip_norm=1.0, learning_rate=0.1, warmup_steps=0)
    params = {'embed_tokens': {'embedding': jnp.ones((6, 2))}, 'layer': {'kernel': jnp.ones((2, 2))}}
    grads = {'embed_tokens': {'embedding': jnp.full((6, 2), 100.0)}, 'layer': {'kernel': jnp.full((2, 2), 0.1)}}
    optimizer = train.make_optimizer(config)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    assert not np.any(np.asarray(updates['embed_tokens']['embedding']))  # no step, no weight decay
    # The rest steps as if the embedding were not there: its huge gradient does not shrink the clipped norm.
    config.freeze_token_embedding = False
    alone = train.make_optimizer(config)
    want, _ = alone.update(
        {'layer': grads['layer']}, alone.init({'layer': params['layer']}), {'layer': params['layer']}
    )
    np.testing.assert_allclose(updates['layer']['kernel'], want['layer']['kernel'], rtol=1e-6)


def test_a_frozen_token_embedding_has_sharded_optimizer_state():
    """The moments' shardings follow the parameters' logical axes, the frozen embedding having none."""
    config = small_config(freeze_token_embedding=True)
    model, optimizer = model_from_config(config), train.make_optimizer(config)
    mesh = sharding.make_mesh(**config.mesh)
    shardings = train.state_shardings(model, optimizer, config, mesh)
    state = jax.eval_shape(lambda: train.initial_state(model, optimizer, config, config.data.image_size))
    assert jax.tree_util.tree_structure(shardings.opt_state) == jax.tree_util.tree_structure(state.opt_state)


def test_epochs_count_the_tasks_records():
    config = small_config(epochs=2.5, total_steps=0, batch_size=4)
    task = Task('ten', list(range(10)), [])
    assert train.steps_for_epochs(config, [task]) == 7  # ceil(2.5 * 10 / 4)
    with pytest.raises(ValueError, match='needs one task; the config mixes 2'):
        train.steps_for_epochs(config, [task, task])
    config.total_steps = 100
    with pytest.raises(ValueError, match='set one of total_steps'):
        train.steps_for_epochs(config, [task])


@pytest.mark.parametrize(
    'arg, batch, epochs, steps, lr, drop_path',
    [  # OFA's scripts: global batch = --batch-size x --update-freq x GPUs
        ('caption', 128, 5, 0, 1e-5, 0.1),  # caption/train_caption_stage1_base.sh:23-30,40,51: 8 x 4 x 4
        ('caption,large', 128, 2, 0, 1e-5, 0.1),  # caption/train_caption_stage1.sh:40
        ('vqa', 512, 15, 0, 5e-5, 0.1),  # vqa/train_vqa_base_distributed.sh:11-13,40-44,70-74: 4 x 4 x 8 x 4
        ('vqa,large', 512, 0, 40_000, 5e-5, 0.2),  # vqa/train_vqa_distributed.sh:43-44,70-74
        ('grounding', 128, 10, 0, 5e-5, 0.1),  # refcoco/train_refcoco_base.sh:26-30,38-40: 4 x 8 x 4
        ('grounding,large', 128, 10, 0, 3e-5, 0.2),  # refcoco/train_refcoco.sh:29-30,38-40
        ('snli_ve', 256, 5, 0, 5e-5, 0.1),  # snli_ve/train_snli_ve_base.sh:26-30,39-41: 4 x 8 x 8
        ('snli_ve,large', 256, 6, 0, 2e-5, 0.2),  # snli_ve/train_snli_ve.sh:29-30,39-41
        ('caption_scst', 64, 3, 0, 1e-5, 0.0),  # caption/train_caption_stage2_base.sh:22-34,41: 2 x 4 x 8
        ('caption_scst,large', 64, 3, 0, 1e-5, 0.0),  # caption/train_caption_stage2.sh
        ('summarization', 512, 6, 0, 1e-4, 0.1),  # gigaword/train_gigaword.sh:7,24-36,41,43: 64 x 2 x 4
    ],
)
def test_the_finetuning_recipes_are_ofas_scripts(arg, batch, epochs, steps, lr, drop_path):
    config = load_config('finetune', arg)
    assert (config.batch_size, config.epochs, config.total_steps, config.learning_rate) == (batch, epochs, steps, lr)
    overrides = config.model_overrides
    assert overrides['encoder_drop_path_rate'] == overrides['decoder_drop_path_rate'] == drop_path
    kind = arg.split(',')[0]
    assert config.freeze_token_embedding == (kind in ('caption', 'vqa', 'caption_scst'))  # --freeze-*-embedding
    assert config.scst == (kind == 'caption_scst')
    if config.scst:  # stage 2: dropout 0, to OFA's --end-learning-rate (large: 2e-7), the best stage-2 CIDEr kept
        assert (config.model_overrides['dropout'], config.model_overrides['attention_dropout']) == (0.0, 0.0)
        assert config.end_learning_rate == (2e-7 if arg.endswith('large') else 0.0)
        assert config.validation.metric == 'caption_cider' and list(config.data.tasks) == ['caption']
    assert (config.drop_worst_ratio, config.drop_worst_after) == {
        'caption': (0.2, 6000),
        'caption,large': (0.2, 2500),
    }.get(arg, (0.0, 0))
    warmup = (config.warmup_ratio, config.warmup_steps)
    assert warmup == {'vqa': (0.04, 0), 'vqa,large': (0.0, 1000)}.get(arg, (0.06, 0))
    # --validate-interval-updates=500; VQA's scripts validate once an epoch (--validate-interval=1)
    assert (config.validation.every, config.validation.every_epochs) == {
        'vqa': (500, 1.0),
        'vqa,large': (500, 1.0),
    }.get(arg, (0, 0.0) if kind == 'summarization' else (500, 0.0))
    if kind == 'vqa':
        one_epoch = Task('vqa', [{}] * 10_000, ())
        assert train.validation_interval(config, [one_epoch]) == round(10_000 / config.batch_size)
    if kind == 'summarization':  # --max-src-length=512, --noise-ratio=0.2, --label-smoothing=0.1
        assert config.data.max_source_length == 512 and config.data.tasks.summarization.noise_ratio == 0.2
        assert config.label_smoothing == 0.1


def test_gigaword_examples_are_ofas():
    # data/nlg_data/summary_dataset.py __getitem__: pre_caption of the article (512 words) and of the target (64
    # words), '<unk>' written 'unk', the target after a space; its decoder input noised (add_noise_to_tgt).
    article = 'Police-in <unk> said on Monday ' + ' '.join(f'w{i}' for i in range(600))
    headline = ' '.join(['<unk>', 'police', 'ARREST', 'suspect'] + [f'h{i}' for i in range(70)])
    record = {'text': article, 'target': headline}
    example = preprocess('summarization', record)
    source = ofa_pre_text(article, 512, person=True).replace('<unk>', 'unk')
    assert example['source_ids'] == VOCAB.encode(f' what is the summary of article " {source} "?')
    target = ofa_pre_text(headline, 64, person=True).replace('<unk>', 'unk')
    assert example['target_ids'] == VOCAB.encode(' ' + target) and 'decoder_input_ids' not in example

    steps = mixtures.finetune_preprocessors('summarization', VOCAB, resize_transform(32), noise_ratio=0.2)
    target_ids, shares = np.array(example['target_ids']), []
    for seed in range(20):
        noisy = dict(record)
        for step in steps:
            noisy = step(noisy, np.random.default_rng(seed))
        assert noisy['target_ids'] == example['target_ids']
        decoder_input = np.array(noisy['decoder_input_ids'])
        changed = decoder_input != target_ids
        assert np.all((decoder_input[changed] >= 4) & (decoder_input[changed] < VOCAB.code_id(0)))  # text tokens
        shares.append(changed.mean())
    assert 0.15 < np.mean(shares) < 0.25  # a fifth of them
    batch = pipeline.to_batch([{**noisy, 'task': 't'}], pipeline.BatchSpec(1, 32, 600, 300), ['t'])
    np.testing.assert_array_equal(batch['prev_output_tokens'][0, : len(target_ids) + 1], [V.BOS, *decoder_input])
    np.testing.assert_array_equal(batch['target_tokens'][0, : len(target_ids) + 1], [*target_ids, V.EOS])
    with pytest.raises(ValueError, match='noise_ratio is an option of summarization only'):
        mixtures.finetune_preprocessors('caption', VOCAB, resize_transform(32), noise_ratio=0.2)


class OfaTrie:
    """OFA's utils/trie.py: insert(key), get_next_layer(prefix)."""

    def __init__(self):
        self.root = {}

    def insert(self, key):
        node = self.root
        for token in key:
            node = node.setdefault(token, {})

    def get_next_layer(self, prefix):
        node = self.root
        for token in prefix:
            node = node[token]
        return list(node)


def ofa_pre_text(text, max_words, person=False):
    # data/ofa_dataset.py:50-66 (pre_question) and :68-84 (pre_caption, which also maps <person>).
    text = text.lower().lstrip(',.!?*#:;~').replace('-', ' ').replace('/', ' ')
    if person:
        text = text.replace('<person>', 'person')
    text = re.sub(r'\s{2,}', ' ', text).rstrip('\n').strip(' ')
    words = text.split(' ')
    return ' '.join(words[:max_words]) if len(words) > max_words else text


def ofa_answer_trie(answers):
    # tasks/mm_tasks/vqa_gen.py:97-102 and snli_ve.py:76-80: bos, the answer's BPE of ' ' + answer, eos.
    trie = OfaTrie()
    for answer in answers:
        trie.insert([V.BOS, *VOCAB.encode(' ' + answer), V.EOS])
    return trie


def ofa_prompted(src_item, tgt_item, trie, prompt_type):
    # data/mm_data/vqa_gen_dataset.py:173-208, snli_ve_dataset.py:159-193 (the same lines in both).
    src_item = [V.BOS, *src_item, V.EOS]
    if prompt_type == 'none':
        prev_output_item = [V.BOS, *tgt_item]
    elif prompt_type == 'src':
        prev_output_item = [*src_item, *tgt_item]
    else:
        prev_output_item = [*src_item[:-1], *tgt_item]
    target_item = [*prev_output_item[1:], V.EOS]
    target_item[: -len(tgt_item) - 1] = [V.PAD] * (len(target_item) - len(tgt_item) - 1)
    constraint_mask = np.zeros((len(target_item), VOCAB.size), bool)
    start_idx = len(target_item) - len(tgt_item) - 1
    for i in range(len(target_item) - len(tgt_item) - 1, len(target_item)):
        constraint_prefix_token = [V.BOS, *target_item[start_idx:i]]
        constraint_mask[i][trie.get_next_layer(constraint_prefix_token)] = True
    return src_item, prev_output_item, target_item, constraint_mask


def ofa_vqa(question, ref, predict_objects, trie, prompt_type, add_object=True, max_src_length=80):
    # data/mm_data/vqa_gen_dataset.py:150-171 (max_object_length 30).
    question = ofa_pre_text(question, max_src_length)
    question = question + '?' if not question.endswith('?') else question
    src_item = VOCAB.encode(f' {question}')
    ref_dict = {item.split('|!+')[1]: float(item.split('|!+')[0]) for item in ref.split('&&')}
    answer = max(ref_dict, key=ref_dict.get)
    tgt_item = VOCAB.encode(f' {answer}')
    if add_object and predict_objects is not None:
        predict_object_seq = ' '.join(predict_objects.strip().split('&&')[:30])
        src_item = src_item + VOCAB.encode(f' object: {predict_object_seq}')
    return (*ofa_prompted(src_item, tgt_item, trie, prompt_type), ref_dict[answer])


def ofa_snli_ve(hypothesis, caption, label, trie, prompt_type, add_caption=True, max_src_length=80):
    # data/mm_data/snli_ve_dataset.py:138-157.
    label = {'entailment': 'yes', 'contradiction': 'no', 'neutral': 'maybe'}[label]
    hypothesis = ofa_pre_text(hypothesis, max_src_length, person=True)
    src_item = VOCAB.encode(f' does the image describe " {hypothesis} "?')
    tgt_item = VOCAB.encode(f' {label}')
    if add_caption:
        caption = ofa_pre_text(caption, max_src_length, person=True)
        src_item = VOCAB.encode(f' can image and text1 " {caption} " imply text2 " {hypothesis} "?')
    return (*ofa_prompted(src_item, tgt_item, trie, prompt_type), 1.0)


@pytest.mark.parametrize(
    'kind, settings',
    [  # fairseq's generator: --max-len-b tokens before eos (ofa-jax's max_length counts eos), --min-len 1
        ('caption', dict(beam_size=5, min_length=1, max_length=17, no_repeat_ngram_size=3)),  # evaluate_caption.sh
        ('vqa', dict(beam_size=5, min_length=1, length_penalty=0.0)),  # evaluate_vqa_beam.sh: --unnormalized
        ('grounding', dict(beam_size=5, min_length=4, max_length=5, no_repeat_ngram_size=3)),  # evaluate_refcoco.sh
        # gigaword/train_gigaword.sh --eval-args: beam 6, lenpen 0.7, max_len_b 32, no_repeat_ngram_size 3
        ('summarization', dict(beam_size=6, min_length=1, max_length=33, length_penalty=0.7, no_repeat_ngram_size=3)),
    ],
)
def test_the_declared_decoding_is_ofas_evaluation_scripts(kind, settings):
    assert {key: TASKS[kind].decode[key] for key in settings} == settings


def test_mnli_reads_the_label_ids_of_ofas_files():
    # data/nlu_data/mnli_dataset.py: '0' maybe, '1' yes, '2' no; GLUE's own names map alike.
    for label, answer in (('0', 'maybe'), ('1', 'yes'), ('2', 'no'), ('entailment', 'yes'), ('neutral', 'maybe')):
        example = preprocess('mnli', {'premise': 'a man sleeps', 'hypothesis': 'someone rests', 'label': label})
        assert example['target_ids'] == VOCAB.encode(' ' + answer)


def test_long_questions_and_expressions_keep_ofas_words():
    # OFA cuts them at max_src_length words: 80 in the VQA, RefCOCO and SNLI-VE scripts
    # (vqa/train_vqa_base_distributed.sh: max_src_length=80).
    words = ' '.join(f'w{i}' for i in range(150))
    vqa = preprocess('vqa', {'image': IMAGE, 'question': words, 'answers': {'yes': 1.0}})
    assert vqa['source_ids'] == VOCAB.encode(' ' + ofa_pre_text(words, 80) + '?')
    grounding = preprocess('grounding', {'image': IMAGE, 'text': words, 'region': [1, 2, 10, 12]})
    assert grounding['source_ids'] == VOCAB.encode(
        f' which region does the text " {ofa_pre_text(words, 80)} " describe?'
    )
    snli_ve = preprocess('snli_ve', {'image': IMAGE, 'hypothesis': words, 'label': 'entailment'})
    assert snli_ve['source_ids'] == VOCAB.encode(f' does the image describe " {ofa_pre_text(words, 80)} "?')


def image_base64() -> str:
    buffer = io.BytesIO()
    Image.fromarray(IMAGE).save(buffer, format='PNG')
    return base64.urlsafe_b64encode(buffer.getvalue()).decode()


VQA_ANSWERS = ['two', 'two people', 'tennis', 'tennis racket', 'yes', 'no', 'red and white']
VQA_ROWS = [  # question, answers 'confidence|!+answer&&...', VinVL objects '&&'-joined
    ('What color is the  T-shirt?', '0.6|!+red and white&&1.0|!+yes&&0.3|!+no', 'shirt&&man&&sky'),
    ('how many people are there', '1.0|!+two people&&0.3|!+two', ''),
    ('...What/which sport is it?', '0.9|!+tennis&&0.6|!+tennis racket', '&&'.join(f'object{i}' for i in range(40))),
]
SNLI_ROWS = [  # hypothesis, premise (caption), label
    ('Two people play tennis.', 'A man and a woman hit a ball with rackets.', 'entailment'),
    ('Nobody is outside', 'A <person> walks a dog in the park.', 'contradiction'),
    ('The dog is old', 'A-dog/sleeps on a sofa', 'neutral'),
]


def tsv_line(kind: str, uniq_id: int, row: tuple) -> str:
    """One row of OFA's TSV file of `kind` (sources.TSV_LAYOUTS), with IMAGE as its image."""
    image = image_base64()
    columns = {
        'caption': lambda caption: [caption, '', image],
        'vqa': lambda question, answers, objects: [question, answers, objects, image],
        'grounding': lambda text, region: [text, region, image],
        'snli_ve': lambda hypothesis, premise, label: [image, hypothesis, premise, label],
    }[kind](*row)
    return '\t'.join([str(uniq_id), str(uniq_id), *columns])


def batch_of(kind: str, rows: list, tmp_path, **entry) -> tuple[dict, list]:
    """The batch ofa-jax builds from OFA TSV rows of `kind` with configs/finetune.py's options for it."""
    config = load_config('finetune', f'{kind},tiny')
    (tmp_path / f'{kind}.tsv').write_text(''.join(tsv_line(kind, i, row) + '\n' for i, row in enumerate(rows)))
    config.data.tasks[kind].update(path=str(tmp_path / f'{kind}.tsv'), **entry)
    config.data.image_size = 32
    tasks, rates = mixtures.register_from_config(config.data)
    spec = train.batch_spec(config, len(rows))
    (batch,) = pipeline.batches(tasks, rates, spec, seed=0, repeat=False)
    assert batch['dropped'] == {}
    return batch, config


def assert_rows_are_ofas(batch, expected):
    """Each batch row (in the source's order) against OFA's (source, prev_output_tokens, target, constraint_mask or
    None where the loss is over the whole vocabulary, confidence)."""
    allowed = None
    if 'allowed_tokens' in batch:
        allowed = np.unpackbits(batch['allowed_tokens'], axis=-1, count=VOCAB.size).astype(bool)
    for row, (src_item, prev_output_item, target_item, constraint_mask, conf) in enumerate(expected):
        np.testing.assert_array_equal(batch['src_tokens'][row, : len(src_item)], src_item)
        assert np.all(batch['src_tokens'][row, len(src_item) :] == V.PAD)
        np.testing.assert_array_equal(batch['prev_output_tokens'][row, : len(prev_output_item)], prev_output_item)
        np.testing.assert_array_equal(batch['target_tokens'][row, : len(target_item)], target_item)
        assert np.all(batch['target_tokens'][row, len(target_item) :] == V.PAD)
        assert batch['loss_weights'][row] == pytest.approx(conf)
        if constraint_mask is None:
            assert allowed is None or allowed[row].all()
            continue
        scored = np.array(target_item) != V.PAD  # OFA's loss keeps these positions' masks only
        np.testing.assert_array_equal(allowed[row, : len(target_item)][scored], constraint_mask[scored])


@pytest.mark.parametrize('prompt_type', ['prev_output', 'src', 'none'])
def test_vqa_examples_are_ofas(prompt_type, tmp_path):
    (tmp_path / 'ans2label.json').write_text(json.dumps({a: i for i, a in enumerate(VQA_ANSWERS)}))
    batch, config = batch_of(
        'vqa', VQA_ROWS, tmp_path, answers=str(tmp_path / 'ans2label.json'), prompt_type=prompt_type
    )
    assert config.data.tasks.vqa.add_object  # OFA's VQA scripts: --add-object --prompt-type=prev_output
    trie = ofa_answer_trie(VQA_ANSWERS)
    # A row with an empty objects column: OFA appends ' object: ' and nothing; ofa-jax adds nothing (a deviation:
    # the JSON lines of prepare_data have no objects at all).
    expected = [ofa_vqa(q, ref, objects or None, trie, prompt_type) for q, ref, objects in VQA_ROWS]
    assert_rows_are_ofas(batch, expected)


@pytest.mark.parametrize('prompt_type', ['prev_output', 'none'])
def test_snli_ve_examples_are_ofas(prompt_type, tmp_path):
    batch, config = batch_of('snli_ve', SNLI_ROWS, tmp_path, prompt_type=prompt_type)
    assert config.data.tasks.snli_ve.add_caption  # OFA's SNLI-VE scripts: --add-caption --prompt-type=prev_output
    trie = ofa_answer_trie(['no', 'yes', 'maybe'])
    assert_rows_are_ofas(batch, [ofa_snli_ve(h, p, label, trie, prompt_type) for h, p, label in SNLI_ROWS])


def test_the_trie_constrained_loss_is_ofas_criterion():
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(1)
    batch, length, width, eps = 3, 6, 45, 0.1
    logits = rng.normal(size=(batch, length, width)).astype(np.float32) * 3
    masks = rng.random((batch, length, width)) < 0.3
    masks[0, 0] = False
    masks[0, 0, 7] = True  # a position with one allowed token: its loss is 0 on both sides
    targets = np.array([[rng.choice(np.flatnonzero(m)) for m in row] for row in masks])
    targets[:, -1] = V.PAD
    loss, _ = train.token_losses(
        jnp.asarray(logits),
        jnp.asarray(targets),
        jnp.tile(jnp.asarray(UNCONSTRAINED), (batch, 1)),
        eps,
        jnp.asarray(np.packbits(masks, axis=-1)),
    )
    tokens = targets != V.PAD
    ours = float(jnp.where(tokens, loss, 0.0).sum() / tokens.sum())

    # ofa_trainer_utils.py get_lprobs_and_target: logits outside the masks at -inf, log-softmax; then
    # label_smoothed_nll_loss with constraint_masks on the non-pad positions.
    masked = torch.tensor(logits).masked_fill(~torch.tensor(masks), -float('inf'))
    lprobs = torch.log_softmax(masked, dim=-1).view(-1, width)
    keep = torch.tensor(tokens).view(-1)
    want, _, _ = modelscope_criterion().label_smoothed_nll_loss(
        lprobs[keep],
        torch.tensor(targets).view(-1)[keep],
        eps,
        1,
        constraint_masks=torch.tensor(masks).view(-1, width)[keep],
    )
    assert ours == pytest.approx(float(want), rel=1e-5)


# The same records through modelscope's own OFA finetuning preprocessors (modelscope/preprocessors/ofa/*.py), run live.
# modelscope takes a record's fields already chosen (VQA's one answer, SNLI-VE's yes / no / maybe) where OFA's datasets
# read them from the TSV row, and has no VQA confidence weight or object words: the rows below have none to differ on.


@pytest.fixture(scope='module')
def modelscope_dir(tmp_path_factory):
    """The tokenizer files modelscope's preprocessors read, and the answer lists of VQA and SNLI-VE as JSON."""
    pytest.importorskip('modelscope')
    import reference

    directory = tmp_path_factory.mktemp('modelscope_ofa')
    reference.write_tokenizer_files(directory, pathlib.Path(V.OFA_BPE_DIR))
    (directory / 'vqa_ans2label.json').write_text(json.dumps({a: i for i, a in enumerate(VQA_ANSWERS)}))
    (directory / 'snli_ve_ans2label.json').write_text(json.dumps({'no': 0, 'yes': 1, 'maybe': 2}))
    return directory


def modelscope_preprocessor(directory, module: str, task: str, column_map: dict, **model):
    import reference

    cls = {
        'image_captioning': 'OfaImageCaptioningPreprocessor',
        'visual_question_answering': 'OfaVisualQuestionAnsweringPreprocessor',
        'visual_grounding': 'OfaVisualGroundingPreprocessor',
        'visual_entailment': 'OfaVisualEntailmentPreprocessor',
        'text_classification': 'OfaTextClassificationPreprocessor',
        'summarization': 'OfaSummarizationPreprocessor',
    }[module]
    return reference.ofa_preprocessor(module, cls, task, model, column_map, directory)


def answer_list_preprocessor(directory, module: str, task: str, column: str, answers: str, prompt_type: str):
    """modelscope's preprocessor of a task answered from a list (VQA, SNLI-VE; `answers`_ans2label.json in
    `directory`), with OFA's 80-word sources; `column` holds the answer."""
    return modelscope_preprocessor(
        directory,
        module,
        task,
        {column: column},
        prompt_type=prompt_type,
        answer2label=str(directory / f'{answers}_ans2label.json'),
        max_src_length=80,
    )


def modelscope_row(sample: dict) -> tuple:
    """A modelscope sample as assert_rows_are_ofas's (source, prev_output_tokens, target, constraint mask, weight)."""
    mask = sample['constraint_mask'].numpy() if 'constraint_mask' in sample else None
    return sample['source'].tolist(), sample['prev_output_tokens'].tolist(), sample['target'].tolist(), mask, 1.0


MODELSCOPE_VQA_ROWS = [  # the best answer's confidence is 1.0 and there are no object words
    ('What color is the  T-shirt', '0.6|!+red and white&&1.0|!+yes&&0.3|!+no', ''),
    ('how many people are there?', '1.0|!+two people&&0.3|!+two', ''),
    ('...What/which sport is it?', '1.0|!+tennis&&0.6|!+tennis racket', ''),
]


@pytest.mark.parity
@pytest.mark.parametrize('prompt_type', ['prev_output', 'src', 'none'])
def test_vqa_examples_are_modelscopes(prompt_type, tmp_path, modelscope_dir):
    from modelscope.utils.constant import Tasks

    preprocessor = answer_list_preprocessor(
        modelscope_dir, 'visual_question_answering', Tasks.visual_question_answering, 'answer', 'vqa', prompt_type
    )
    expected = []
    for question, answers, _ in MODELSCOPE_VQA_ROWS:
        (answer,) = [a.split('|!+')[1] for a in answers.split('&&') if a.startswith('1.0|!+')]
        expected.append(
            modelscope_row(preprocessor({'image': Image.fromarray(IMAGE), 'text': question, 'answer': answer}))
        )
    batch, _ = batch_of(
        'vqa',
        MODELSCOPE_VQA_ROWS,
        tmp_path,
        answers=str(modelscope_dir / 'vqa_ans2label.json'),
        prompt_type=prompt_type,
    )
    assert_rows_are_ofas(batch, expected)


@pytest.mark.parity
@pytest.mark.parametrize('prompt_type', ['prev_output', 'none'])
def test_snli_ve_examples_are_modelscopes(prompt_type, tmp_path, modelscope_dir):
    from modelscope.utils.constant import Tasks

    preprocessor = answer_list_preprocessor(
        modelscope_dir, 'visual_entailment', Tasks.visual_entailment, 'relation', 'snli_ve', prompt_type
    )
    relation = {'entailment': 'yes', 'contradiction': 'no', 'neutral': 'maybe'}  # snli_ve_dataset.py:138-141
    expected = [
        modelscope_row(
            preprocessor(
                {'image': Image.fromarray(IMAGE), 'text': hypothesis, 'text2': premise, 'relation': relation[label]}
            )
        )
        for hypothesis, premise, label in SNLI_ROWS
    ]
    batch, _ = batch_of('snli_ve', SNLI_ROWS, tmp_path, prompt_type=prompt_type)
    assert_rows_are_ofas(batch, expected)


GROUNDING_ROWS = [  # referring expression, region 'x0,y0,x1,y1' in IMAGE's pixels (32 wide, 24 high)
    ('The man on the LEFT, in a red-shirt', '0.0,0.0,12.5,23.9'),
    ('  zebra/horse   at the back ', '3.2,4.7,31.0,18.25'),
    ('<person> holding a cup', '10,2,20,22'),
]


@pytest.mark.parity
def test_grounding_examples_are_modelscopes(tmp_path, modelscope_dir):
    from modelscope.utils.constant import Tasks

    # OFA's RefCOCO scripts resize to 512 and quantize boxes relative to max_image_size 512; here the image is resized
    # to 32 (batch_of), the quantization still relative to 512 on both sides.
    preprocessor = modelscope_preprocessor(
        modelscope_dir,
        'visual_grounding',
        Tasks.visual_grounding,
        {'region_coord': 'region_coord'},
        patch_image_size=32,
        max_image_size=512,
        max_src_length=80,
    )
    expected = []
    for text, region in GROUNDING_ROWS:
        source, prev_output, target, mask, weight = modelscope_row(
            preprocessor({'image': Image.fromarray(IMAGE), 'text': text, 'region_coord': region})
        )
        # modelscope encodes '<bin_x0> <bin_y0> <bin_x1> <bin_y1>' with BPE, which keeps a space token between the
        # bins; OFA's data/mm_data/refcoco_dataset.py (__getitem__) encodes it with use_bpe=False, the four bins
        # alone, as ofa-jax does.
        space = VOCAB.encode(' ')
        assert target[1:-1:2] == space * 3
        expected.append((source, [V.BOS, *target[:-1:2]], [*target[:-1:2], V.EOS], mask, weight))
    batch, _ = batch_of('grounding', GROUNDING_ROWS, tmp_path)
    assert_rows_are_ofas(batch, expected)


@pytest.mark.parity
@pytest.mark.parametrize('kind', ['mnli', 'rte'])
def test_text_pairs_are_modelscopes(kind, modelscope_dir):
    from modelscope.utils.constant import Tasks

    # modelscope's text classification preprocessor: OFA's MNLI / RTE instruction of the lowercased sentences
    # (mnli_dataset.py), trained on the label and eos without a prompt as ofa-jax trains it (OFA's own datasets take
    # the label token alone after the src prompt, a difference the README lists).
    preprocessor = modelscope_preprocessor(
        modelscope_dir,
        'text_classification',
        Tasks.text_classification,
        {},
        answer2label=str(modelscope_dir / 'snli_ve_ans2label.json'),  # its labels are ids: no 0, yes 1, maybe 2
        max_src_length=512,
    )
    pairs = [
        ('A man-in-black SLEEPS on a  bench...', '...someone/anyone  Rests', 'entailment'),
        ("The city's streets flooded.", 'It rained, a lot!', 'not_entailment' if kind == 'rte' else 'neutral'),
    ]
    for premise, hypothesis, label in pairs:
        answer = {'entailment': 1, 'not_entailment': 0, 'neutral': 2}[label]
        sample = preprocessor({'text': premise, 'text2': hypothesis, 'label': answer})
        example = preprocess(kind, {'premise': premise, 'hypothesis': hypothesis, 'label': label})
        assert example['source_ids'] == sample['source'].tolist()[1:-1]
        assert [V.BOS, *example['target_ids']] == sample['prev_output_tokens'].tolist()
        assert [*example['target_ids'], V.EOS] == sample['target'].tolist()


@pytest.mark.parity
def test_gigaword_examples_are_modelscopes_with_ofas_prompt_and_leading_space(modelscope_dir):
    from modelscope.utils.constant import Tasks

    # modelscope's summarization preprocessor with OFA's Gigaword prompt (summary_dataset.py; modelscope's default
    # prompt is its own) and no noise; its target lacks the leading space OFA's has, as its caption target does.
    preprocessor = modelscope_preprocessor(
        modelscope_dir,
        'summarization',
        Tasks.text_summarization,
        {'summary': 'summary'},
        prompt=' what is the summary of article " {} "?',
        max_src_length=512,
        max_tgt_length=64,
    )
    articles = [
        ('Police-in <unk> said on Monday that the  suspect, 42, was  ARRESTED.', 'police <unk> arrest suspect'),
        ('...The council approved the new budget / plan on Monday.', 'Council APPROVES budget'),
    ]
    for article, headline in articles:
        sample = preprocessor({'text': article, 'summary': headline})
        example = preprocess('summarization', {'text': article, 'target': headline})
        assert example['source_ids'] == sample['source'].tolist()[1:-1]
        text = preprocessor.tokenizer.decode(sample['target'][:-1])
        assert example['target_ids'] == VOCAB.encode(' ' + text)


@pytest.mark.parity
def test_caption_examples_are_modelscopes_with_ofas_leading_space(tmp_path, modelscope_dir):
    from modelscope.utils.constant import Tasks

    preprocessor = modelscope_preprocessor(
        modelscope_dir, 'image_captioning', Tasks.image_captioning, {'text': 'text'}, max_tgt_length=20
    )
    captions = [
        "A man's T-shirt, on the beach.",
        '  Two dogs   playing (outside) in the snow!  ',
        'A very long caption that goes on and on with many words about a kitchen, a stove, a sink, a fridge and a cat.',
    ]
    expected = []
    for caption in captions:
        source, _, target, _, weight = modelscope_row(preprocessor({'image': Image.fromarray(IMAGE), 'text': caption}))
        # modelscope encodes the caption target without the leading space OFA's caption_dataset.py:138 gives it
        # (' {}'.format(tgt_caption)); ofa-jax follows OFA: modelscope's own tokenizer on the text with that space.
        text = preprocessor.tokenizer.decode(target[:-1])
        target = preprocessor.tokenize_text(' ' + text, add_bos=False).tolist()
        expected.append((source, [V.BOS, *target[:-1]], target, None, weight))
    batch, _ = batch_of('caption', [(c,) for c in captions], tmp_path)
    assert_rows_are_ofas(batch, expected)
