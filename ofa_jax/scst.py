"""Self-critical sequence training (SCST): OFA's second caption finetuning stage, which optimizes CIDEr directly.

Each step, the model (in inference mode) beam-searches its captions of the batch's images as its caption task
decodes them (beam 5, at most 16 tokens and eos, no repeated trigram: OFA's --scst-args); each of the 5 captions is
rewarded by its CIDEr-D against the image's references, with document frequencies from the training references
(OFA's cached coco-train-words), minus the mean reward of the other 4 (the baseline); the step then trains on the 5
captions, teacher-forced, each token's log-probability weighted by its caption's reward (OFA's
criterions/scst_loss.py), the loss normalized by their tokens.
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from ofa_jax import decode, metrics
from ofa_jax.data import mixtures, pipeline
from ofa_jax.data import vocab as V
from ofa_jax.data.registry import Task
from ofa_jax.data.tasks import TASKS
from ofa_jax.data.vocab import Vocabulary
from ofa_jax.model import OFA
from ofa_jax.paths import resolved, write_atomically

CORPUS_FILE = 'scst_document_frequency.json'  # under the workdir: the training references' n-grams, counted once


def check_config(config: Any) -> None:
    """SCST trains captions alone, on their beams as targets: one caption task, targets that hold a whole caption."""
    kinds = {spec['kind'] for spec in config.data.tasks.values()} if config.data.source == 'tasks' else set()
    if config.data.source == 'world' and config.data.mixture == mixtures.world_task_name('caption'):
        kinds = {'caption'}
    if kinds != {'caption'}:
        raise ValueError('scst trains captions alone: its data must be one caption task')
    length = TASKS['caption'].decode['max_length']
    if config.data.max_target_length < length:
        raise ValueError(f'scst captions have up to {length} tokens: data.max_target_length must be at least {length}')


def reward_scorer(tasks: Sequence[Task], workdir: str | os.PathLike) -> metrics.CiderD:
    """CIDEr-D with the document frequencies of the tasks' references (each record's 'references', or its
    'caption'), counted at the first start and read from WORKDIR/scst_document_frequency.json after."""
    path = resolved(workdir) / CORPUS_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        frequencies = {tuple(gram.split(' ')): df for gram, df in saved['document_frequency']}
        return metrics.CiderD(frequencies, saved['log_images'])
    corpus = []
    for task in tasks:
        for index in range(len(task.source)):
            record = task.source[index]
            references = record.get('references') or [record.get('caption')]
            texts = [metrics.scst_text(r) for r in references if isinstance(r, str) and r.strip()]
            if texts:
                corpus.append(texts)
    if not corpus:
        raise ValueError(f'SCST: the tasks {[t.name for t in tasks]} hold no reference captions')
    scorer = metrics.CiderD.of_corpus(corpus)
    if jax.process_index() == 0:
        frequencies = [(' '.join(gram), df) for gram, df in scorer.document_frequency.items()]
        saved = {'log_images': float(scorer.log_images), 'document_frequency': frequencies}
        write_atomically(path, json.dumps(saved).encode())
    return scorer


def rewards(scorer: metrics.CiderD, captions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]):
    """(CIDEr-D [B, k] of each image's k captions, the rewards [B, k]: each caption's CIDEr-D minus the mean of the
    image's other captions')."""
    k = len(captions[0])
    refs = [[metrics.scst_text(r) for r in image_refs] for image_refs in references for _ in range(k)]
    scores = scorer.scores(refs, [metrics.scst_text(c) for image in captions for c in image]).reshape(-1, k)
    baseline = (scores.sum(axis=1, keepdims=True) - scores) / (k - 1)
    return scores, scores - baseline


def host_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = {shard.index[0].start or 0: shard.data for shard in x.addressable_shards}
    return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])


def scst_batch(
    model: OFA,
    variables: dict[str, Any],
    batch: dict[str, jax.Array],
    host_batch: dict[str, Any],
    vocab: Vocabulary,
    scorer: metrics.CiderD,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The SCST training batch of a caption batch (placed on the devices: `batch`; on the host, with its
    'references': `host_batch`): k rows per image (k = the caption task's beam), each one of the model's captions as
    target, its reward as loss weight. Returns it (host arrays, this process's rows) and the CIDEr-D [B, k] of the
    captions of its real images."""
    settings = decode.DecodeSettings(**TASKS['caption'].decode)
    tokens, _ = decode.generate(
        model, variables, batch['src_tokens'], batch['patch_images'], batch['patch_masks'], settings
    )
    tokens = host_rows(tokens)  # [B, k, max_length]: the caption, eos, then PAD
    real = np.flatnonzero(host_batch['example_mask'])
    captions = [[vocab.decode([t for t in beam if t not in (V.EOS, V.PAD)]) for beam in tokens[i]] for i in real]
    scores, advantages = rewards(scorer, captions, [host_batch['references'][i] for i in real])
    k, width = tokens.shape[1], host_batch['target_tokens'].shape[1]
    if tokens.shape[2] > width:
        raise ValueError(f'SCST captions of {tokens.shape[2]} tokens do not fit data.max_target_length={width}')
    weights = np.zeros((len(tokens), k), np.float32)
    weights[real] = advantages
    targets = np.full((len(tokens) * k, width), V.PAD, np.int32)
    targets[:, : tokens.shape[2]] = tokens.reshape(-1, tokens.shape[2])
    previous = np.concatenate([np.full((len(targets), 1), V.BOS, np.int32), targets[:, :-1]], axis=1)
    repeated = {
        key: np.repeat(host_batch[key], k, axis=0) for key in pipeline.SOURCE_KEYS + ('task_ids', 'example_mask')
    }
    return {
        **repeated,
        'prev_output_tokens': np.where(targets != V.PAD, previous, V.PAD),
        'target_tokens': targets,
        'loss_weights': weights.reshape(-1),
        'code_masks': np.zeros(len(targets), bool),
        'constraint_ranges': np.tile(np.array(pipeline.UNCONSTRAINED, np.int32), (len(targets), 1)),
    }, scores
