"""Model-size ablations: the same training, like for like, at several sizes, then one table and two plots.

    python -m ofa_jax.ablate --config configs/ablate.py --workdir DIR [--sizes nano,micro,mini] \
        [--budget steps|tokens|flops] [--config.KEY=VALUE ...]
    python -m ofa_jax.ablate --config configs/ablate.py:pod --workdir gs://... --emit slurm|tpu|local
    python -m ofa_jax.ablate collect DIR [--sizes tiny,base] [--config configs/ablate.py:pod]

Each size trains in DIR/SIZE with the trainer's usual outputs (checkpoints, metrics.jsonl, TensorBoard) from one
config that differs between sizes in `model` alone: the same data order, global batch, learning-rate schedule and
evaluation. The budget (`ablation.budget`) fixes what every size spends: `steps`, `tokens` (source and target tokens,
padding excluded; every size sees the same batches, so this sets one step count) or `flops` (XLA's count of one train
step of that size, so a smaller model takes more steps). Sizes run one after another; a finished size (DIR/SIZE/
result.json) is skipped and an interrupted one resumes from its checkpoint. `--emit` prints one training job per size
for a launcher instead, and `collect` then scores what those jobs trained (by the config each saved, or by --config)
and writes the results.

Results: DIR/results.csv, results.md and results.json (one row per size: parameters, FLOPs per step, steps, tokens
seen, training seconds, final training loss, validation loss on unseen data, each task's metric), DIR/curves.png (the
training loss against step and against FLOPs) and DIR/scaling.png (final losses and task metrics against parameters,
log-log, each with its fitted power law).
"""

import csv
import io
import json
import math
import os
import shlex
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
from absl import flags
from etils import epath
from ml_collections import config_flags

from ofa_jax import console, demo, evaluate, train
from ofa_jax.checkpoint import TRAINING_CHECKPOINTS, is_training_workdir, load_checkpoint, model_from_config
from ofa_jax.data import mixtures, pipeline
from ofa_jax.data import vocab as V
from ofa_jax.model import OFA, count_params
from ofa_jax.paths import resolved, write_atomically

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

BUDGETS = ('steps', 'tokens', 'flops')
RESULT_FILE = 'result.json'
VALIDATION_ROWS = 32  # examples per model call of the validation loss
LAUNCHERS = {
    'local': 'python -m ofa_jax.train --config {config} --workdir {workdir}',
    'slurm': 'sbatch --nodes=1 --ntasks-per-node=8 --gpus-per-node=8 launch/slurm.sh {config} {workdir}',
    'tpu': 'bash launch/tpu_pod.sh "$TPU_NAME" "$ZONE" {config} {workdir}',
}


def ablation_section(**values: Any) -> ml_collections.ConfigDict:
    """An ablation config's `ablation` section: its defaults, updated with `values`."""
    section = ml_collections.ConfigDict()
    section.sizes = 'nano,micro,mini'  # comma-separated presets of ofa_jax.model.PRESETS
    section.budget = 'steps'  # steps | tokens | flops: what every size spends
    section.steps, section.tokens, section.flops = 0, 0.0, 0.0  # the amount of the chosen budget
    section.validation_batches = 4  # batches of unseen data for the validation loss
    section.eval_examples = 256  # unseen examples per task for the task metrics
    section.update(values)
    return section


def saved_config(directory: str) -> ml_collections.ConfigDict:
    """The config a size's job trained with (its config.json), with the default ablation section where the job's
    config had none: what `collect` scores it by when no config is given."""
    values = json.loads((resolved(directory) / 'config.json').read_text())
    values.setdefault('ablation', ablation_section().to_dict())
    return ml_collections.ConfigDict(values)


def size_config(config: ml_collections.ConfigDict, size: str, total_steps: int) -> ml_collections.ConfigDict:
    """The training config of one size: the ablation's config with `model` and `total_steps` set. Its `ablation`
    section, which the trainer ignores, is saved with the run, so `collect` can score it as the sweep would."""
    sized = ml_collections.ConfigDict(config.to_dict())
    sized.model, sized.total_steps, sized.epochs = size, total_steps, 0.0
    return sized


def tokens_per_step(config: ml_collections.ConfigDict, batches: int = 8) -> float:
    """Mean non-padding source and target tokens of a global batch, over the config's first `batches` batches (the
    same for every size: the data order does not depend on the model)."""
    tasks, rates = mixtures.register_from_config(config.data)
    spec = train.batch_spec(config, config.batch_size)
    counts = []
    for _, batch in zip(range(batches), pipeline.batches(tasks, rates, spec, seed=config.seed)):
        counts.append(int(np.sum(batch['src_tokens'] != V.PAD) + np.sum(batch['target_tokens'] != V.PAD)))
    return float(np.mean(counts))


