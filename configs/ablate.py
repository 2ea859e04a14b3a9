"""Model-size ablation: the same training at several sizes, like for like (ofa_jax.ablate).

`cpu` (the default) trains nano, micro and mini on the synthetic world's 8 tasks as the demo does (64 px, batch 32, the
world's vocabulary, one learning-rate schedule) for the same number of steps, and scores each on unseen scenes as the
demo does; 18 minutes on 2 CPU cores.

    python -m ofa_jax.ablate --config configs/ablate.py --workdir workdir/ablate
    python -m ofa_jax.ablate --config configs/ablate.py --workdir workdir/ablate --sizes nano,mini --budget flops \\
        --config.ablation.flops=2e14

`pod` is OFA's pretraining recipe with what differs between its sizes made one: tiny to huge at 256 px, a global batch
of 2048, bf16, layers recomputed in the backward pass, parameters sharded 16 ways, and the same number of tokens for
every size. Each size is one training job on a slice (`--emit` prints them), then `collect` scores them.

    python -m ofa_jax.ablate --config configs/ablate.py:pod --workdir gs://BUCKET/ablate --emit tpu \\
        --config.data.vision_language_path=gs://BUCKET/vision_language_examples.tsv
    python -m ofa_jax.ablate collect gs://BUCKET/ablate
"""

import importlib.util
import pathlib

import ml_collections

from ofa_jax import ablate

VARIANTS = ('cpu', 'pod')


def sibling_config(name: str, arg: str) -> ml_collections.ConfigDict:
    """configs/NAME.py's config for ARG: the ablation starts from the demo's and pretraining's recipes."""
    spec = importlib.util.spec_from_file_location(f'configs_{name}', pathlib.Path(__file__).with_name(f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(variant: str = 'cpu') -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f'configs/ablate.py:{variant}: the variant must be one of {", ".join(VARIANTS)}')
    ablation = ablate.ablation_section()
    if variant == 'cpu':
        config = sibling_config('demo', 'pretrain')
        config.checkpoint_every = 100
        ablation.steps = 400
        ablation.eval_examples = 128
    else:
        config = sibling_config('pretrain', 'base')
        config.model_overrides = dict(dtype='bfloat16', remat=True)
        config.data.image_size = 256
        config.batch_size, config.device_batch_size = 2048, 0  # no accumulation: not base's v5e:4x4 setting
        config.mesh = dict(replica=1, data=-1, fsdp=16, tensor=1)
        ablation.sizes = 'tiny,medium,base,large,huge'
        ablation.budget, ablation.tokens = 'tokens', 2e10
        ablation.validation_batches = 8
        ablation.eval_examples = 1000
    config.ablation = ablation
    return config
