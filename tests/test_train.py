"""The trainer: its loss, schedule and layout checks, and whole runs of the nano model on the synthetic world
(meshes agree, a checkpoint resumes on another mesh, accumulation equals the large batch, resume is exact, SIGTERM
saves, the demo learns)."""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import ROOT, SMALL_DEMO_FLAGS, load_config, ofa_pretraining_files, small_config

from ofa_jax import demo, evaluate, train
from ofa_jax.checkpoint import load_checkpoint, model_from_config, save_model
from ofa_jax.data import mixtures, pipeline
from ofa_jax.data import vocab as V
from ofa_jax.data.vocab import vocabulary_from_spec
from ofa_jax.data.world import COLORS, World
from ofa_jax.model import OFA, init_variables, scan_layout
from ofa_jax.sharding import MESH_AXES, make_mesh


def losses(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return {row['step']: row['loss'] for row in map(json.loads, f)}


def test_token_losses_smooth_over_the_allowed_tokens_only():
    probabilities = np.array([0.05, 0.05, 0.1, 0.1, 0.2, 0.5])  # bos, pad, eos, unk, then ids 4 and 5
    logits = jnp.log(jnp.array([[probabilities]]))
    targets = jnp.array([[5]])
    loss, correct = train.token_losses(logits, targets, jnp.array([[0, 6]]), 0.0)
    np.testing.assert_allclose(loss, -np.log([[0.5]]), rtol=1e-6)
    assert bool(correct[0, 0])
    # Only id 5 (range [5, 6)) and the four special ids allowed, as OFA's constraint range: they renormalize.
    allowed = probabilities[[0, 1, 2, 3, 5]]
    loss, _ = train.token_losses(logits, targets, jnp.array([[5, 6]]), 0.0)
    np.testing.assert_allclose(loss, -np.log([[0.5 / allowed.sum()]]), rtol=1e-6)
    smoothed, _ = train.token_losses(logits, targets, jnp.array([[5, 6]]), 0.2)
    lp = np.log(allowed / allowed.sum())
    expected = (1 - 0.2 - 0.05) * -lp[-1] + 0.05 * -(lp.sum())  # eps_i = 0.2 / (5 - 1)
    np.testing.assert_allclose(smoothed, [[expected]], rtol=1e-6)


def test_learning_rate_warms_up_then_decays_linearly():
    config = small_config(learning_rate=1.0, warmup_steps=10, total_steps=110, end_learning_rate=0.0)
    schedule = train.learning_rate_schedule(config)
    assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0) and float(schedule(60)) == pytest.approx(0.5)
    assert float(schedule(110)) == pytest.approx(0.0)


def test_layout_errors_name_the_sizes():
    with pytest.raises(ValueError, match='batch_size 6 must be a multiple of grad_accum_steps 4'):
        train.validate_layout(small_config(batch_size=6, grad_accum_steps=4), make_mesh())
    with pytest.raises(ValueError, match='needs 8 devices'):
        make_mesh(data=8)
    with pytest.raises(
        ValueError, match=r'batch_size 30 must be a multiple of device_batch_size 4 x the 2 batch shards'
    ):
        train.validate_layout(small_config(batch_size=30, device_batch_size=4), abstract_mesh(data=2))


def abstract_mesh(**sizes):
    """A mesh of the given axis sizes without devices (validate_layout reads its shape only)."""
    return jax.sharding.AbstractMesh(tuple(sizes.get(axis, 1) for axis in MESH_AXES), MESH_AXES)


def test_step_flops_count_every_layer_and_micro_batch():
    """XLA counts a loop's body once: a step that accumulates over scanned layers still counts the whole model."""
    plain = small_config(model_overrides=dict(resnet_blocks=(1, 2, 2)))
    looped = small_config(grad_accum_steps=2, model_overrides=dict(resnet_blocks=(1, 2, 2), scan_layers=True))
    assert train.loops_in_step(looped) and not train.loops_in_step(plain)
    assert train.train_step_flops(looped) == train.train_step_flops(plain) > 0


