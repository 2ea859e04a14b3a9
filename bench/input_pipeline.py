"""Examples per second of the pretraining mixture on the synthetic world at 384 px, per process and per worker.

    .venv/bin/python bench/input_pipeline.py [--image_size 384] [--batches 20] [--workers 0 1 2]

Prints one JSON line per worker count. Compare with what a train step consumes: global batch / step time.
"""

import argparse
import json
import time

from ofa_jax.data import mixtures, pipeline
from ofa_jax.train_config import data_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--image_size', type=int, default=384)
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    args = parser.parse_args()
    data = data_config('world')
    data.update(dict(world_size=10000, world_seed=0, mixture='world_pretrain', image_size=args.image_size))
    task_list, rates = mixtures.register_from_config(data)
    spec = pipeline.BatchSpec(args.batch_size, args.image_size, data.max_source_length, data.max_target_length)
    for workers in args.workers:
        iterator = iter(pipeline.batches(task_list, rates, spec, seed=0, workers=workers))
        next(iterator)  # worker start-up is not throughput
        start = time.perf_counter()
        for _ in range(args.batches):
            next(iterator)
        rate = args.batches * args.batch_size / (time.perf_counter() - start)
        print(
            json.dumps(
                {
                    'benchmark': 'input pipeline',
                    'image_size': args.image_size,
                    'workers': workers,
                    'examples_per_second': round(rate, 1),
                    'examples_per_second_per_worker': round(rate / max(workers, 1), 1),
                }
            )
        )


if __name__ == '__main__':
    main()
