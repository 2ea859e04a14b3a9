"""Greedy decoding by recomputing the decoder over the growing prefix (static shapes, one compile per length bound).

The simplest correct decoder, used for quick evaluations; it honours the same token-range constraints as training.
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp

from ofa_jax.data import vocab as V
from ofa_jax.model import OFA


def greedy(model: OFA, variables: Any, src_tokens: jax.Array, patch_images: Optional[jax.Array],
           patch_masks: Optional[jax.Array], max_length: int, constraint_ranges: Optional[jax.Array] = None,
           code_masks: Optional[jax.Array] = None) -> jax.Array:
    """Token ids [batch, max_length] after bos; rows are padded after their eos.

    constraint_ranges [batch, 2]: each row may only produce ids in [lo, hi) (and eos)."""
    batch = src_tokens.shape[0]
    encoder_out = model.apply(variables, src_tokens, patch_images, patch_masks, method=OFA.encode)
    tokens = jnp.full((batch, max_length + 1), V.PAD, jnp.int32).at[:, 0].set(V.BOS)
    ids = jnp.arange(model.config.vocab_size)

    def step(i, state):
        tokens, done = state
        logits = model.apply(variables, encoder_out, tokens[:, :-1], code_masks, method=OFA.decode)[:, i]
        allowed = ids[None] != V.PAD
        if constraint_ranges is not None:
            allowed &= (ids[None] >= constraint_ranges[:, :1]) & (ids[None] < constraint_ranges[:, 1:])
            allowed |= ids[None] == V.EOS
        choice = jnp.argmax(jnp.where(allowed, logits, -jnp.inf), axis=-1)
        choice = jnp.where(done, V.PAD, choice)
        return tokens.at[:, i + 1].set(choice), done | (choice == V.EOS)

    tokens, _ = jax.lax.fori_loop(0, max_length, step, (tokens, jnp.zeros((batch,), bool)))
    return tokens[:, 1:]