def test_a_device_batch_size_derives_the_accumulation_for_the_mesh():
    config = small_config(batch_size=64, device_batch_size=4)
    assert train.validate_layout(config, abstract_mesh(data=2, fsdp=4, tensor=2)) == 64 and config.grad_accum_steps == 2
    assert train.validate_layout(config, make_mesh()) == 64 and config.grad_accum_steps == 16
    # More shards than the batch fills at device_batch_size: one pass, each shard taking fewer rows.
    assert train.validate_layout(config, abstract_mesh(data=32)) == 64 and config.grad_accum_steps == 1


@pytest.mark.slow
def test_accumulation_equals_the_large_batch(tmp_path):
    large = train.train(small_config(total_steps=2), str(tmp_path / 'large'))
    accumulated = train.train(small_config(total_steps=2, grad_accum_steps=4), str(tmp_path / 'accumulated'))
    for step, loss in losses(tmp_path / 'large').items():
        assert losses(tmp_path / 'accumulated')[step] == pytest.approx(loss, rel=1e-5)
    # Adam divides by the gradient's own scale, so parameters whose gradients are ~0 move by rounding noise * lr.
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5),
        jax.device_get(large.params),
        jax.device_get(accumulated.params),
    )


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    straight = train.train(small_config(total_steps=4), str(tmp_path / 'straight'))
    train.train(small_config(total_steps=2), str(tmp_path / 'resumed'))
    resumed = train.train(small_config(total_steps=4), str(tmp_path / 'resumed'))
    assert losses(tmp_path / 'resumed') == losses(tmp_path / 'straight')
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, jax.device_get(straight.params), jax.device_get(resumed.params)
    )
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, jax.device_get(straight.opt_state), jax.device_get(resumed.opt_state)
    )


MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    from conftest import small_config
    from ofa_jax import train
    results = {}
    def run(name, steps, mesh):
        return train.train(small_config(total_steps=steps, mesh={**dict(replica=1, fsdp=1, tensor=1), **mesh}),
                           sys.argv[2] + '/' + name)
    for name, mesh in [('one', dict(num_devices=1, data=1)), ('data8', dict(data=8)),
                       ('data2_fsdp4', dict(data=2, fsdp=4)), ('data2_fsdp2_tensor2_resumed_on_data8', None)]:
        if mesh is None:  # two steps on one mesh, the checkpoint restored onto another for the third
            run(name, 2, dict(data=2, fsdp=2, tensor=2))
            state = run(name, 3, dict(data=8))
        else:
            state = run(name, 3, mesh)
        leaves = jax.tree_util.tree_leaves(jax.device_get(state.params))
        results[name] = [float(np.sum(np.abs(leaf))) for leaf in leaves[:40]] + [
            json.loads(line)['loss'] for line in open(sys.argv[2] + '/' + name + '/metrics.jsonl')]
    print('RESULTS' + json.dumps(results))
