"""One process of a training run of the shrunk demo config, started by the tests that need training in processes of
its own (several processes as one job, kills and signals).

    python tests/train_worker.py WORKDIR STEPS [--trace=FILE] [KEY=VALUE ...]

Joins the job described by OFA_COORDINATOR / OFA_NUM_PROCESSES / OFA_PROCESS_ID when they are set (else runs alone),
trains to STEPS and exits 0. KEY is a dotted config path (data.world_size=100), VALUE a Python literal or a string.
With --trace, each restore and save appends a line to FILE as it starts ('restore T', 'save N'; T the time) and
each restore another as it ends ('restored T'), so that a test can strike at those moments; the trainer itself is
unchanged.
"""

import ast
import functools
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import orbax.checkpoint as ocp  # noqa: E402
from conftest import small_config  # noqa: E402

from ofa_jax import train  # noqa: E402


def worker_config(steps: int, overrides=()):
    # Every step inside the warmup: the learning rate does not depend on total_steps (see tests/test_multihost.py).
    config = small_config(total_steps=steps, warmup_steps=40)
    for override in overrides:
        key, _, text = override.partition('=')
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *parents, leaf = key.split('.')
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def trace_to(path: str) -> None:
    """Wraps the trainer's restore and the checkpoint manager's save to append their moments to `path`."""

    def mark(line: str) -> None:
        with open(path, 'a') as f:
            f.write(line + '\n')

    restore, save = train.restore_fitting, ocp.CheckpointManager.save

    @functools.wraps(restore)
    def traced_restore(*args, **kwargs):
        mark(f'restore {time.time()}')
        restored = restore(*args, **kwargs)
        mark(f'restored {time.time()}')
        return restored

    @functools.wraps(save)
    def traced_save(self, step, *args, **kwargs):
        mark(f'save {step}')
        return save(self, step, *args, **kwargs)

    train.restore_fitting, ocp.CheckpointManager.save = traced_restore, traced_save


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    workdir, steps, overrides = argv[1], int(argv[2]), argv[3:]
    for option in [o for o in overrides if o.startswith('--trace=')]:
        trace_to(option.removeprefix('--trace='))
        overrides.remove(option)
    train.maybe_initialize_distributed()
    with train.fail_together():
        train.train(worker_config(steps, overrides), workdir)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
