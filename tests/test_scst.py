"""Self-critical training: its rewards (OFA's criterions/scst_loss.py) and the batch it trains on."""

import jax
import numpy as np
import pytest
from conftest import small_config

from ofa_jax import metrics, scst, train
from ofa_jax.checkpoint import model_from_config
from ofa_jax.data import mixtures, pipeline
from ofa_jax.data import vocab as V
from ofa_jax.data.vocab import vocabulary_from_spec


def test_each_caption_is_rewarded_against_the_mean_of_the_others():
    corpus = [['a red square <eos>', 'a red box <eos>'], ['two blue circles <eos>'], ['a green triangle <eos>']]
    scorer = metrics.CiderD.of_corpus(corpus)
    captions = [['a red square', 'a red circle', 'two blue', 'a green']]
    scores, advantages = scst.rewards(scorer, captions, [['a red square.', 'A red box']])
    refs = [['a red square <eos>', 'A red box <eos>']] * 4
    want = scorer.scores(refs, [metrics.scst_text(c) for c in captions[0]])
    np.testing.assert_allclose(scores[0], want)
    np.testing.assert_allclose(advantages[0], want - (want.sum() - want) / 3)  # OFA's baseline: the others' mean
    assert advantages[0].argmax() == 0


def test_the_reward_frequencies_are_counted_once_and_kept(tmp_path):
    config = small_config(data={'mixture': mixtures.world_task_name('caption'), 'world_size': 20})
    tasks, _ = mixtures.register_from_config(config.data)
    counted = scst.reward_scorer(tasks, str(tmp_path))
    assert (tmp_path / scst.CORPUS_FILE).exists()
    read = scst.reward_scorer(tasks, str(tmp_path))
    assert read.document_frequency == counted.document_frequency and read.log_images == pytest.approx(np.log(20))


def test_the_scst_batch_trains_on_the_models_own_captions_weighted_by_reward(tmp_path):
    config = small_config(
        data={'mixture': mixtures.world_task_name('caption'), 'max_target_length': 17}, scst=True, batch_size=4
    )
    tasks, rates = mixtures.register_from_config(config.data)
    spec = train.batch_spec(config, 4)
    host = next(iter(pipeline.batches(tasks, rates, spec, seed=0)))
    host['example_mask'][-1] = False  # a padding row: no reward, no weight
    model = model_from_config(config)
    state = train.initial_state(model, train.make_optimizer(config), config, config.data.image_size)
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    placed = {k: jax.numpy.asarray(v) for k, v in host.items() if k not in pipeline.HOST_KEYS}
    scorer = scst.reward_scorer(tasks, str(tmp_path))
    batch, scores = scst.scst_batch(model, variables, placed, host, vocabulary_from_spec(config.data.vocab), scorer)
    k = 5  # the caption task's beam
    assert batch['target_tokens'].shape == (4 * k, spec.max_target_length) and scores.shape == (3, k)
    np.testing.assert_array_equal(batch['src_tokens'], np.repeat(host['src_tokens'], k, axis=0))
    weights = batch['loss_weights'].reshape(4, k)
    np.testing.assert_allclose(weights[:3], scores - (scores.sum(1, keepdims=True) - scores) / (k - 1), rtol=1e-6)
    assert not weights[3].any() and not batch['example_mask'][-k:].any()
    for row in range(4 * k):  # teacher forcing of each caption: bos, then its tokens; eos ends it
        target = batch['target_tokens'][row]
        length = int(np.sum(target != V.PAD))
        assert target[length - 1] == V.EOS and batch['prev_output_tokens'][row, 0] == V.BOS
        np.testing.assert_array_equal(batch['prev_output_tokens'][row, 1:length], target[: length - 1])