""")


@pytest.mark.slow
def test_meshes_agree_with_one_device(tmp_path):
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'JAX_PLATFORMS': 'cpu'}
    result = subprocess.run(
        [sys.executable, '-c', MESH_SCRIPT, str(ROOT / 'tests'), str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.split('RESULTS')[-1])
    for name, values in results.items():
        # Sums of |parameter| per leaf (atol: leaves that stay ~0 move by Adam-amplified rounding), then losses.
        np.testing.assert_allclose(values, results['one'], rtol=2e-4, atol=5e-5, err_msg=name)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
    workdir = tmp_path / 'preempted'
    command = [
        sys.executable,
        '-m',
        'ofa_jax.train',
        '--config',
        str(ROOT / 'configs' / 'demo.py'),
        f'--workdir={workdir}',
        *SMALL_DEMO_FLAGS,
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and not (workdir / 'metrics.jsonl').exists():
        time.sleep(1)
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    saved = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
    assert saved and saved[-1] < 500 and saved[-1] == max(losses(workdir))


@pytest.mark.slow
def test_demo_learns_then_its_command_evaluates_every_task(tmp_path):
    config = load_config('demo')
    config.total_steps = 120
    config.log_every = 40
    train.train(config, str(tmp_path))
    curve = losses(tmp_path)
    assert curve[120] < 0.75 * curve[40]
    with open(tmp_path / 'metrics.jsonl') as f:
        row = json.loads(f.readline())
    assert {
        'step',
        'loss',
        'learning_rate',
        'examples_per_second',
        'tokens_per_second',
        'mfu',
        'dropped_examples',
    } <= set(row)
    assert list((tmp_path / 'tb').iterdir())
    # The demo's evaluation is its own command, reading the workdir as any user would.
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'ofa_jax.demo',
            '--config',
            str(ROOT / 'configs' / 'demo.py'),
            f'--workdir={tmp_path}',
            '--examples=8',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / 'evaluation.json').read_text())
    assert {
        'caption_exact_match',
        'caption_cider',
        'vqa_accuracy',
        'grounding_accuracy',
        'grounded_caption_exact_match',
        'itm_accuracy',
        'detection_f1',
        'text_infill_exact_match',
        'image_infill_code_accuracy',
    } <= set(scores)
    assert all(scores[f'{task}_examples'] == 8 for task in ('caption', 'vqa', 'grounding', 'text_infill'))
    assert (tmp_path / 'predictions.png').stat().st_size > 1000
    lines = (tmp_path / 'predictions.jsonl').read_text().splitlines()
    assert len(lines) == 8 * 8 and {json.loads(line)['task'] for line in lines} >= {'caption', 'detection'}


@pytest.mark.slow
def test_grounding_learns_its_scenes_and_evaluation_scores_them_as_trained(tmp_path):
    """The whole learning path at once (boxes to bins, the image trunk with its batch statistics, the loss, the
    checkpoint, beam decoding back to boxes, IoU): 64 scenes of grounding alone are learned in 200 steps (measured:
    loss 0.06, every box right), and evaluating them with the running statistics finds the boxes training learned."""
    config = load_config('demo')
    # OFA's vocabulary and the demo's first recipe, as measured: with the world's vocabulary the loss at step 200 was
    # 0.40, with the demo's recipe now (beta2 0.95 at 1e-3, made for the whole world) 1.99.
    config.data.update(mixture='world_grounding', world_size=64, vocab='ofa')
    config.update(total_steps=200, log_every=50, checkpoint_every=200, learning_rate=2e-3, adam_b2=0.999)
    config.update(warmup_steps=40, warmup_ratio=0.0)
    train.train(config, str(tmp_path / 'run'))
    assert losses(tmp_path / 'run')[200] < 0.3
    scores, _ = evaluate.evaluate(config, str(tmp_path / 'run'), str(tmp_path / 'eval'))
    assert scores['grounding_examples'] == 64 and scores['grounding_accuracy'] >= 0.9


@pytest.mark.slow
def test_the_demo_recipe_learns_colours_from_the_pixels(tmp_path):
    """400 steps of the demo's recipe, all 8 tasks: the model names the colour of every shape of unseen scenes.
    With Adam's beta2 0.999 at 2e-3 the caption loss sat at 0.6 from step 150 on, the colour words at chance (loss
    ln 4), even for captions alone; with beta2 0.95 at 1e-3 and OFA's N(0, 0.02) weights it still sat there at step
    1,000 of the mixture; with weights from N(0, 1/sqrt(64)) it leaves by step 200 (measured)."""
    config = load_config('demo')
    config.update(total_steps=400, checkpoint_every=400, warmup_ratio=0.1)  # 40 warmup steps, as measured
    train.train(config, str(tmp_path))
    config.data.mixture = 'world_caption'  # scored on captions
    unseen = demo.unseen_world(config, 256)
    tasks, rates = mixtures.register_from_config(config.data, world=unseen)
    batch = next(iter(pipeline.batches(tasks, rates, train.batch_spec(config, 256), seed=0, repeat=False)))
    checkpoint = load_checkpoint(str(tmp_path))
    logits = train.batch_logits(OFA(checkpoint.config), checkpoint.variables, batch)
    _, correct = train.token_losses(logits, batch['target_tokens'], batch['constraint_ranges'], 0.0)
    vocab = vocabulary_from_spec(config.data.vocab)
    right = {}
    for colour in COLORS:
        (token,) = vocab.encode_spaced(colour)
        named = np.asarray((batch['target_tokens'] == token) & batch['example_mask'][:, None])
        assert named.sum() > 30, colour
        right[colour] = float(np.asarray(correct)[named].mean())
    assert min(right.values()) >= 0.8, right


@pytest.mark.slow
def test_text_to_image_demo_draws_the_captions_of_unseen_scenes(tmp_path):
    config = small_config(
        'text_to_image',
        total_steps=1,
        model_overrides=dict(code_image_size=64),
        data=dict(image_size=64, world_size=100, max_target_length=65),
    )
    train.train(config, str(tmp_path))
    scores = demo.run(config, str(tmp_path), count=4)
    assert set(scores) == {'text_to_image_color_match'} and 0 <= scores['text_to_image_color_match'] <= 1
    assert (tmp_path / 'drawings.png').stat().st_size > 1000
    assert json.loads((tmp_path / 'evaluation.json').read_text()) == scores


def test_a_warmup_ratio_follows_the_run_length():
    config = load_config('finetune', 'classification,tiny')  # 6% warmup of its 50,000 updates
    assert train.warmup_steps(config) == 3000
    config.total_steps = 6  # a short run keeps the recipe's shape: warmup, then decay, and it trains
    schedule = train.learning_rate_schedule(config)
    assert train.warmup_steps(config) == 0 and float(schedule(0)) == pytest.approx(config.learning_rate)
    assert float(schedule(5)) == pytest.approx(config.learning_rate / 6)
    config.total_steps = 200
    schedule = train.learning_rate_schedule(config)
    assert train.warmup_steps(config) == 12 and float(schedule(6)) == pytest.approx(config.learning_rate / 2)


@pytest.mark.slow
def test_finetuning_with_ema_starts_from_a_saved_model(tmp_path):
    config = small_config(total_steps=2, ema_decay=0.5)
    model = model_from_config(config)
    variables = init_variables(model.config, jax.random.key(7), 32)
    save_model(
        tmp_path / 'model',
        model.config,
        {'params': nn.unbox(variables['params']), 'batch_stats': variables['batch_stats']},
    )
    config.init_from = str(tmp_path / 'model')
    state = train.train(config, str(tmp_path / 'run'))
    assert int(state.step) == 2 and all(np.isfinite(list(losses(tmp_path / 'run').values())))
    start = nn.unbox(variables['params'])['embed_tokens']['embedding']
    ema, trained = state.ema_params['embed_tokens']['embedding'], state.params['embed_tokens']['embedding']
    # EMA 0.5 of the loaded start: (start + p1) / 4 + p2 / 2, between the start and the trained parameters.
    assert not np.array_equal(np.asarray(ema), np.asarray(trained)) and not np.array_equal(np.asarray(ema), start)
    # The BatchNorm statistics are averaged too (fairseq's EMA averages every float of the model): the same mix.
    stats = [jax.tree_util.tree_leaves(tree) for tree in (variables['batch_stats'], state.batch_stats)]
    for begun, ema_stat, trained_stat in zip(stats[0], jax.tree_util.tree_leaves(state.ema_batch_stats), stats[1]):
        if not np.array_equal(np.asarray(begun), np.asarray(trained_stat)):
            assert not np.array_equal(np.asarray(ema_stat), np.asarray(trained_stat))

    # A workdir saved before the EMA kept BatchNorm statistics resumes, their average starting from the statistics.
    step_dir = tmp_path / 'run' / 'checkpoints' / '2' / 'state'
    checkpointer = ocp.StandardCheckpointer()
    saved = checkpointer.restore(step_dir)
    saved.pop('ema_batch_stats')
    shutil.rmtree(step_dir)
    checkpointer.save(step_dir, saved)
    checkpointer.wait_until_finished()
    loaded = load_checkpoint(tmp_path / 'run').variables['batch_stats']  # its statistics, there being no average
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, saved['batch_stats'])
    config.total_steps = 3
    resumed = train.train(config, str(tmp_path / 'run'))
    assert int(resumed.step) == 3 and set(losses(tmp_path / 'run')) == {1, 2, 3}
    assert all(np.all(np.isfinite(np.asarray(s))) for s in jax.tree_util.tree_leaves(resumed.ema_batch_stats))


@pytest.mark.slow
def test_a_run_with_scanned_layers_starts_from_an_unrolled_model_and_trains_as_the_unrolled_run(tmp_path):
    """A converted OFA checkpoint is unrolled; a run with scan_layers restacks it and takes the same steps."""
    config = small_config(total_steps=2, model_overrides=dict(resnet_blocks=(1, 2, 3)))
    model = model_from_config(config)
    variables = init_variables(model.config, jax.random.key(7), 32)
    save_model(tmp_path / 'model', model.config, nn.unbox(variables))
    config.init_from = str(tmp_path / 'model')
    unrolled = train.train(config, str(tmp_path / 'unrolled'))
    config.model_overrides.update(scan_layers=True, scan_resnet=True)
    scanned = train.train(config, str(tmp_path / 'scanned'))
    assert 'layers' in scanned.params['encoder'] and 'layer3_rest' in scanned.params['encoder']['embed_images']
    np.testing.assert_allclose(
        list(losses(tmp_path / 'scanned').values()), list(losses(tmp_path / 'unrolled').values()), rtol=1e-5
    )
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        scan_layout(scanned.params, model.config),
        unrolled.params,
    )


def test_a_non_finite_step_is_skipped_and_counted():
    config = small_config(warmup_steps=0)  # the optimizer's schedule does not count a skipped update
    tasks, rates = mixtures.register_from_config(config.data)
    spec = pipeline.BatchSpec(8, config.data.image_size, config.data.max_source_length, config.data.max_target_length)
    batch = next(iter(pipeline.batches(tasks, rates, spec, seed=0)))
    batch = {k: v for k, v in batch.items() if k not in pipeline.HOST_KEYS}
    model, optimizer = model_from_config(config), train.make_optimizer(config)
    state = train.initial_state(model, optimizer, config, config.data.image_size)
    step = jax.jit(functools.partial(train.train_step, model, optimizer, config, len(tasks)))
    poisoned = dict(batch, loss_weights=np.where(np.arange(8) == 3, np.nan, batch['loss_weights']).astype(np.float32))
    skipped, metrics = step(state, poisoned)
    assert bool(metrics['skipped']) and not np.isfinite(metrics['loss']) and int(skipped.step) == 1
    for kept, before in ((skipped.params, state.params), (skipped.opt_state, state.opt_state)):
        jax.tree_util.tree_map(np.testing.assert_array_equal, kept, before)
    stepped, metrics = step(skipped, batch)
    assert not bool(metrics['skipped']) and int(stepped.step) == 2
    moved = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), stepped.params, state.params)
    assert np.mean(jax.tree_util.tree_leaves(moved)) > 0.5  # most parameters have a gradient on this batch


@pytest.mark.slow
def test_non_finite_steps_are_counted_or_stop_the_run(tmp_path):
    # A NaN learning rate makes the first update NaN (its own loss and gradients were finite): every later step's
    # loss is NaN.
    train.train(small_config(learning_rate=float('nan')), str(tmp_path / 'skip'))
    logged = train.read_metrics(str(tmp_path / 'skip'))
    assert [r['skipped_steps'] for r in logged] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match='step 2: non-finite loss or gradients.*no checkpoint'):
        train.train(small_config(learning_rate=float('nan'), nonfinite='stop'), str(tmp_path / 'stop'))
    with pytest.raises(ValueError, match="nonfinite is 'ignore'"):
        train.train(small_config(nonfinite='ignore'), str(tmp_path / 'bad'))


@pytest.mark.slow  # two runs of the trainer in processes of their own
def test_a_second_run_loads_its_compiled_programs_from_the_compilation_cache(tmp_path):
    cache = tmp_path / 'cache'
    env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}  # the config's key decides

    def run(name):
        command = [sys.executable, 'tests/train_worker.py', str(tmp_path / name), '2', f'compilation_cache_dir={cache}']
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return sorted(p.name for p in cache.iterdir())

    compiled = run('first')
    assert any(name.startswith('jit_train_step') for name in compiled), compiled
    assert run('second') == compiled  # the same config compiles nothing new


@pytest.mark.slow  # a trainer in a process of its own: numpy's BLAS starts with its threads there
def test_the_trainer_gives_numpy_blas_one_thread(tmp_path):
    """The input pipeline's numpy runs beside the step: BLAS's idle threads would spin on the step's cores."""
    script = textwrap.dedent(f"""
        import sys, threadpoolctl
        sys.path.insert(0, 'tests')
        from conftest import small_config
        from ofa_jax import train
        info = threadpoolctl.threadpool_info
        blas = lambda: max((i['num_threads'] for i in info() if i['user_api'] == 'blas'), default=0)
        before = blas()
        train.train(small_config(total_steps=1, checkpoint_every=1), {str(tmp_path / 'run')!r})
        print(before, blas())
    """)
    done = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    before, during = map(int, done.stdout.split()[-2:])
    if before < 2:  # one core, OPENBLAS_NUM_THREADS=1, or no BLAS that threadpoolctl finds: nothing to limit
        pytest.skip(f'numpy starts with {before} BLAS threads here')
    assert during == 1


