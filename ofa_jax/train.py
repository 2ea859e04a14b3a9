"""Trains OFA: one loop, from a laptop CPU to a TPU pod.

    python -m ofa_jax.train --config configs/demo.py --workdir workdir/demo [--config.total_steps=100 ...]

Re-running with the same workdir resumes from its latest checkpoint (parameters, optimizer, step, RNG, the data
iterator). SIGTERM finishes the current step, saves and exits. Outputs in the workdir: checkpoints/, metrics.jsonl,
TensorBoard events in tb/, config.json. Evaluation is its own command (`python -m ofa_jax.evaluate`, or
`python -m ofa_jax.demo` for the synthetic world), reading the workdir.
"""

import collections
import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import flax
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from absl import flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags
from tensorboardX import SummaryWriter

from ofa_jax import api, console, evaluate, scst, sharding
from ofa_jax.checkpoint import (
    TRAINING_CHECKPOINTS,
    load_checkpoint,
    model_from_config,
    restore_fitting,
    stored_state_fields,
)
from ofa_jax.data import mixtures, pipeline
from ofa_jax.data import vocab as V
from ofa_jax.data.vocab import vocabulary_from_spec
from ofa_jax.model import OFA, OFAConfig, abstract_variables, init_variables, scan_layout
from ofa_jax.paths import is_remote, resolved

# Dense bfloat16 peak FLOP/s per chip, by jax device_kind prefix.
PEAK_FLOPS = {
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12,
    'TPU v5e': 197e12,
    'TPU v5p': 459e12,
    'TPU v5': 459e12,
    'TPU v6': 918e12,
    'NVIDIA H100': 989e12,
    'NVIDIA H200': 989e12,
    'NVIDIA A100': 312e12,
}


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any  # None when config.ema_decay is 0
    ema_batch_stats: Any  # the BatchNorm statistics' average, as fairseq's EMA averages every float of the model
    rng: jax.Array  # raw key data (uint32), so checkpoints hold plain arrays


def maybe_initialize_distributed() -> None:
    """Joins the other processes of the job, where the environment describes one: on a Cloud TPU VM always (jax finds
    the slice's workers; a single host joins itself); under SLURM with more than one task, one task per GPU (jax
    gives local task i the node's GPU i); or as OFA_COORDINATOR, OFA_NUM_PROCESSES and OFA_PROCESS_ID say (any
    cluster, CPUs included). Elsewhere, one process."""
    from jax._src import cloud_tpu_init  # noqa: PLC0415 - set by jax's import where it finds TPU chips and libtpu

    explicit = 'OFA_COORDINATOR' in os.environ
    slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1
    if not (explicit or slurm or cloud_tpu_init.running_in_cloud_tpu_vm):
        return
    # Processes on CPUs reduce over gloo (TCP). Only the CPU client reads this setting, and it must be set before
    # the backends start; older jax versions leave it unset, which fails every cross-process computation on CPU.
    # A choice made elsewhere (JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi) is kept.
    if not jax.config.jax_cpu_collectives_implementation:
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    if explicit:
        jax.distributed.initialize(
            os.environ['OFA_COORDINATOR'], int(os.environ['OFA_NUM_PROCESSES']), int(os.environ['OFA_PROCESS_ID'])
        )
    else:
        jax.distributed.initialize()
    if slurm and not explicit:
        check_slurm_devices()


def check_slurm_devices() -> None:
    """Fails before training when this node's GPUs outnumber the devices its SLURM tasks drive (one task per node
    gets one GPU from jax, leaving the rest idle)."""
    gpus = int(os.environ.get('SLURM_GPUS_ON_NODE') or 0)
    nodes = int(os.environ.get('SLURM_STEP_NUM_NODES') or os.environ.get('SLURM_NNODES') or 1)
    tasks = int(os.environ['SLURM_NTASKS']) // nodes
    if gpus > tasks * jax.local_device_count():
        raise ValueError(
            f'this node has {gpus} GPUs but runs {tasks} SLURM task(s) of {jax.local_device_count()} device(s): '
            f'{gpus - tasks * jax.local_device_count()} GPUs would idle; start one task per GPU '
            f'(sbatch --ntasks-per-node={gpus})'
        )


# Where a failing process of a multi-process job leaves its error, in the coordination service's key-value store.
FAILED_PROCESSES = 'ofa_jax/failed/'


@contextlib.contextmanager
def fail_together(poll_seconds: float = 1.0) -> Iterator[None]:
    """In a job of several processes, an error in one ends every process within seconds, each naming it (exit status
    1), where the others would wait for the failed one in their next collective until the job's timeouts.

    The failing process leaves its error in the coordination service and exits at once (its own exit would otherwise
    wait at jax's shutdown barrier for processes that are waiting for it); a thread in every process watches for
    such errors. With one process this does nothing."""
    if jax.process_count() == 1:
        yield
        return
    from jax._src import distributed  # noqa: PLC0415 - no public API reaches the coordination service's store

    client, me, finished = distributed.global_state.client, jax.process_index(), threading.Event()

    def stop_for_a_failed_peer() -> None:
        """Exits naming the first other process that left its error, if one did."""
        try:
            failures = [(int(k.rsplit('/', 1)[1]), m) for k, m in client.key_value_dir_get(FAILED_PROCESSES)]
        except Exception as error:  # noqa: BLE001 - the service is gone: the job is over for this process too
            failures = [('the coordinator', f'unreachable ({type(error).__name__}: {error})')]
        failures = [(who, message) for who, message in failures if who != me]
        if failures:
            who, message = failures[0]
            print(f'process {me}: stopping: process {who} failed: {message}', file=sys.stderr, flush=True)
            os._exit(1)

    def watch() -> None:
        while not finished.wait(poll_seconds):
            stop_for_a_failed_peer()

    threading.Thread(target=watch, name='peer-failures', daemon=True).start()
    try:
        yield
    except BaseException as error:
        # A collective broken by a peer that failed first (its error is already in the store) is that peer's failure.
        stop_for_a_failed_peer()
        message = f'{type(error).__name__}: {error}'
        with contextlib.suppress(Exception):
            client.key_value_set(f'{FAILED_PROCESSES}{me}', message)
        if console.verbose() or not isinstance(error, ValueError):
            traceback.print_exc()
        print(f'process {me}: error: {message}', file=sys.stderr, flush=True)
        os._exit(1)
    finally:
        finished.set()