def steps_of_budget(config: ml_collections.ConfigDict, size: str) -> int:
    """The train steps that `config.ablation`'s budget gives `size`."""
    ablation = config.ablation
    if ablation.budget not in BUDGETS:
        raise ValueError(f'ablation.budget is {ablation.budget!r}; it must be one of {", ".join(BUDGETS)}')
    amount = ablation[ablation.budget]
    if amount <= 0:
        raise ValueError(f'ablation.budget is {ablation.budget!r}, so ablation.{ablation.budget} must be positive')
    if ablation.budget == 'steps':
        return int(amount)
    if ablation.budget == 'tokens':
        return max(1, math.ceil(amount / tokens_per_step(size_config(config, size, 1))))
    return max(1, math.ceil(amount / train.train_step_flops(size_config(config, size, 1))))


def validation_loss(config: ml_collections.ConfigDict, workdir: str, batches: int) -> float:
    """The training loss of the workdir's latest model (evaluation mode: no dropout, running BatchNorm statistics)
    over `batches` global batches of unseen data: the world of another seed; for other sources, the config's own
    data in another order (point its data at a held-out split to make it unseen)."""
    world = demo.unseen_world(config, config.batch_size * batches) if config.data.source == 'world' else None
    tasks, rates = mixtures.register_from_config(config.data, world)
    rows = min(config.batch_size, VALIDATION_ROWS)  # one device scores it: a pod's global batch would not fit
    spec = train.batch_spec(config, rows)
    batches = batches * config.batch_size // rows
    checkpoint = load_checkpoint(workdir)
    model = OFA(checkpoint.config)

    @jax.jit
    def loss_sums(batch):
        logits = train.batch_logits(model, checkpoint.variables, batch)
        loss, _ = train.token_losses(logits, batch['target_tokens'], batch['constraint_ranges'], config.label_smoothing)
        tokens = (batch['target_tokens'] != V.PAD) & batch['example_mask'][:, None]
        return jnp.where(tokens, loss * batch['loss_weights'][:, None], 0.0).sum(), tokens.sum()

    total, count = 0.0, 0
    stream = pipeline.batches(tasks, rates, spec, seed=config.seed + 1)
    for _, batch in zip(range(batches), stream):
        loss, tokens = loss_sums({k: v for k, v in batch.items() if k not in pipeline.HOST_KEYS})
        total, count = total + float(loss), count + int(tokens)
    return total / max(count, 1)


def task_scores(config: ml_collections.ConfigDict, workdir: str, examples: int) -> dict[str, float]:
    """Each task's metrics on unseen data, as the demo (a world config) or evaluate scores them; counts left out."""
    if config.data.source == 'world':
        scores = demo.run(config, workdir, examples, draw=False)
    else:
        scores, _ = evaluate.evaluate(config, workdir, resolved(workdir) / 'evaluation', examples)
    return {k: v for k, v in scores.items() if not k.endswith(('_examples', '_dropped'))}


def result_of(config: ml_collections.ConfigDict, size: str, workdir: str) -> dict[str, Any]:
    """One size's row: what its training logged, then its validation loss and task scores (computed here)."""
    log = [r for r in train.read_metrics(workdir) if 'loss' in r]
    if not log:
        raise ValueError(f'{workdir}: no training step was logged (metrics.jsonl)')
    last = log[-1]
    tokens = float(np.mean([r['tokens_per_second'] * r['step_seconds'] for r in log]))
    sized = size_config(config, size, last['step'])
    return {
        'size': size,
        'parameters': count_params(model_from_config(sized).config),
        'flops_per_step': last.get('flops_per_step', 0.0),
        'steps': last['step'],
        'tokens_seen': round(tokens * last['step']),
        'train_seconds': sum(r['step_seconds'] * (r['step'] - p['step']) for p, r in zip([{'step': 0}] + log, log)),
        'train_loss': last['loss'],
        'validation_loss': validation_loss(sized, workdir, config.ablation.validation_batches),
        **task_scores(sized, workdir, config.ablation.eval_examples),
    }


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> None:
    """result.json whole or absent: a size is finished only once its row is complete."""
    write_atomically(path, json.dumps(result, indent=2).encode())


def run_size(config: ml_collections.ConfigDict, size: str, workdir: str) -> dict[str, Any] | None:
    """Trains (or resumes) one size to its budget, then scores it; result.json marks it finished. None when the
    training stopped early (SIGTERM: it saved, and a re-run resumes it)."""
    path = resolved(workdir) / RESULT_FILE
    if path.exists():
        return json.loads(path.read_text())
    steps = steps_of_budget(config, size)
    print(f'ablation: {size}, {steps} steps, in {workdir}')
    if int(train.train(size_config(config, size, steps), workdir).step) < steps:
        return None
    result = result_of(config, size, workdir)
    write_result(path, result)
    return result


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float] | None:
    """(a, b) of y = a * x**b fitted in log-log space over the positive points; None with fewer than two."""
    points = [(a, b) for a, b in zip(x, y) if a > 0 and b > 0]
    if len(points) < 2 or len({a for a, _ in points}) < 2:
        return None
    exponent, log_a = np.polyfit(np.log([a for a, _ in points]), np.log([b for _, b in points]), 1)
    return float(np.exp(log_a)), float(exponent)