def test_an_unwritable_workdir_fails_before_training(tmp_path):
    (tmp_path / 'file').write_text('not a directory')
    with pytest.raises(ValueError, match=r'workdir .*file/run cannot be written: Not a directory'):
        train.train(small_config(), str(tmp_path / 'file' / 'run'))
    train.check_writable(str(tmp_path / 'run'))
    assert os.listdir(tmp_path / 'run') == []  # the probe is gone


def test_a_full_workdir_fails_before_training(tmp_path):
    # A file-size limit below the probe's 1 MiB stands for a full disk: the probe's write fails as it would there.
    script = textwrap.dedent(f"""
        import resource, signal
        from ofa_jax import train
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 18, 1 << 18))
        train.check_writable({str(tmp_path / 'run')!r})
    """)
    result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and 'cannot be written: File too large' in result.stderr, result.stderr[-2000:]
    assert os.listdir(tmp_path / 'run') == []  # the partial probe is removed


def test_slurm_tasks_that_would_leave_gpus_idle_fail_before_training(monkeypatch):
    # 2 nodes of 2 GPUs, one task a node: jax gives each task one GPU, so one GPU a node would idle.
    monkeypatch.setenv('SLURM_GPUS_ON_NODE', '2')
    monkeypatch.setenv('SLURM_STEP_NUM_NODES', '2')
    monkeypatch.setenv('SLURM_NTASKS', '2')
    with pytest.raises(ValueError, match=r'2 GPUs but runs 1 SLURM task\(s\) of 1 device\(s\): 1 GPUs would idle'):
        train.check_slurm_devices()
    monkeypatch.setenv('SLURM_NTASKS', '4')  # one task per GPU
    train.check_slurm_devices()