def warmup_steps(config: ml_collections.ConfigDict) -> int:
    """The run's warmup: `warmup_ratio` of its total steps when set (OFA's --warmup-ratio, so a run shortened or
    lengthened from the command line keeps its recipe's shape), else `warmup_steps`."""
    if config.warmup_ratio:
        if config.warmup_steps:
            raise ValueError(
                f'set one of warmup_steps ({config.warmup_steps}) and warmup_ratio '
                f'({config.warmup_ratio}), the other to 0'
            )
        return int(config.total_steps * config.warmup_ratio)
    return int(config.warmup_steps)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0, then linear (polynomial, power 1) decay to end_learning_rate at total_steps."""
    warmup = warmup_steps(config)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1)),
            optax.polynomial_schedule(
                config.learning_rate, config.end_learning_rate, 1.0, max(config.total_steps - warmup, 1)
            ),
        ],
        [warmup],
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Clipping and AdamW; with `freeze_token_embedding` (OFA's --freeze-encoder-embedding and
    --freeze-decoder-embedding) the shared token embedding, which is also the output projection, is neither updated
    nor decayed nor counted in the clipped gradient norm, as a parameter without requires_grad is in OFA."""
    optimizer = optax.chain(
        optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity(),
        optax.adamw(
            learning_rate_schedule(config),
            b1=config.adam_b1,
            b2=config.adam_b2,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        ),
    )
    if not config.freeze_token_embedding:
        return optimizer

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: 'frozen' if path and getattr(path[0], 'key', None) == 'embed_tokens' else 'trained', params
        )

    return optax.multi_transform({'trained': optimizer, 'frozen': optax.set_to_zero()}, labels)


def drop_worst_tokens(losses: jax.Array, tokens: jax.Array, ratio: float) -> jax.Array:
    """OFA's drop-worst (--drop-worst-ratio): of the n counted tokens, only the int(n * (1 - ratio)) of lowest loss
    are kept. losses [B, T] float, tokens [B, T] bool -> kept [B, T] bool."""
    flat = jnp.where(tokens, losses, jnp.inf).ravel()
    rank = jnp.argsort(jnp.argsort(flat))  # ties broken by position, as any top-k does
    keep = jnp.floor(tokens.sum() * (1.0 - ratio)).astype(jnp.int32)
    return (rank < keep).reshape(tokens.shape) & tokens


