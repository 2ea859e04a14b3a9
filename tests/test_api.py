"""The Python API: checkpoint kinds, image reading, boxes back in original pixels, detection parsing, candidate
scoring, per-item errors, and the evaluation over a tiny split of the synthetic world (nano model)."""

import json

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from ofa_jax import api, evaluate, predict, train, vqgan
from ofa_jax.checkpoint import load_checkpoint, model_from_config, save_model
from ofa_jax.data import tasks as task_declarations
from ofa_jax.data import vocab as V
from ofa_jax.data.image_codes import PatchCodebook
from ofa_jax.model import model_config

# One test process builds this module's fixtures once (tests/run.sh distributes by group).
pytestmark = pytest.mark.xdist_group('api')

IMAGE_SIZE = 32


def small_config(**changes):
    # One layer each side: every compiled program is smaller, and nothing here depends on depth.
    return conftest.small_config(
        **{'total_steps': 2, 'ema_decay': 0.5, **changes},
        model_overrides=dict(encoder_layers=1, decoder_layers=1),
        data=dict(world_size=64),
    )


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A workdir as the trainer checkpoints it (orbax items state and config; no steps run, to keep the test fast),
    whose EMA parameters differ from its parameters. Every call below answers two items, so they share compiled
    programs."""
    path = tmp_path_factory.mktemp('train')
    config = small_config()
    model = model_from_config(config)
    state = train.initial_state(model, train.make_optimizer(config), config, IMAGE_SIZE)
    state = state.replace(
        step=jnp.array(2, jnp.int32),
        ema_params=jax.tree_util.tree_map(lambda p: p * 0.5, state.params),
        ema_batch_stats=jax.tree_util.tree_map(lambda s: s + 0.25, state.batch_stats),
    )
    manager = ocp.CheckpointManager(str(path / 'checkpoints'), item_names=('state', 'config'))
    manager.save(
        2, args=ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict()))
    )
    manager.wait_until_finished()
    return path, state


@pytest.fixture(scope='module')
def predictor(workdir):
    return api.Predictor.load(workdir[0], batch_size=4)


def rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def test_read_image_takes_paths_bytes_pil_and_arrays(tmp_path):
    image = rgb(20, 30)
    path = tmp_path / 'image.png'
    Image.fromarray(image).save(path)
    for given in (str(path), path, path.read_bytes(), Image.fromarray(image), image):
        np.testing.assert_array_equal(api.read_image(given), image)
    gray = api.read_image(image[..., 0])
    assert gray.shape == (20, 30, 3) and np.array_equal(gray[..., 2], image[..., 0])


def test_read_image_errors_say_what_was_wrong(tmp_path):
    (tmp_path / 'broken.jpg').write_bytes(b'not an image')
    with pytest.raises(ValueError, match='cannot be read'):
        api.read_image(str(tmp_path / 'missing.jpg'))
    with pytest.raises(ValueError, match='not a readable image file'):
        api.read_image(str(tmp_path / 'broken.jpg'))
    with pytest.raises(ValueError, match='uint8'):
        api.read_image(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match='path, bytes, a PIL image'):
        api.read_image(3)


def test_batches_pad_to_power_of_two_buckets():
    assert [api._bucket(n, 16, 1) for n in (1, 2, 3, 5, 9, 16)] == [1, 2, 4, 8, 16, 16]
    assert [api._bucket(n, 6, 4) for n in (1, 3, 5)] == [4, 4, 8]


def test_loads_a_model_directory(workdir, tmp_path):
    config = model_config('nano', **small_config().model_overrides)
    variables = {'params': workdir[1].params, 'batch_stats': workdir[1].batch_stats}
    save_model(tmp_path / 'model', config, variables)
    checkpoint = load_checkpoint(tmp_path / 'model')
    assert checkpoint.config == config and checkpoint.train_config is None
    jax.tree_util.tree_map(np.testing.assert_array_equal, checkpoint.variables, variables)
    with pytest.raises(ValueError, match='neither a model directory'):
        load_checkpoint(tmp_path)


def test_loads_a_training_workdir_with_its_ema(workdir):
    path, state = workdir
    checkpoint = load_checkpoint(path)
    assert checkpoint.step == 2 and checkpoint.train_config.data.image_size == IMAGE_SIZE
    assert checkpoint.train_config.data.max_source_length == 24
    jax.tree_util.tree_map(np.testing.assert_array_equal, checkpoint.variables['params'], state.ema_params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, checkpoint.variables['batch_stats'], state.ema_batch_stats)
    assert not np.array_equal(
        checkpoint.variables['params']['embed_tokens']['embedding'], state.params['embed_tokens']['embedding']
    )


def test_loads_a_workdir_written_before_the_token_table_was_padded(workdir, tmp_path):
    _, state = workdir
    config = small_config()
    vocab_size = model_from_config(config).config.vocab_size

    def unpadded(params):
        return {**params, 'embed_tokens': {'embedding': params['embed_tokens']['embedding'][:vocab_size]}}

    assert state.params['embed_tokens']['embedding'].shape[0] > vocab_size
    manager = ocp.CheckpointManager(str(tmp_path / 'checkpoints'), item_names=('state', 'config'))
    old = state.replace(params=unpadded(state.params), ema_params=unpadded(state.ema_params))
    manager.save(
        2, args=ocp.args.Composite(state=ocp.args.StandardSave(old), config=ocp.args.JsonSave(config.to_dict()))
    )
    manager.wait_until_finished()
    checkpoint = load_checkpoint(tmp_path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, checkpoint.variables['params'], state.ema_params)


def test_loads_the_step_asked_for(workdir, tmp_path):
    _, state = workdir
    config = small_config()
    manager = ocp.CheckpointManager(str(tmp_path / 'checkpoints'), item_names=('state', 'config'))
    for step in (1, 2):
        scaled = state.replace(
            step=jnp.array(step, jnp.int32), ema_params=jax.tree_util.tree_map(lambda p: p * step, state.params)
        )
        manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(scaled), config=ocp.args.JsonSave(config.to_dict())),
        )
    manager.wait_until_finished()
    first, latest = load_checkpoint(tmp_path, step=1), load_checkpoint(tmp_path)
    assert (first.step, latest.step) == (1, 2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, first.variables['params'], state.params)
    with pytest.raises(ValueError, match=r'has no step 3; its saved steps are \[1, 2\]'):
        load_checkpoint(tmp_path, step=3)


def test_a_checkpoint_that_does_not_fit_its_config_says_so(workdir, tmp_path):
    _, state = workdir  # trained with the world's vocabulary
    config = small_config()
    config.data.vocab = 'ofa'  # as a workdir of a vocabulary that has since changed size reads
    manager = ocp.CheckpointManager(str(tmp_path / 'checkpoints'), item_names=('state', 'config'))
    manager.save(
        2, args=ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict()))
    )
    manager.wait_until_finished()
    manager.close()
    with pytest.raises(
        ValueError, match=r"step 2 does not fit the model its config describes \(nano, vocabulary 'ofa' of 59457 ids\)"
    ):
        load_checkpoint(tmp_path)


def test_grounding_maps_boxes_back_through_the_resize(predictor):
    images = [rgb(48, 80), rgb(32, 32, 1)]  # the first is resized to 32 x 32: x shrinks by 2.5, y by 1.5
    results = predictor.grounding(images, ['the red circle', 'the blue square'])
    inputs = [
        api.ModelInput(
            predictor.vocab.encode(task_declarations.GROUNDING.format(text)),
            predictor.prepare_image(image, 'grounding')[0],
        )
        for image, text in zip(images, ['the red circle', 'the blue square'])
    ]
    in_model_pixels = predictor.answer('grounding', inputs)  # scale 1: boxes in the model's 32-pixel image
    np.testing.assert_allclose(results[0]['box'], np.array(in_model_pixels[0]['box']) * [2.5, 1.5, 2.5, 1.5])
    np.testing.assert_allclose(results[1]['box'], in_model_pixels[1]['box'])
    assert results[0]['score'] == pytest.approx(in_model_pixels[0]['score'])
    # Four bins of OFA's 512-pixel grid: multiples of 512 / 999 in the model's pixels.
    bins = np.array([r['box'] for r in in_model_pixels]) / 512 * 999
    np.testing.assert_allclose(bins, np.round(bins), atol=1e-6)


def test_all_candidates_picks_the_most_probable_answer_over_their_trie(predictor):
    images, questions = [rgb(32, 32, 1), rgb(32, 32, 2)], ['what shape is red', 'how many shapes']
    answers = ['circle', 'two', 'yes']  # one token each, as snli_ve's and itm's: one compiled scoring program
    results = predictor.vqa(images, questions, answers)
    # Every answer's log-probability, teacher-forced, from the model's logits in one batch of 2 x 3 rows, each
    # position's renormalized over the answers' trie as OFA's allcand does (utils/eval_utils.py: the logits outside
    # the trie at -inf before the log-softmax): the first token over the answers' first tokens, then eos alone.
    vocab = predictor.vocab
    sources = [[V.BOS, *vocab.encode_spaced(f'{q}?'), V.EOS] for q in questions]
    targets = [vocab.encode_spaced(a) + [V.EOS] for a in answers]
    length = max(map(len, targets))
    source = np.full((6, max(map(len, sources))), V.PAD, np.int32)
    previous, target = np.full((6, length), V.PAD, np.int32), np.full((6, length), V.PAD, np.int32)
    for row in range(6):
        q, a = sources[row // 3], targets[row % 3]
        source[row, : len(q)], target[row, : len(a)], previous[row, : len(a)] = q, a, [V.BOS, *a[:-1]]
    pixels = np.repeat(np.stack([predictor.prepare_image(i, 'vqa')[0] for i in images]), 3, axis=0)
    logits = np.array(jax.jit(predictor.model.apply)(predictor.variables, source, pixels, np.ones(6, bool), previous))
    assert length == 2
    allowed = np.zeros((length, logits.shape[-1]), bool)
    allowed[0, [t[0] for t in targets]] = True
    allowed[1, V.EOS] = True
    logits = np.where(allowed, logits, -np.inf)
    logprobs = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), target[..., None], axis=-1)[..., 0]
    totals = np.where(target != V.PAD, logprobs, 0.0).sum(axis=1).reshape(2, 3)
    assert np.all(totals.max(axis=1) >= np.log(1 / 3) - 1e-6)  # three first tokens share the mass, not 59,457
    assert [r['answer'] for r in results] == [answers[i] for i in totals.argmax(axis=1)]
    np.testing.assert_allclose([r['score'] for r in results], totals.max(axis=1), atol=1e-3)


def test_bad_items_get_errors_and_trie_answers_stay_among_the_candidates(predictor, tmp_path):
    good, answers = rgb(40, 40), ['circle', 'blue square', 'two']
    results = predictor.vqa(
        [good, str(tmp_path / 'missing.png'), good, np.zeros((4, 4), np.float32), good],
        ['what is red', 'what is red', '   ', 'what is red', 'how many'],
        answers,
        mode='trie',
    )
    assert [sorted(r) for r in results] == [['answer', 'score'], ['error'], ['error'], ['error'], ['answer', 'score']]
    assert results[0]['answer'] in answers and results[4]['answer'] in answers
    assert 'missing.png' in results[1]['error'] and 'cannot be read' in results[1]['error']
    assert results[2] == {'error': 'question is empty'}
    assert 'uint8' in results[3]['error']
    assert predictor.summarization(['  ']) == [{'error': 'text is empty'}]
    with pytest.raises(ValueError, match='one entry per item'):
        predictor.vqa([good], ['a', 'b'])
    with pytest.raises(ValueError, match='labels must be a non-empty list'):
        predictor.classification([good], [])


def test_closed_answer_tasks_and_text_infill_answer_from_their_choices(predictor):
    images = [rgb(32, 32, 4), rgb(32, 32, 5)]
    entail = predictor.snli_ve(images, ['there is a red circle', 'a dog'], ['a scene', 'a scene'])
    assert all(r['answer'] in task_declarations.TASKS['snli_ve'].candidates for r in entail)
    assert all(r['answer'] in ('yes', 'no') for r in predictor.itm(images, ['a red circle', 'a dog']))
    labels = ['circle', 'square', 'star']
    assert all(r['label'] in labels for r in predictor.classification(images, labels))
    pairs = predictor.run('mnli', premise=['a man sleeps', ''], hypothesis=['a person rests', 'a cat'])
    assert pairs[0]['answer'] in ('yes', 'no', 'maybe') and pairs[1] == {'error': 'premise is empty'}
    infilled = predictor.text_infill(['a red <mask> left of a <mask>', '', 'the <mask> is blue'], max_length=6)
    assert infilled[1] == {'error': 'text is empty'}
    assert all(isinstance(r['text'], str) and r['score'] <= 0 for r in (infilled[0], infilled[2]))


def test_prompt_types_put_the_instruction_before_the_answer(predictor, workdir):
    images, hypotheses = [rgb(32, 32, 4), rgb(32, 32, 5)], ['there is a red circle', 'a dog']
    prompted = api.Predictor.load(workdir[0], batch_size=4, prompt_type='prev_output').snli_ve(images, hypotheses)
    plain = predictor.snli_ve(images, hypotheses)
    assert all(r['answer'] in ('yes', 'no', 'maybe') for r in prompted)
    assert [r['score'] for r in prompted] != pytest.approx([r['score'] for r in plain])
    with pytest.raises(ValueError, match='prompt_type'):
        api.Predictor.load(workdir[0], prompt_type='source')


def test_text_to_image_samples_exactly_the_code_grid_and_draws_it(predictor):
    # The fixture's model has 16-pixel code images: a 2x2 grid of codes, drawn here by a patch codebook.
    codebook = PatchCodebook.fit(np.stack([rgb(16, 16, seed) for seed in range(4)]), num_codes=8)
    results = predictor.text_to_image(['a red circle', '  ', 'two blue squares'], codebook, samples=3, seed=1)
    assert results[1] == {'error': 'text is empty'}
    for result in (results[0], results[2]):
        assert result['images'].shape == (3, 16, 16, 3) and result['images'].dtype == np.uint8
        assert len(result['scores']) == 3 and all(np.isfinite(result['scores']))
        drawn = {codebook.decode(codebook.encode(image[None]))[0].tobytes() for image in result['images']}
        assert drawn == {image.tobytes() for image in result['images']}  # every image is made of codebook patches
    again = predictor.text_to_image(['a red circle'], codebook, samples=3, seed=1)[0]
    np.testing.assert_array_equal(again['images'], results[0]['images'])


@pytest.mark.slow  # every task of the world decodes once: its programs take the longest to compile
def test_evaluate_writes_predictions_and_metrics(predictor, tmp_path):
    config = small_config()
    config.data.world_seed = 1000  # scenes the training never saw
    scores, _ = evaluate.evaluate(config, '', str(tmp_path / 'eval'), max_examples=2, predictor=predictor)
    tasks = ['caption', 'vqa', 'grounding', 'grounded_caption', 'itm', 'detection', 'image_infill', 'text_infill']
    metrics = {
        'caption_cider',
        'caption_bleu4',
        'caption_exact_match',
        'vqa_accuracy',
        'grounding_accuracy',
        'grounded_caption_exact_match',
        'itm_accuracy',
        'detection_f1',
        'image_infill_code_accuracy',
        'text_infill_exact_match',
    }
    assert set(scores) == metrics | {f'{t}_examples' for t in tasks} | {f'{t}_dropped' for t in tasks}
    assert all(scores[f'{t}_examples'] == 2 and scores[f'{t}_dropped'] == 0 for t in tasks)
    assert all(0.0 <= scores[m] <= 10.0 for m in metrics)
    with open(tmp_path / 'eval' / 'metrics.json') as f:
        assert json.load(f) == scores
    with open(tmp_path / 'eval' / 'predictions.jsonl') as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 2 * len(tasks) and {line['task'] for line in lines} == set(tasks)
    grounding = [line for line in lines if line['task'] == 'grounding']
    assert all(len(line['prediction']) == 4 and len(line['reference']) == 4 for line in grounding)
    assert all(isinstance(line['prediction'], str) for line in lines if line['task'] == 'caption')
    infill = [line for line in lines if line['task'] == 'image_infill']
    # The model's code grid (code_image_size 16: 2x2 codes) against the target's codes.
    assert all(len(line['prediction']) == 4 for line in infill)


def test_draw_boxes_outlines_each_box_in_red():
    image = np.zeros((40, 60, 3), np.uint8)
    drawing = np.asarray(predict.draw_boxes(image, [[10, 5, 30, 25]], ['x']))
    assert drawing.shape == image.shape
    red = (drawing[..., 0] > 200) & (drawing[..., 1] < 50)
    assert red[5, 10:31].all() and red[25, 10:31].all() and red[5:26, 10].all() and red[5:26, 30].all()
    assert not red[15, 20] and not red[35, 50]


def test_predict_cli_prints_json_and_draws_the_boxes(workdir, tmp_path, capsys):
    paths = []
    for i, (height, width) in enumerate(((48, 80), (32, 32))):
        paths.append(tmp_path / f'scene{i}.png')
        Image.fromarray(rgb(height, width, i)).save(paths[-1])
    predict.main(
        [
            '--checkpoint',
            str(workdir[0]),
            '--task',
            'grounding',
            '--image',
            str(paths[0]),
            '--image',
            str(paths[1]),
            '--text',
            'the red circle',
            '--text',
            'the blue square',
            '--draw',
            str(tmp_path / 'boxes.png'),
        ]
    )
    results = json.loads(capsys.readouterr().out)
    assert [r['image'] for r in results] == [str(p) for p in paths]
    for i, result in enumerate(results):
        assert len(result['box']) == 4 and result['drawing'] == str(tmp_path / f'boxes_{i}.png')
        expected = predict.draw_boxes(np.asarray(Image.open(paths[i])), [result['box']], [result['text']])
        np.testing.assert_array_equal(np.asarray(Image.open(result['drawing'])), np.asarray(expected))
    with pytest.raises(SystemExit):
        predict.main(['--checkpoint', str(workdir[0]), '--task', 'vqa', '--image', str(paths[0])])
    assert 'one --text per --image' in capsys.readouterr().err


def test_predict_cli_draws_text_to_image_samples(workdir, tmp_path, capsys):
    config = vqgan.VQGANConfig(
        ch=32,
        ch_mult=(1, 1, 1, 1),
        num_res_blocks=1,
        attn_resolutions=(),
        resolution=16,
        z_channels=32,
        embed_dim=32,
        n_embed=16,
    )  # f=8: the model's 2x2 codes -> 16 pixels
    variables = vqgan.VQGAN(config).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    save_model(tmp_path / 'vqgan', config, variables)
    predict.main(
        [
            '--checkpoint',
            str(workdir[0]),
            '--task',
            'text_to_image',
            '--text',
            'a red circle',
            '--vqgan',
            str(tmp_path / 'vqgan'),
            '--samples',
            '2',
            '--draw',
            str(tmp_path / 'drawn.png'),
        ]
    )
    (result,) = json.loads(capsys.readouterr().out)
    assert result['drawings'] == [str(tmp_path / f'drawn_0_{j}.png') for j in range(2)]
    assert all(np.asarray(Image.open(path)).shape == (16, 16, 3) for path in result['drawings'])
    with pytest.raises(SystemExit):
        predict.main(['--checkpoint', str(workdir[0]), '--task', 'text_to_image', '--text', 'a red circle'])
    assert 'needs --vqgan' in capsys.readouterr().err