@pytest.mark.slow
def test_resuming_with_other_data_workers_fails_naming_both_counts(tmp_path):
    train.train(small_config(total_steps=2), str(tmp_path))
    with pytest.raises(
        ValueError, match=r'step 2 was saved by 1 process\(es\) with 0 data worker\(s\) each; this run has 1 with 2'
    ):
        train.train(small_config(total_steps=4, data=dict(workers=2)), str(tmp_path))


@pytest.mark.parametrize('mode, best', [('max', 20), ('min', 10)])
def test_the_best_checkpoint_is_kept_across_restarts(tmp_path, mode, best):
    variables = {'params': {'w': jnp.zeros(3)}, 'batch_stats': {}}
    scores = {10: 0.2, 20: 0.5, 30: 0.3, 40: 0.4}
    for steps in ((10, 20), (30, 40)):  # a restart between: the stored score competes with the new ones
        manager = train.best_manager(str(tmp_path), 'vqa_accuracy', mode)
        for step in steps:
            manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(variables), config=ocp.args.JsonSave({'step': step})
                ),
                metrics={'vqa_accuracy': scores[step]},
            )
        manager.close()
    manager = train.best_manager(str(tmp_path), 'vqa_accuracy', mode)
    assert manager.all_steps() == [best] and manager.best_step() == best
    manager.close()
    with pytest.raises(ValueError, match="'max' or 'min'"):
        train.best_manager(str(tmp_path), 'vqa_accuracy', 'highest')