def token_losses(
    logits: jax.Array,
    targets: jax.Array,
    constraint_ranges: jax.Array,
    label_smoothing: float,
    allowed_tokens: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """OFA's label-smoothed cross entropy per token, with the vocabulary limited to each row's allowed range and,
    as OFA's --constraint-range does, the four special ids (bos, pad, eos, unk), and, where given, to each
    position's allowed tokens (OFA's constraint masks: an answer's trie).

    logits [B, T, V], targets [B, T], constraint_ranges [B, 2], allowed_tokens [B, T, ceil(V / 8)] uint8 packed
    (pipeline.to_batch) -> (loss [B, T], correct [B, T])."""
    ids = jnp.arange(logits.shape[-1])
    allowed = (ids >= constraint_ranges[:, None, :1]) & (ids < constraint_ranges[:, None, 1:]) | (ids < V.NUM_SPECIALS)
    if allowed_tokens is not None:
        allowed = allowed & jnp.unpackbits(allowed_tokens, axis=-1, count=logits.shape[-1]).astype(bool)
    lprobs = jax.nn.log_softmax(jnp.where(allowed, logits, -1e9), axis=-1)
    nll = -jnp.take_along_axis(lprobs, targets[..., None], axis=-1)[..., 0]
    smooth = -jnp.sum(jnp.where(allowed, lprobs, 0.0), axis=-1)
    eps_i = label_smoothing / jnp.maximum(jnp.sum(allowed, axis=-1) - 1, 1)
    loss = (1.0 - label_smoothing - eps_i) * nll + eps_i * smooth
    return loss, jnp.argmax(lprobs, axis=-1) == targets


def batch_logits(model: OFA, variables: dict[str, Any], batch: dict[str, Any], **apply_kwargs: Any) -> Any:
    """The model's teacher-forced float32 logits [B, T, vocab] on a pipeline batch (`apply_kwargs` go to
    `model.apply`: train, rngs, mutable, ...)."""
    return model.apply(
        variables,
        batch['src_tokens'],
        batch['patch_images'],
        batch['patch_masks'],
        batch['prev_output_tokens'],
        batch['code_masks'],
        **apply_kwargs,
    )


def train_step(
    model: OFA,
    optimizer: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    num_tasks: int,
    state: TrainState,
    batch: dict[str, jax.Array],
) -> tuple[TrainState, dict]:
    """One optimizer update over `config.grad_accum_steps` micro-batches; the loss is normalized by all target tokens
    of the whole batch, so accumulation equals one large batch. A batch with an extra sub-batch (batch['extra'],
    OFA's extra pretraining samples) is two: the loss is the sum of each one's mean over its own tokens, as OFA's
    criterion adds loss_v1 / ntokens_v1 and loss_v2 / ntokens_v2."""
    accum = config.grad_accum_steps
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    parts = ('main', 'extra') if 'extra' in batch else ('main',)
    batch = {
        'main': {k: v for k, v in batch.items() if k != 'extra'},
        **({'extra': batch['extra']} if 'extra' in batch else {}),
    }
    if len(parts) > 1 and config.drop_worst_ratio:
        raise ValueError('drop_worst_ratio takes the worst tokens of one batch; this one has an extra sub-batch')
    # Two sub-batches are each normalized by their token counts, known before the forward pass; one batch by its
    # count after drop-worst, once all micro-batches are summed.
    counted = {p: ((batch[p]['target_tokens'] != V.PAD) & batch[p]['example_mask'][:, None]).sum() for p in parts}
    scale = {p: 1.0 / jnp.maximum(counted[p], 1) for p in parts} if len(parts) > 1 else {'main': 1.0}
    # Micro-batch k takes rows k, k + accum, ...: every device keeps a share of every micro-batch.
    micro = jax.tree_util.tree_map(lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch)

    def part_loss(logits, mb):
        loss, correct = token_losses(
            logits, mb['target_tokens'], mb['constraint_ranges'], config.label_smoothing, mb.get('allowed_tokens')
        )
        tokens = (mb['target_tokens'] != V.PAD) & mb['example_mask'][:, None]
        weighted = jnp.where(tokens, loss * mb['loss_weights'][:, None], 0.0)
        if config.drop_worst_ratio:  # after drop_worst_after updates, as OFA's update_num > drop_worst_after
            kept = drop_worst_tokens(weighted, tokens, config.drop_worst_ratio)
            tokens = jnp.where(state.step > config.drop_worst_after, kept, tokens)
            weighted = jnp.where(tokens, weighted, 0.0)
        per_task = jax.nn.one_hot(mb['task_ids'], num_tasks)  # [B, tasks]
        return (
            weighted,
            tokens,
            {
                'task_loss_sum': per_task.T @ weighted.sum(1),
                'task_tokens': per_task.T @ tokens.sum(1),
                'task_correct': per_task.T @ (correct & tokens).sum(1),
            },
        )

    def micro_step(carry, inputs):
        grads, batch_stats, totals = carry
        index, mb = inputs

        def loss_fn(params):
            stats_now, objective, stats = batch_stats, 0.0, {}
            dropout_rng = jax.random.fold_in(rng, index)
            for part in parts:
                logits, updates = batch_logits(
                    model,
                    {'params': params, 'batch_stats': stats_now},
                    mb[part],
                    train=True,
                    # OFA samples patches in the image-text sub-batch only.
                    sample_patch_num=(config.sample_patch_num or None) if part == 'main' else None,
                    rngs={'dropout': dropout_rng if part == 'main' else jax.random.fold_in(dropout_rng, 1)},
                    mutable=['batch_stats'],
                )
                stats_now = updates['batch_stats']
                weighted, tokens, part_stats = part_loss(logits, mb[part])
                objective += weighted.sum() * scale[part]
                stats[f'loss_sum/{part}'], stats[f'tokens/{part}'] = weighted.sum(), tokens.sum()
                for key, value in part_stats.items():
                    stats[key] = stats.get(key, 0.0) + value
            return objective, (stats_now, stats)

        micro_grads, (batch_stats, stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        grads = jax.tree_util.tree_map(jnp.add, grads, micro_grads)
        totals = jax.tree_util.tree_map(jnp.add, totals, stats)
        return (grads, batch_stats, totals), None

    zeros = {
        **{f'loss_sum/{part}': 0.0 for part in parts},
        **{f'tokens/{part}': 0 for part in parts},
        'task_loss_sum': jnp.zeros(num_tasks),
        'task_tokens': jnp.zeros(num_tasks),
        'task_correct': jnp.zeros(num_tasks),
    }
    init = (jax.tree_util.tree_map(jnp.zeros_like, state.params), state.batch_stats, zeros)
    if accum == 1:  # XLA runs loop bodies slowly on CPU: no loop when there is nothing to accumulate
        (grads, batch_stats, totals), _ = micro_step(init, (0, batch))
    else:
        (grads, batch_stats, totals), _ = jax.lax.scan(micro_step, init, (jnp.arange(accum), micro))
    if len(parts) == 1:
        grads = jax.tree_util.tree_map(lambda g: g / jnp.maximum(totals['tokens/main'], 1), grads)
    loss = sum(totals[f'loss_sum/{part}'] / jnp.maximum(totals[f'tokens/{part}'], 1) for part in parts)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    average = lambda e, p: config.ema_decay * e + (1 - config.ema_decay) * p
    ema, ema_batch_stats = state.ema_params, state.ema_batch_stats
    if ema is not None:
        ema = jax.tree_util.tree_map(average, ema, params)
        ema_batch_stats = jax.tree_util.tree_map(average, ema_batch_stats, batch_stats)
    # A NaN or Inf in the loss or any gradient (the norm carries it) skips the update: the model, its statistics and
    # the optimizer (its schedule's count too, as fairseq does not count a skipped update) stay as they were; the
    # step counts on, so the data moves past the batch.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    batch_stats = keep(batch_stats, state.batch_stats)
    if ema is not None:
        ema, ema_batch_stats = keep(ema, state.ema_params), keep(ema_batch_stats, state.ema_batch_stats)
    metrics = {
        'loss': loss,
        'skipped': ~finite,
        'grad_norm': grad_norm,
        'learning_rate': learning_rate_schedule(config)(state.step),
        'target_tokens': sum(totals[f'tokens/{part}'] for part in parts),
        'task_loss': totals['task_loss_sum'] / jnp.maximum(totals['task_tokens'], 1),
        'task_accuracy': totals['task_correct'] / jnp.maximum(totals['task_tokens'], 1),
    }
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        ema_params=ema,
        ema_batch_stats=ema_batch_stats,
    )
    return new_state, metrics


def initial_state(
    model: OFA, optimizer: optax.GradientTransformation, config: ml_collections.ConfigDict, image_size: int
) -> TrainState:
    variables = init_variables(model.config, jax.random.key(config.seed), image_size)
    params = nn.meta.unbox(variables['params'])
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables['batch_stats'],
        opt_state=optimizer.init(params),
        ema_params=params if config.ema_decay else None,
        ema_batch_stats=variables['batch_stats'] if config.ema_decay else None,
        rng=jax.random.key_data(jax.random.key(config.seed + 1)),
    )


