"""Fits the OFA model to the embedded example, a synthetic picture and its caption, then captions it greedily.

A quick end-to-end check of the model on any machine: images and text in, gradients, BatchNorm statistics, a saved
checkpoint, decoding. Run with `bash launch/local.sh`; configs/demo.py holds the settings.
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from flax import linen as nn
from ml_collections import config_flags

from ofa_jax.checkpoint import save_model
from ofa_jax.model import OFA, init_variables, model_config

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/demo.py', 'Demo settings.')
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/demo', 'Where the trained model is saved.')

BOS, EOS = 0, 2
# OFA's token ids (GPT-2 BPE in fairseq's dictionary order) of the caption task's instruction and of the caption.
INSTRUCTION = ' what does the image describe?'
INSTRUCTION_IDS = [99, 473, 5, 2274, 6190, 116]
CAPTION = ' a red square above a blue circle'
CAPTION_IDS = [10, 1275, 3925, 1065, 10, 2440, 7922]


def example_image(size: int) -> np.ndarray:
    """A red square above a blue disc on grey: float32 [size, size, 3] in [-1, 1]."""
    y, x = np.mgrid[:size, :size] / size
    image = np.full((size, size, 3), 0.5, np.float32)
    image[(abs(x - 0.5) < 0.15) & (abs(y - 0.25) < 0.15)] = (1.0, 0.1, 0.1)
    image[(x - 0.5) ** 2 + (y - 0.72) ** 2 < 0.15 ** 2] = (0.1, 0.2, 1.0)
    return image * 2 - 1


def main(_):
    logging.set_verbosity(logging.WARNING)  # keep the checkpointer's progress lines out of the demo's output
    config = _CONFIG.value
    model = OFA(model_config(config.model))
    variables = init_variables(model.config, jax.random.key(config.seed), config.image_size)
    params, batch_stats = nn.meta.unbox(variables['params']), variables['batch_stats']
    print(f'OFA-{config.model}: {sum(p.size for p in jax.tree_util.tree_leaves(params)):,} parameters')

    src = jnp.array([[BOS] + INSTRUCTION_IDS + [EOS]])
    images = jnp.asarray(example_image(config.image_size))[None]
    masks = jnp.array([True])
    prev_output = jnp.array([[BOS] + CAPTION_IDS])
    target = jnp.array([CAPTION_IDS + [EOS]])
    optimizer = optax.adamw(config.learning_rate)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, batch_stats, opt_state, rng):
        def loss_fn(params):
            logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, src, images, masks,
                                          prev_output, train=True, rngs={'dropout': rng}, mutable=['batch_stats'])
            return optax.softmax_cross_entropy_with_integer_labels(logits, target).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        changes, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, changes), updates['batch_stats'], opt_state, loss

    start = time.time()
    rng = jax.random.key(config.seed + 1)
    for step in range(1, config.steps + 1):
        params, batch_stats, opt_state, loss = train_step(params, batch_stats, opt_state,
                                                          jax.random.fold_in(rng, step))
        if step % config.log_every == 0 or step == 1:
            print(f'step {step:4d}  loss {float(loss):.4f}  ({time.time() - start:.1f}s)')

    variables = {'params': params, 'batch_stats': batch_stats}
    save_model(os.path.join(_WORKDIR.value, 'model'), model.config, variables)
    score = jax.jit(model.apply)
    decoded = [BOS]
    while len(decoded) <= len(CAPTION_IDS) + 1 and decoded[-1] != EOS or len(decoded) == 1:
        logits = score(variables, src, images, masks, jnp.array([decoded]))
        decoded.append(int(jnp.argmax(logits[0, -1])))
    print(f'instruction:{INSTRUCTION}\nexpected   : {[*CAPTION_IDS, EOS]}  ({CAPTION.strip()!r})\n'
          f'decoded    : {decoded[1:]}  {"(match)" if decoded[1:] == [*CAPTION_IDS, EOS] else "(differs)"}')
    print(f'model saved to {os.path.join(_WORKDIR.value, "model")}')


if __name__ == '__main__':
    app.run(main)