def test_validation_during_training_scores_and_keeps_the_best(tmp_path):
    config = small_config(
        total_steps=4, data={'mixture': mixtures.world_task_name('grounding'), 'world_size': 64}, checkpoint_every=4
    )
    config.validation.update(every=2, max_examples=8, metric='grounding_accuracy')
    train.train(config, str(tmp_path))
    rows = {r['step']: r for r in train.read_metrics(str(tmp_path))}
    scored = {step: rows[step]['validation/grounding_accuracy'] for step in (2, 4)}
    assert all(rows[step]['validation/grounding_examples'] == 8 and 'loss' in rows[step] for step in (2, 4))
    for step in (2, 4):  # what evaluate writes, and the same as metrics.jsonl
        saved = json.loads((tmp_path / 'validation' / f'step_{step}.json').read_text())
        assert saved['grounding_accuracy'] == scored[step]
    checkpoint = load_checkpoint(str(tmp_path / train.BEST_DIR))
    assert scored[checkpoint.step] == max(scored.values())
    # The best directory is a model for evaluate: the same scores on the same scenes.
    validation_config, world = evaluate.validation_setup(config)
    again, _ = evaluate.evaluate(
        validation_config, str(tmp_path / train.BEST_DIR), str(tmp_path / 'again'), 8, world=world
    )
    assert again['grounding_accuracy'] == scored[checkpoint.step]
    with pytest.raises(ValueError, match='no task with a metric has validation data'):
        bad = load_config('finetune', 'caption,tiny')
        bad.validation.every = 10
        evaluate.validation_setup(bad)


