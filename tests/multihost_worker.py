"""One process of a (possibly multi-process) training run of the shrunk demo config, for tests/test_multihost.py.

    python tests/multihost_worker.py WORKDIR STEPS [KEY=VALUE ...]

Joins the job described by OFA_COORDINATOR / OFA_NUM_PROCESSES / OFA_PROCESS_ID when they are set (else runs alone),
trains to STEPS and exits 0. KEY is a dotted config path (data.world_size=100), VALUE a Python literal or a string.
"""
import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'configs'))

import demo as demo_config  # noqa: E402

from ofa_jax import train  # noqa: E402


def worker_config(steps: int, overrides=()):
    config = demo_config.get_config()
    # No dropout and frozen batch norm: nothing depends on how the global batch is split over processes.
    config.model_overrides = dict(dropout=0.0, code_image_size=16, freeze_batch_norm=True)
    config.data.update(dict(image_size=32, world_size=200, max_source_length=24, max_target_length=16))
    config.update(dict(batch_size=8, total_steps=steps, log_every=1, checkpoint_every=2, demo_evaluation=False))
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


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    workdir, steps = argv[1], int(argv[2])
    train.maybe_initialize_distributed()
    train.train(worker_config(steps, argv[3:]), workdir)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