def write_results(workdir: str, results: list[dict[str, Any]], logs: dict[str, list[dict]]) -> dict[str, Any]:
    """results.csv, results.md, results.json, curves.png and scaling.png; returns the fitted exponents."""
    workdir = resolved(workdir)
    columns = list(dict.fromkeys(k for r in results for k in r))
    table = io.StringIO(newline='')
    writer = csv.DictWriter(table, columns)
    writer.writeheader()
    writer.writerows(results)
    (workdir / 'results.csv').write_text(table.getvalue())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f'{value:.4g}'
        return f'{value:,}' if isinstance(value, int) else str(value)

    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(cell(r.get(c, '')) for c in columns) + ' |' for r in results]
    (workdir / 'results.md').write_text('\n'.join(lines) + '\n')

    figure, (by_step, by_flops) = plt.subplots(1, 2, figsize=(11, 4))
    for size, log in logs.items():
        steps = np.array([r['step'] for r in log if 'loss' in r])
        losses = [r['loss'] for r in log if 'loss' in r]
        flops = next((r.get('flops_per_step', 0.0) for r in log if r.get('flops_per_step')), 0.0)
        by_step.plot(steps, losses, label=size)
        if flops:
            by_flops.plot(steps * flops, losses, label=size)
    for axes, label in ((by_step, 'step'), (by_flops, 'FLOPs (XLA count of the train step)')):
        axes.set(xlabel=label, ylabel='training loss', yscale='log')
        if axes.lines:
            axes.legend()
    by_flops.set_xscale('log')
    figure.tight_layout()
    save_figure(figure, workdir / 'curves.png')

    metrics = [
        c for c in columns if c not in FIXED_COLUMNS and all(isinstance(r.get(c), (int, float)) for r in results)
    ]
    params = [r['parameters'] for r in results]
    exponents = {}
    cols = min(len(metrics), 4)
    figure, axes = plt.subplots(
        math.ceil(len(metrics) / cols), cols, figsize=(3.6 * cols, 3.2 * math.ceil(len(metrics) / cols)), squeeze=False
    )
    for axis, metric in zip(axes.ravel(), metrics):
        values = [r[metric] for r in results]
        axis.plot(params, values, 'o')
        fit = fit_power_law(params, values)
        if fit:
            a, b = fit
            exponents[metric] = b
            grid = np.geomspace(min(params), max(params), 50)
            axis.plot(grid, a * grid**b, '--', label=f'∝ N^{b:.3f}')
            axis.legend(fontsize=8)
        axis.set(xscale='log', yscale='log' if any(v > 0 for v in values) else 'linear', xlabel='parameters')
        axis.set_title(metric, fontsize=9)
        axis.set_xticks(params, [f'{p / 1e6:.3g}M' for p in params])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        positive = sorted({v for v in values if v > 0})
        if positive:  # a few percent of range on a log axis has no decade tick: label the extremes instead
            ends = [positive[0], positive[-1]] if len(positive) > 1 else positive
            axis.set_yticks(ends, [f'{v:.3g}' for v in ends])
            axis.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for axis in axes.ravel()[len(metrics) :]:
        axis.set_visible(False)
    figure.tight_layout()
    save_figure(figure, workdir / 'scaling.png')

    (workdir / 'results.json').write_text(json.dumps({'results': results, 'power_law_exponents': exponents}, indent=2))
    return exponents


def save_figure(figure: plt.Figure, path: epath.Path) -> None:
    """`figure` as a PNG at `path`, local or remote, then closed."""
    image = io.BytesIO()
    figure.savefig(image, format='png', dpi=100)
    plt.close(figure)
    path.write_bytes(image.getvalue())


FIXED_COLUMNS = ('size', 'parameters', 'flops_per_step', 'steps', 'tokens_seen', 'train_seconds')


def sizes_of(config: ml_collections.ConfigDict, sizes: str) -> list[str]:
    names = [s for s in (sizes or config.ablation.sizes).split(',') if s]
    if not names:
        raise ValueError('no sizes to ablate: set --sizes or ablation.sizes')
    for name in names:
        model_from_config(size_config(config, name, 1))  # an unknown size fails here, before any training
    return names