def test_an_extra_sub_batch_adds_its_own_mean_and_accumulates_exactly():
    # OFA's criterion: loss_v1 / ntokens_v1 + loss_v2 / ntokens_v2, over the whole batch however it is accumulated.
    config = small_config(learning_rate=1e-3, warmup_steps=0)
    tasks, rates = mixtures.register_from_config(config.data)
    spec = train.batch_spec(config, 8)
    main, extra = [
        {k: v for k, v in b.items() if k not in pipeline.HOST_KEYS}
        for b in take_batches(tasks, rates, spec, seed=0, count=2)
    ]
    extra['loss_weights'] = extra['loss_weights'] * 2.0
    extra['example_mask'][-1] = False  # a padding row: its tokens count in neither sum
    model, optimizer = model_from_config(config), train.make_optimizer(config)
    state = train.initial_state(model, optimizer, config, config.data.image_size)
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    expected = 0.0
    for part in (main, extra):
        logits = train.batch_logits(model, variables, part, train=False)
        loss, _ = train.token_losses(logits, part['target_tokens'], part['constraint_ranges'], 0.0)
        tokens = (part['target_tokens'] != V.PAD) & part['example_mask'][:, None]
        expected += float(jnp.where(tokens, loss * part['loss_weights'][:, None], 0.0).sum() / tokens.sum())
    results = []
    for accum in (1, 2):
        config_accum = small_config(learning_rate=1e-3, warmup_steps=0, grad_accum_steps=accum)
        step = jax.jit(functools.partial(train.train_step, model, optimizer, config_accum, len(tasks)))
        new_state, metrics = step(state, {**main, 'extra': extra})
        results.append((new_state, metrics))
    for new_state, metrics in results:
        assert float(metrics['loss']) == pytest.approx(expected, rel=1e-5)
        counted = sum(int(((p['target_tokens'] != V.PAD) & p['example_mask'][:, None]).sum()) for p in (main, extra))
        assert int(metrics['target_tokens']) == counted
    assert float(results[1][1]['grad_norm']) == pytest.approx(float(results[0][1]['grad_norm']), rel=1e-5)
    with pytest.raises(ValueError, match='drop_worst_ratio'):
        dropping = small_config(drop_worst_ratio=0.2)
        train.train_step(model, optimizer, dropping, len(tasks), state, {**main, 'extra': extra})