def start_from(
    state: TrainState,
    directory: str,
    optimizer: optax.GradientTransformation,
    shardings: TrainState,
    model_config: OFAConfig,
) -> TrainState:
    """The state with its model replaced by a saved (or converted OFA) model, or a training workdir's (its EMA when
    kept; e.g. WORKDIR/best), for finetuning; its layers restacked when it was saved in another layout."""
    loaded = {name: scan_layout(tree, model_config) for name, tree in load_checkpoint(directory).variables.items()}
    params = jax.device_put(loaded['params'], shardings.params)
    batch_stats = jax.device_put(loaded['batch_stats'], shardings.batch_stats)
    ema = state.ema_params is not None
    return state.replace(
        params=params,
        batch_stats=batch_stats,
        opt_state=jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params),
        # Its own buffers: the step donates the state, and one buffer cannot be donated twice.
        ema_params=jax.tree_util.tree_map(jnp.copy, params) if ema else None,
        ema_batch_stats=jax.tree_util.tree_map(jnp.copy, batch_stats) if ema else None,
    )


def state_shardings(
    model: OFA, optimizer: optax.GradientTransformation, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> TrainState:
    """The sharding of every TrainState leaf: parameters by their logical axes, optimizer moments like their
    parameters, everything else replicated."""
    boxed = abstract_variables(model.config)
    variables = sharding.variable_shardings(boxed, mesh, config.logical_axis_rules)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    # A moment's key path ends with its parameter's (adam's mu['encoder'][...]['kernel']); masked parameters, as a
    # frozen embedding, have none.
    by_path = {tuple(path): shard for path, shard in jax.tree_util.tree_leaves_with_path(variables['params'])}

    def like_parameter(path, _):
        return next((by_path[path[i:]] for i in range(len(path)) if path[i:] in by_path), replicated)

    opt_shapes = jax.eval_shape(optimizer.init, nn.meta.unbox(boxed['params']))
    opt = jax.tree_util.tree_map_with_path(like_parameter, opt_shapes)
    return TrainState(
        step=replicated,
        params=variables['params'],
        batch_stats=variables['batch_stats'],
        opt_state=opt,
        ema_params=variables['params'] if config.ema_decay else None,
        ema_batch_stats=variables['batch_stats'] if config.ema_decay else None,
        rng=replicated,
    )


def validate_layout(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
    """Checks batch, accumulation, mesh and processes fit together; returns the per-process batch size.

    With `device_batch_size` set, grad_accum_steps becomes the number of micro-batches that carry batch_size rows at
    that many rows per batch shard: one config runs on any slice, accumulating where devices are few (and in one
    pass of fewer rows per shard where they are many)."""
    shards, processes = sharding.batch_shards(mesh), jax.process_count()
    per_process = config.batch_size // processes
    if config.device_batch_size:
        rows = min(shards * config.device_batch_size, config.batch_size)
        if config.batch_size % rows:
            raise ValueError(
                f'batch_size {config.batch_size} must be a multiple of device_batch_size {config.device_batch_size} '
                f'x the {shards} batch shards of mesh {dict(mesh.shape)}'
            )
        config.grad_accum_steps = config.batch_size // rows
    problems = []
    if config.batch_size % (shards * config.grad_accum_steps):
        problems.append(
            f'batch_size {config.batch_size} must be a multiple of grad_accum_steps '
            f'{config.grad_accum_steps} x the {shards} batch shards of mesh {dict(mesh.shape)}'
        )
    if config.batch_size % processes:
        problems.append(f'batch_size {config.batch_size} must divide over the {processes} processes')
    if problems:
        raise ValueError('; '.join(problems) + f' ({jax.device_count()} devices)')
    return per_process


def peak_flops_per_device() -> float:
    kind = jax.devices()[0].device_kind
    for prefix, flops in PEAK_FLOPS.items():
        if kind.startswith(prefix):
            return flops
    # CPU or an unknown chip: measure what a large matmul reaches here.
    x = jnp.ones((1024, 1024), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(5):
        matmul(x).block_until_ready()
    return 5 * 2 * 1024**3 / (time.perf_counter() - start)


class MetricWriter:
    """metrics.jsonl and TensorBoard, written by process 0 only.

    A local workdir's files are appended and flushed at every write. An object store (gs://) has no append and shows
    an object only once it is whole, so there both files are rewritten whole, at most every `remote_flush_seconds`
    and at close."""

    def __init__(self, workdir: str | os.PathLike, remote_flush_seconds: float = 60.0):
        self._active = jax.process_index() == 0
        if not self._active:
            return
        workdir = resolved(workdir)
        self._remote = is_remote(workdir)
        self._path = workdir / 'metrics.jsonl'
        if self._remote:
            self._lines = self._path.read_text() if self._path.exists() else ''
            self._flush_seconds, self._flushed = remote_flush_seconds, time.monotonic()
        else:
            self._jsonl = self._path.open('a')
        self._tensorboard = SummaryWriter(str(workdir / 'tb'))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self._active:
            return
        line = json.dumps({'step': step, **metrics}) + '\n'
        for name, value in metrics.items():
            self._tensorboard.add_scalar(name, value, step)
        if not self._remote:
            self._jsonl.write(line)
            self._jsonl.flush()
            self._tensorboard.flush()
            return
        self._lines += line
        if time.monotonic() - self._flushed >= self._flush_seconds:
            self._flush_remote()

    def flush(self) -> None:
        """Stores what was written so far (a local workdir's files always are)."""
        if self._active and self._remote:
            self._flush_remote()

    def _flush_remote(self) -> None:
        self._flushed = time.monotonic()
        try:
            self._path.write_text(self._lines)
            self._tensorboard.flush()
        except Exception as error:  # noqa: BLE001 - a store's hiccup must not end the run: the next flush retries
            logging.warning('metrics could not be written to %s (%s): retried at the next flush', self._path, error)

    def close(self) -> None:
        if not self._active:
            return
        if self._remote:
            self._flush_remote()
        else:
            self._jsonl.close()
        self._tensorboard.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """What MetricWriter wrote to metrics.jsonl, one record per step in step order, the records of a step merged
    (training and validation scores) with the last value of a key logged twice (a resumed run replays the steps
    after its last checkpoint)."""
    by_step = {}
    path = resolved(workdir) / 'metrics.jsonl'
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            by_step.setdefault(int(record['step']), {}).update(record)
    return [by_step[step] for step in sorted(by_step)]


class Preemption:
    """Turns SIGTERM into a flag the loop checks between steps; all processes agree before acting."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self, step: int, every: int) -> bool:
        """Whether to stop after `step`: a single process at once; several every `every` steps, where all of them
        gather their flags (a collective that waits for the step in flight, so not at every step)."""
        if jax.process_count() == 1:
            return self.requested
        if step % every:
            return False
        return bool(multihost_utils.process_allgather(np.array(self.requested)).any())


def steps_for_epochs(config: ml_collections.ConfigDict, tasks: list) -> int:
    """The updates of `config.epochs` passes over the records of the config's one task (OFA's --max-epoch; a
    mixture has no epoch: set total_steps)."""
    if config.total_steps:
        raise ValueError(f'set one of total_steps ({config.total_steps}) and epochs ({config.epochs}), the other to 0')
    if len(tasks) != 1:
        raise ValueError(f'epochs={config.epochs} needs one task; the config mixes {len(tasks)}: set total_steps')
    return max(1, math.ceil(config.epochs * len(tasks[0].source) / config.batch_size))


def validation_interval(config: ml_collections.ConfigDict, tasks: list) -> int:
    """The updates between validations of `validation.every_epochs` passes over the records of the config's one
    task (OFA's --validate-interval, in epochs)."""
    if len(tasks) != 1:
        raise ValueError(
            f'validation.every_epochs={config.validation.every_epochs} needs one task; the config mixes {len(tasks)}: '
            'set validation.every'
        )
    return max(1, round(config.validation.every_epochs * len(tasks[0].source) / config.batch_size))


def batch_spec(config: ml_collections.ConfigDict, rows: int) -> pipeline.BatchSpec:
    """The shapes of a batch of `rows` examples under the config's data section."""
    trie_vocab_size = vocabulary_from_spec(config.data.vocab).size if mixtures.answer_tries_in(config.data) else 0
    return pipeline.BatchSpec(
        rows,
        config.data.image_size,
        config.data.max_source_length,
        config.data.max_target_length,
        trie_vocab_size,
        with_references=config.scst,
        extra_max_source_length=config.data.get('extra_max_source_length', 0),
        extra_max_target_length=config.data.get('extra_max_target_length', 0),
        extra_image_size=config.data.get('extra_image_size', 0),
    )


def check_target_lengths(tasks: list, spec: pipeline.BatchSpec, model_config: Any) -> None:
    """An image-infilling task's codes (the model's code grid) and eos must fit its (sub-)batch's targets: a code
    image is never cut, so every one of its examples would be dropped."""
    codes = (model_config.code_image_size // 8) ** 2
    for task, extra in zip(tasks, pipeline.in_extra_sub_batch(tasks)):
        length = spec.extra_max_target_length if extra else spec.max_target_length
        if task.kind == 'image_infill' and length < codes + 1:
            key = 'data.extra_max_target_length' if extra else 'data.max_target_length'
            raise ValueError(
                f'task {task.name}: {codes} image codes and eos do not fit {key}={length} (code_image_size '
                f'{model_config.code_image_size}): set {key} to at least {codes + 1}'
            )


def check_writable(workdir: str | os.PathLike, probe_bytes: int = 1 << 20) -> None:
    """Creates the workdir and writes (then removes) a probe file of probe_bytes in it, so that an unwritable or full
    workdir fails before training, with one line, rather than at the first checkpoint."""
    probe = resolved(workdir) / f'.write_probe_{jax.process_index()}'
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        with probe.open('wb') as f:
            f.write(bytes(probe_bytes))
            f.flush()
            if not is_remote(probe):  # a local file: on disk now; a remote object is stored whole when closed
                os.fsync(f.fileno())
    except Exception as error:  # noqa: BLE001 - OSError locally; a store's client raises errors of its own
        raise ValueError(f'workdir {workdir} cannot be written: {getattr(error, "strerror", None) or error}') from error
    finally:
        if probe.exists():
            probe.unlink()


def check_same_layout(manager: ocp.CheckpointManager, step: int, config: ml_collections.ConfigDict) -> None:
    """Fails with one line when the checkpoint at `step` was saved by another number of processes or data workers
    than this run has: each process's data iterator position belongs to its split of the stream."""
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
    saved_workers = saved.get('data', {}).get('workers', 0)
    # The data iterators are saved one file a process: process_I-of-N.json.
    names = [path.name for path in (manager.directory / str(step) / 'data').iterdir()]
    counts = {int(m.group(1)) for name in names if (m := re.fullmatch(r'process_\d+-of-(\d+)\.json', name))}
    saved_processes = max(counts, default=jax.process_count())
    if (saved_processes, saved_workers) != (jax.process_count(), config.data.workers):
        raise ValueError(
            f'{manager.directory} step {step} was saved by {saved_processes} process(es) with {saved_workers} data '
            f'worker(s) each; this run has {jax.process_count()} with {config.data.workers}: resume with the same '
            "counts (a data iterator's position belongs to its split of the stream)"
        )


def flops_of(stage: Any) -> float:
    """The FLOPs XLA counts in a lowered or compiled step (0 where the backend gives no cost analysis)."""
    cost = stage.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get('flops', 0.0))


def loops_in_step(config: ml_collections.ConfigDict) -> bool:
    """Whether the train step loops (micro-batches, scanned layers), whose bodies XLA's cost analysis counts once."""
    overrides = config.model_overrides
    return config.grad_accum_steps > 1 or bool(overrides.get('scan_layers') or overrides.get('scan_resnet'))


def model_flops(config: ml_collections.ConfigDict, num_tasks: int, batch: Any) -> float:
    """The model's FLOPs in one train step of `config` over `batch` (arrays or shapes of the global batch), as
    written: the step is lowered, not compiled, with its layers unrolled and its micro-batches in one pass, because
    XLA counts a loop's body once."""
    flat = ml_collections.ConfigDict(config.to_dict())
    flat.grad_accum_steps = 1
    flat.model_overrides.update(scan_layers=False, scan_resnet=False)
    model, optimizer = model_from_config(flat), make_optimizer(flat)
    state = jax.eval_shape(functools.partial(initial_state, model, optimizer, flat, flat.data.image_size))
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    return flops_of(jax.jit(functools.partial(train_step, model, optimizer, flat, num_tasks)).lower(state, shapes))


def train_step_flops(config: ml_collections.ConfigDict) -> float:
    """The FLOPs of one train step of `config` (the model's, over the global batch) for its first batch, as the
    trainer logs them (nothing is compiled or allocated): what a FLOPs budget divides by."""
    tasks, rates = mixtures.register_from_config(config.data)
    batch = next(iter(pipeline.batches(tasks, rates, batch_spec(config, config.batch_size), seed=config.seed)))
    return model_flops(config, len(tasks), {k: v for k, v in batch.items() if k not in pipeline.HOST_KEYS})


BEST_DIR = 'best'  # under a training workdir: the best validated checkpoint, itself readable as a training workdir


def validate(
    config: ml_collections.ConfigDict,
    validation: tuple[ml_collections.ConfigDict, Any],
    workdir: str,
    model: OFA,
    state: TrainState,
    mesh: jax.sharding.Mesh,
) -> dict[str, float]:
    """Scores the state's model (its EMA when kept) on the validation data (evaluate.validation_setup) as
    `ofa_jax.evaluate` does, writing WORKDIR/validation/{predictions.jsonl, step_N.json}.

    In a multi-process run every process answers all of the validation data on its own devices from a full copy of
    the model: each gets the same scores, so all agree on the best checkpoint; process 0 writes the files."""
    if state.ema_params is None:
        variables = {'params': state.params, 'batch_stats': state.batch_stats}
    else:
        variables = {'params': state.ema_params, 'batch_stats': state.ema_batch_stats}
    if jax.process_count() > 1:
        variables = multihost_utils.process_allgather(variables, tiled=True)
        mesh = jax.sharding.Mesh(np.array(jax.local_devices()).reshape(1, -1, 1, 1), sharding.MESH_AXES)
    predictor = api.Predictor(
        model.config,
        variables,
        image_size=config.data.image_size,
        max_source_length=config.data.max_source_length,
        batch_size=config.validation.batch_size or config.batch_size // jax.process_count(),
        vocab=vocabulary_from_spec(config.data.vocab),
        mesh=mesh,
        logical_axis_rules=config.logical_axis_rules,
        prompt_type=mixtures.prompt_types(config.data),
    )
    validation_config, world = validation
    scores, _ = evaluate.evaluate(
        validation_config,
        '',
        resolved(workdir) / 'validation',
        config.validation.max_examples,
        predictor=predictor,
        world=world,
        metrics_file=f'step_{int(state.step)}.json',
        write=jax.process_index() == 0,
    )
    return scores


def best_metric(config: ml_collections.ConfigDict, scores: dict[str, float]) -> str:
    """The validation score that picks the best checkpoint: validation.metric, or the first task's first metric."""
    metrics = [k for k in scores if not k.endswith(('_examples', '_dropped', '_unlabeled'))]
    key = config.validation.metric or (metrics[0] if metrics else '')
    if key not in metrics:
        raise ValueError(f'validation.metric {key!r} is not among the validation scores {metrics}')
    return key


def best_manager(workdir: str, metric: str, mode: str) -> ocp.CheckpointManager:
    """WORKDIR/best: the one checkpoint (model variables and config) of the best `metric` so far, chosen by orbax
    among those saved with their scores; it survives restarts, a resumed run competing with its stored score."""
    if mode not in ('max', 'min'):
        raise ValueError(f"validation.mode is {mode!r}; it must be 'max' or 'min'")
    return ocp.CheckpointManager(
        resolved(workdir) / BEST_DIR / TRAINING_CHECKPOINTS,
        item_names=('state', 'config'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1,
            best_fn=lambda metrics: metrics[metric],
            best_mode=mode,
            keep_checkpoints_without_metrics=False,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        ),
    )


def use_compilation_cache(directory: str) -> None:
    """Keeps this process's compiled programs in `directory` (config.compilation_cache_dir), unless the environment
    already chose one (JAX_COMPILATION_CACHE_DIR) or `directory` is ''."""
    if directory and not jax.config.jax_compilation_cache_dir:
        jax.config.update(
            'jax_compilation_cache_dir', directory if is_remote(directory) else os.path.expanduser(directory)
        )


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains until config.total_steps (or a preemption); returns the final state."""
    use_compilation_cache(config.compilation_cache_dir)
    if config.nonfinite not in ('skip', 'stop'):
        raise ValueError(f"nonfinite is {config.nonfinite!r}; it must be 'skip' or 'stop'")
    check_writable(workdir)
    tasks, rates = mixtures.register_from_config(config.data)
    if config.epochs:
        config.total_steps = steps_for_epochs(config, tasks)
    if config.validation.get('every_epochs'):
        config.validation.every = validation_interval(config, tasks)
    validation = evaluate.validation_setup(config) if config.validation.every else None

    # Mesh, model, optimizer.
    mesh = sharding.make_mesh(**config.mesh)
    per_process_batch = validate_layout(config, mesh)
    if jax.process_index() == 0:
        (resolved(workdir) / 'config.json').write_text(config.to_json_best_effort(indent=2))
    model = model_from_config(config)
    optimizer = make_optimizer(config)

    # Data: this process's shard of the mixture, in batches of batch_size / processes, prepared beside the step.
    pipeline.limit_blas_threads()
    task_names = [t.name for t in tasks]
    spec = batch_spec(config, per_process_batch)
    dataset = pipeline.batches(
        tasks,
        rates,
        spec,
        seed=config.seed,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        workers=config.data.workers,
        strict=config.data.strict,
        granule=config.grad_accum_steps * max(1, sharding.batch_shards(mesh) // jax.process_count()),
    )
    check_target_lengths(tasks, spec, model.config)
    data_iter = iter(dataset)

    # State: restored from the latest checkpoint when there is one, else initialized, directly into its shardings.
    shardings = state_shardings(model, optimizer, config, mesh)
    manager = ocp.CheckpointManager(
        resolved(workdir) / TRAINING_CHECKPOINTS,
        item_names=('state', 'data', 'config'),
        item_handlers={'data': grain.checkpoint.CheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.keep_checkpoints,
            keep_period=config.keep_every_steps or None,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,  # the half-written saves of a killed run
        ),
    )
    abstract_state = jax.eval_shape(functools.partial(initial_state, model, optimizer, config, config.data.image_size))
    if manager.latest_step() is not None:
        check_same_layout(manager, manager.latest_step(), config)
        target = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
        )
        # A run saved before its EMA kept the BatchNorm statistics starts their average from the statistics.
        ema_stats_missing = target.ema_batch_stats is not None and 'ema_batch_stats' not in stored_state_fields(
            manager, manager.latest_step()
        )
        if ema_stats_missing:  # restored as the dict of the fields it has
            target = {
                f.name: getattr(target, f.name) for f in dataclasses.fields(target) if f.name != 'ema_batch_stats'
            }
        restored = restore_fitting(
            manager,
            manager.latest_step(),
            ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(data_iter)
            ),
            config,
        )
        state = restored.state
        if ema_stats_missing:
            state = TrainState(**state, ema_batch_stats=jax.tree_util.tree_map(jnp.copy, state['batch_stats']))
        if jax.process_index() == 0:
            print(f'resumed from step {int(state.step)} of {workdir}')
    else:
        state = jax.jit(
            functools.partial(initial_state, model, optimizer, config, config.data.image_size), out_shardings=shardings
        )()
        if config.init_from:
            state = start_from(state, config.init_from, optimizer, shardings, model.config)

    step_fn = jax.jit(
        functools.partial(train_step, model, optimizer, config, len(tasks)),
        in_shardings=(shardings, sharding.batch_sharding(mesh)),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )

    def device_batch(batch):
        arrays = {k: v for k, v in batch.items() if k not in pipeline.HOST_KEYS}
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), x), arrays
        )

    scorer = None
    if config.scst:
        scst.check_config(config)
        scorer = scst.reward_scorer(tasks, workdir)
    vocab = vocabulary_from_spec(config.data.vocab)
    window_cider = []

    def save(step: int) -> None:
        writer.flush()  # a bucket's metrics are stored at least as often as the checkpoints that resume them
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iter),
                config=ocp.args.JsonSave(config.to_dict()),
            ),
        )

    writer, preemption = MetricWriter(workdir), Preemption()
    start_step = int(state.step)
    flops_per_step, peak = None, peak_flops_per_device()
    # Records dropped and examples cut (by reason) since this run started, in the logs of every log step.
    dropped_total, cut_total = collections.Counter(), collections.Counter()
    window_start, window_steps, window_examples, window_tokens = time.perf_counter(), 0, 0, 0
    progress = tqdm.tqdm(
        total=config.total_steps, initial=start_step, disable=jax.process_index() != 0, dynamic_ncols=True
    )
    # The last step whose skip flag is unread, (step, flag): reading it one step late keeps one step queued and the
    # bar at the real rate.
    pending, skipped_steps, failed = None, 0, None
    best = None  # the manager of WORKDIR/best, made at the first validation (which names its metric)

    def settle() -> int | None:
        """Reads the pending step's flag, counting it; returns that step when its update was skipped."""
        nonlocal pending, skipped_steps
        if pending is None:
            return None
        (number, flag), pending = pending, None
        skipped_steps += bool(flag)
        return number if bool(flag) else None

    with jax.set_mesh(mesh), nn.logical_axis_rules(config.logical_axis_rules):
        for step in range(start_step, config.total_steps):
            host_batch = next(data_iter)
            dropped, cut = host_batch['dropped'], host_batch['cut']
            if scorer:  # the step trains on the model's own captions of the batch's images, rewarded
                variables = {'params': state.params, 'batch_stats': state.batch_stats}
                host_batch, cider = scst.scst_batch(
                    model, variables, device_batch(host_batch), host_batch, vocab, scorer
                )
                window_cider.append(float(cider.mean()))
            batch = device_batch(host_batch)
            if flops_per_step is None:  # compile once, ahead of time
                lowered = step_fn.lower(state, batch)
                # The model's FLOPs, as written, over the whole batch: not what XLA's optimized, partitioned program
                # executes (per device, rematerialized layers counted twice).
                flops_per_step = model_flops(config, len(tasks), batch) if loops_in_step(config) else flops_of(lowered)
                started = time.perf_counter()
                step_fn = lowered.compile()
                logging.info(
                    'train step compiled (or loaded from the compilation cache) in %.1f s',
                    time.perf_counter() - started,
                )
                window_start = time.perf_counter()  # compilation is not throughput
            state, metrics = step_fn(state, batch)
            failed = settle()
            pending = (step + 1, metrics['skipped'])
            if failed and config.nonfinite == 'stop':
                break
            dropped_total.update(dropped)
            cut_total.update(cut)
            window_steps += 1
            window_examples += per_process_batch * jax.process_count()
            parts = [host_batch, *([host_batch['extra']] if 'extra' in host_batch else [])]
            window_tokens += jax.process_count() * sum(
                int(np.sum(part['src_tokens'] != V.PAD) + np.sum(part['target_tokens'] != V.PAD)) for part in parts
            )
            progress.update(1)
            done = step + 1
            if done % config.log_every == 0 or done == config.total_steps:
                metrics = jax.device_get(metrics)
                failed = settle()
                seconds = (time.perf_counter() - window_start) / window_steps
                logged = {
                    'loss': float(metrics['loss']),
                    'learning_rate': float(metrics['learning_rate']),
                    'grad_norm': float(metrics['grad_norm']),
                    'target_tokens': int(metrics['target_tokens']),
                    'step_seconds': seconds,
                    'examples_per_second': window_examples / (seconds * window_steps),
                    'tokens_per_second': window_tokens / (seconds * window_steps),
                    'mfu': flops_per_step / jax.device_count() / seconds / peak if flops_per_step else 0.0,
                    'flops_per_step': flops_per_step,
                    'skipped_steps': skipped_steps,
                }
                if window_cider:  # the mean CIDEr-D of the captions SCST trained on
                    logged['scst_cider'] = float(np.mean(window_cider))
                    window_cider.clear()
                for i, name in enumerate(task_names):
                    logged[f'loss/{name}'] = float(metrics['task_loss'][i])
                    logged[f'accuracy/{name}'] = float(metrics['task_accuracy'][i])
                writer.write(
                    done,
                    logged
                    | {f'dropped/{reason}': count for reason, count in dropped_total.items()}
                    | {'dropped_examples': dropped_total.total()}
                    | {f'cut/{reason}': count for reason, count in cut_total.items()}
                    | {'cut_examples': cut_total.total()},
                )
                progress.set_postfix(loss=f'{logged["loss"]:.3f}')
                if jax.process_index() == 0:
                    progress.write(
                        f'step {done}: loss {logged["loss"]:.4f}, {seconds:.3f} s/step, '
                        f'{logged["examples_per_second"]:.1f} examples/s, {logged["tokens_per_second"]:.0f} tokens/s, '
                        f'MFU {logged["mfu"]:.1%}'
                        + (f', dropped {dropped_total.total()}' if dropped_total else '')
                        + (f', cut {cut_total.total()} too long' if cut_total else '')
                        + (f', skipped {skipped_steps} non-finite steps' if skipped_steps else '')
                        + (f', SCST captions CIDEr-D {logged["scst_cider"]:.3f}' if 'scst_cider' in logged else '')
                    )
                window_start, window_steps, window_examples, window_tokens = time.perf_counter(), 0, 0, 0
                # An asynchronous save that failed (a full disk, a lost bucket) stops the run here, not at the next
                # save, which may be hours of unsaved training away.
                if not manager.is_saving_in_progress():
                    manager.wait_until_finished()  # returns at once, or raises what the last save failed with
                if failed and config.nonfinite == 'stop':
                    break
            if validation and (done % config.validation.every == 0 or done == config.total_steps):
                started = time.perf_counter()
                scores = validate(config, validation, workdir, model, state, mesh)
                metric = best_metric(config, scores)
                best = best or best_manager(workdir, metric, config.validation.mode)
                if done not in best.all_steps():  # a resumed run validates its replayed steps again
                    kept = {'params': state.params, 'batch_stats': state.batch_stats}
                    if state.ema_params is not None:
                        kept.update(ema_params=state.ema_params, ema_batch_stats=state.ema_batch_stats)
                    best.save(
                        done,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardSave(kept), config=ocp.args.JsonSave(config.to_dict())
                        ),
                        metrics={metric: scores[metric]},
                    )
                writer.write(done, {f'validation/{k}': v for k, v in scores.items()})
                if jax.process_index() == 0:
                    progress.write(
                        f'validation at step {done}: '
                        + ', '.join(f'{k} {v:.4f}' for k, v in scores.items() if k == metric or k.endswith('_examples'))
                        + f'; best step {best.best_step()}'
                    )
                window_start += time.perf_counter() - started  # validating is not training throughput
            stop = preemption.agreed(done, config.preemption_check_every)
            if done % config.checkpoint_every == 0 or done == config.total_steps or stop:
                save(done)
            if stop:
                logging.warning('SIGTERM: saved step %d, exiting', done)
                break
        failed = failed or settle()
    manager.wait_until_finished()
    latest = manager.latest_step()
    manager.close()
    if best:
        best.close()
    progress.close()
    writer.close()
    if failed and config.nonfinite == 'stop':
        raise ValueError(
            f'step {failed}: non-finite loss or gradients, its update not applied; stopped (nonfinite=stop) '
            + (f'with the last checkpoint at step {latest} of {workdir}' if latest else 'with no checkpoint saved')
        )
    return state


def main(argv):
    del argv
    maybe_initialize_distributed()
    with fail_together():
        train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
    # Flags are defined here, not at import, so importing the trainer leaves the process's absl flags alone.
    config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
    flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and logs go here.')
    flags.mark_flags_as_required(['config', 'workdir'])
    console.run(main)
