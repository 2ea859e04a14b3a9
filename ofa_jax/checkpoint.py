"""Model checkpoints on disk: an orbax tree of variables plus the model's config as JSON.

A converted OFA checkpoint and a model saved for inference share this layout, so the trainer, the decoder and the
converter all start from the same thing.
"""
import json
import os
from typing import Any

import orbax.checkpoint as ocp

from ofa_jax.model import OFAConfig

CONFIG_FILE = 'config.json'
VARIABLES_DIR = 'variables'


def save_model(directory: str | os.PathLike, config: Any, variables: dict[str, Any]) -> None:
    """Writes `variables` ({'params', 'batch_stats'}, unboxed) and `config` (an OFAConfig or any config with
    `to_dict`) under `directory`."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, VARIABLES_DIR), variables, force=True)
    checkpointer.wait_until_finished()
    with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
        json.dump(config.to_dict(), f, indent=2)


def load_model(directory: str | os.PathLike, config_type: type = OFAConfig) -> tuple[Any, dict[str, Any]]:
    """Reads what `save_model` wrote: (config, variables); `config_type` (with `from_dict`) reads the config."""
    directory = os.path.abspath(directory)
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise ValueError(f'{directory} is not a model checkpoint: {CONFIG_FILE} is missing')
    with open(config_path) as f:
        config = config_type.from_dict(json.load(f))
    variables = ocp.StandardCheckpointer().restore(os.path.join(directory, VARIABLES_DIR))
    return config, variables