def take_batches(tasks, rates, spec, seed, count):
    iterator = iter(pipeline.batches(tasks, rates, spec, seed=seed))
    return [next(iterator) for _ in range(count)]


@pytest.mark.slow
def test_ofa_pretraining_trains_its_extra_samples_in_a_sub_batch_of_their_own(tmp_path):
    config = load_config('pretrain', 'tiny')
    config.model, config.model_overrides = 'nano', dict(code_image_size=32)
    paths = ofa_pretraining_files(tmp_path, World(size=9, image_size=32))
    config.data.update({f'{role}_path': str(path) for role, path in paths.items()})
    config.data.update(image_size=32, extra_image_size=32, workers=0, max_target_length=16, extra_max_source_length=48)
    config.data.extra_max_target_length = 16  # 16 codes and eos do not fit
    config.update(
        batch_size=10, device_batch_size=0, total_steps=2, log_every=1, checkpoint_every=2, sample_patch_num=0
    )
    config.mesh = dict(replica=1, data=1, fsdp=1, tensor=1)
    with pytest.raises(ValueError, match='16 image codes and eos do not fit data.extra_max_target_length=16'):
        train.train(config, str(tmp_path / 'short'))
    config.data.extra_max_target_length = 24
    train.train(config, str(tmp_path / 'run'))
    logged = train.read_metrics(str(tmp_path / 'run'))
    assert [r['step'] for r in logged] == [1, 2] and all(np.isfinite(r['loss']) for r in logged)
    for name in ('ofa_text_infill', 'ofa_image_infill', 'ofa_detection', 'ofa_vl_first'):
        assert any(r[f'loss/{name}'] > 0 for r in logged), name
    train.train(config.copy_and_resolve_references(), str(tmp_path / 'run'))  # resumes both streams: nothing to do


@pytest.mark.slow
def test_scst_raises_the_cider_of_its_starting_checkpoint(tmp_path):
    """Stage 1 (cross-entropy) on 64 scenes' captions, then SCST from its checkpoint on the same scenes: the CIDEr of
    the captions it decodes for them rises (measured: 1.98 to 2.29 after 60 steps), as does its reward."""
    data = {'mixture': mixtures.world_task_name('caption'), 'world_size': 64, 'max_target_length': 17}
    stage1 = small_config(data=data, learning_rate=1e-3, total_steps=150, checkpoint_every=150, log_every=50)
    train.train(stage1, str(tmp_path / 'stage1'))
    stage2 = small_config(
        data=data,
        scst=True,
        init_from=str(tmp_path / 'stage1'),
        learning_rate=1e-4,
        batch_size=16,
        total_steps=60,
        checkpoint_every=60,
        log_every=5,
    )
    train.train(stage2, str(tmp_path / 'stage2'))
    rewards = [r['scst_cider'] for r in train.read_metrics(str(tmp_path / 'stage2'))]
    assert len(rewards) == 12 and np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.1
    before, _ = evaluate.evaluate(stage1, str(tmp_path / 'stage1'), str(tmp_path / 'before'))
    after, _ = evaluate.evaluate(stage1, str(tmp_path / 'stage2'), str(tmp_path / 'after'))
    assert before['caption_examples'] == after['caption_examples'] == 64
    assert after['caption_cider'] > before['caption_cider'] + 0.15
