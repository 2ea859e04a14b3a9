"""One process of a (possibly multi-process) training run of the shrunk demo config, for tests/test_multihost.py.

    python tests/multihost_worker.py WORKDIR STEPS [KEY=VALUE ...]

Joins the job described by OFA_COORDINATOR / OFA_NUM_PROCESSES / OFA_PROCESS_ID when they are set (else runs alone),
trains to STEPS and exits 0. KEY is a dotted config path (data.world_size=100), VALUE a Python literal or a string.
"""

import ast
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

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


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    workdir, steps = argv[1], int(argv[2])
    train.maybe_initialize_distributed()
    train.train(worker_config(steps, argv[3:]), workdir)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