def report(workdir: str, results: list[dict[str, Any]]) -> None:
    root = resolved(workdir)
    logs = {r['size']: train.read_metrics(root / r['size']) for r in results}
    exponents = write_results(workdir, results, logs)
    print((root / 'results.md').read_text())
    for metric, exponent in exponents.items():
        print(f'{metric} ∝ parameters^{exponent:.3f}')
    print(f'results, curves.png and scaling.png in {workdir}')


def run(config: ml_collections.ConfigDict, workdir: str, sizes: str = '') -> list[dict[str, Any]]:
    """Trains and scores every size in turn, then writes the results."""
    root = resolved(workdir)
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for size in sizes_of(config, sizes):
        result = run_size(config, size, str(root / size))
        if result is None:
            print(f'ablation: {size} stopped before its budget; run the same command again to resume')
            return results
        results.append(result)
    report(workdir, results)
    return results


def collect(workdir: str, config: ml_collections.ConfigDict | None = None, sizes: str = '') -> list[dict[str, Any]]:
    """Scores the sizes that jobs trained in workdir (by `config`, else by the config each job saved) and writes the
    results. sizes: comma-separated, else every size directory there."""
    root = resolved(workdir)
    if sizes:
        names = sizes.split(',')
    else:
        names = sorted(d.name for d in root.iterdir() if d.is_dir())
    results = []
    for size in names:
        directory = str(root / size)
        path = root / size / RESULT_FILE
        if not path.exists() and not is_training_workdir(directory):
            print(f'ablation: {size} has no {TRAINING_CHECKPOINTS}/ in {directory}; left out')
            continue
        if not path.exists():
            saved = saved_config(directory)
            logged = [r['step'] for r in train.read_metrics(directory)]
            planned = saved.total_steps
            if not logged or logged[-1] < planned:
                print(f'ablation: {size} is at step {logged[-1] if logged else 0} of {planned}; left out')
                continue
            write_result(path, result_of(config or saved, size, directory))
        results.append(json.loads(path.read_text()))
    if not results:
        raise ValueError(f'nothing to collect in {workdir}: no size directory holds a training run')
    results.sort(key=lambda r: r['parameters'])
    report(workdir, results)
    return results


def emit(
    config: ml_collections.ConfigDict,
    config_arg: str,
    overrides: Sequence[str],
    workdir: str,
    launcher: str,
    sizes: str = '',
) -> list[str]:
    """One training command per size, through `launcher` (local, slurm or tpu)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f'--emit is {launcher!r}; it must be one of {", ".join(LAUNCHERS)}')
    commands = []
    for size in sizes_of(config, sizes):
        command = LAUNCHERS[launcher].format(
            config=shlex.quote(config_arg), workdir=shlex.quote(os.path.join(workdir, size))
        )
        steps = steps_of_budget(config, size)
        extra = [f'--config.model={size}', f'--config.total_steps={steps}', '--config.epochs=0', *overrides]
        commands.append(command + ''.join(f' {shlex.quote(a)}' for a in extra))
    return commands


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1 and argv[1] == 'collect':
        if len(argv) > 3 or (len(argv) == 2 and not flags.FLAGS.workdir):
            raise ValueError('usage: python -m ofa_jax.ablate collect DIR (or collect --workdir DIR)')
        collect(argv[2] if len(argv) == 3 else flags.FLAGS.workdir, flags.FLAGS.config, flags.FLAGS.sizes)
        return
    if len(argv) > 1:
        raise ValueError(f'unexpected arguments {list(argv[1:])}; the one command word is collect')
    config, workdir, sizes = flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.sizes
    if config is None or not workdir:
        raise ValueError('--config and --workdir are required (or: python -m ofa_jax.ablate collect DIR)')
    config.unlock()
    if flags.FLAGS.budget:
        config.ablation.budget = flags.FLAGS.budget
    if flags.FLAGS.emit:
        given = flags.FLAGS['config'].override_values  # the command line's --config.KEY=VALUE, passed on
        overrides = [f'--config.{k}={v}' for k, v in given.items() if k not in ('model', 'total_steps', 'epochs')]
        config_arg = flags.FLAGS['config'].config_filename
        for command in emit(config, config_arg, overrides, workdir, flags.FLAGS.emit, sizes):
            print(command)
    else:
        run(config, workdir, sizes)


if __name__ == '__main__':
    config_flags.DEFINE_config_file('config', None, 'The ablation config (configs/ablate.py).', lock_config=True)
    flags.DEFINE_string('workdir', None, 'Each size trains in WORKDIR/SIZE; the results go here.')
    flags.DEFINE_string('sizes', '', 'Comma-separated model sizes (default: ablation.sizes of the config).')
    flags.DEFINE_enum('budget', None, BUDGETS, 'What every size spends (default: ablation.budget of the config).')
    flags.DEFINE_enum('emit', None, tuple(LAUNCHERS), 'Print one training job per size for this launcher instead.')
    console.run(main)
