"""The demo's learning curve: every saved step of a demo workdir, evaluated on unseen scenes as the demo evaluates.

    python -m ofa_jax.train --config configs/demo.py --workdir workdir/curve --config.total_steps=6000 \
        --config.checkpoint_every=500 --config.keep_checkpoints=100
    python bench/learning_curve.py --workdir workdir/curve [--examples 256]

Writes curve.json (each step's scores and its training loss) and curve.png (each task's score against the training
step, with the score the demo aims at as a dashed line) to the workdir. Steps already in curve.json are not evaluated
again, so it can be rerun while training goes on.
"""

import argparse
import json
import os
import sys

import matplotlib
import ml_collections
import orbax.checkpoint as ocp

from ofa_jax import demo, evaluate, train
from ofa_jax.checkpoint import TRAINING_CHECKPOINTS

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

# The scores the demo aims at, on 256 unseen scenes.
AIMS = {
    'vqa_accuracy': 0.95,
    'itm_accuracy': 0.95,
    'caption_exact_match': 0.8,
    'grounding_accuracy': 0.8,
    'grounded_caption_exact_match': 0.8,
    'detection_f1': 0.7,
    'text_infill_exact_match': 0.8,
    'image_infill_code_accuracy': 0.6,
}


def plot(curve: dict[str, dict[str, float]], path: str) -> None:
    steps = sorted(curve, key=int)
    figure, axes = plt.subplots(2, 4, figsize=(16, 7), sharex=True)
    for axis, (key, aim) in zip(axes.flat, AIMS.items()):
        axis.plot([int(s) for s in steps], [curve[s].get(key, float('nan')) for s in steps], marker='o')
        axis.axhline(aim, color='grey', linestyle='--', linewidth=1)
        axis.set_title(key)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    for axis in axes[-1]:
        axis.set_xlabel('training step')
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workdir', required=True, help='the training workdir whose saved steps are evaluated')
    parser.add_argument('--examples', type=int, default=256, help='unseen scenes per task')
    args = parser.parse_args(argv)
    with open(os.path.join(args.workdir, 'config.json')) as f:
        config = ml_collections.ConfigDict(json.load(f))  # the config the trainer ran, overrides and all
    out = os.path.join(args.workdir, 'curve.json')
    curve = {}
    if os.path.exists(out):
        with open(out) as f:
            curve = json.load(f)
    manager = ocp.CheckpointManager(os.path.join(args.workdir, TRAINING_CHECKPOINTS))
    losses = {r['step']: r['loss'] for r in train.read_metrics(args.workdir) if 'loss' in r}
    world = demo.unseen_world(config, args.examples)
    for step in sorted(manager.all_steps()):
        if str(step) in curve:
            continue
        scores, _ = evaluate.evaluate(
            config,
            args.workdir,
            os.path.join(args.workdir, 'curve'),
            batch_size=min(args.examples, 64),
            world=world,
            metrics_file=f'metrics_{step}.json',
            step=step,
        )
        curve[str(step)] = {**scores, 'training_loss': losses.get(step, float('nan'))}
        with open(out, 'w') as f:
            json.dump(curve, f, indent=2)
        print(f'step {step}: ' + ', '.join(f'{k} {scores.get(k, float("nan")):.3f}' for k in AIMS), flush=True)
    plot(curve, os.path.join(args.workdir, 'curve.png'))
    print(f'{out}, {os.path.join(args.workdir, "curve.png")}')


if __name__ == '__main__':
    sys.exit(main())
