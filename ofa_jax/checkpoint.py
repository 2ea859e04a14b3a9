"""Model checkpoints on disk, and reading a model for inference from either of the two layouts that hold one.

A model directory (`save_model`, also what `python -m ofa_jax.convert` writes) is an orbax tree of variables plus the
model's config as JSON. A training workdir holds the trainer's checkpoints (`checkpoints/STEP/{state,data,config}`);
`load_checkpoint` reads only the model's variables out of its latest one (an orbax partial restore: the optimizer
state and the data iterator are never read), so inference does not depend on how the trainer or its optimizer is built.
"""

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from ofa_jax.data.vocab import vocabulary_from_spec
from ofa_jax.model import OFA, OFAConfig, abstract_variables, model_config, pad_token_table
from ofa_jax.paths import resolved

CONFIG_FILE = 'config.json'
VARIABLES_DIR = 'variables'
TRAINING_CHECKPOINTS = 'checkpoints'  # under a training workdir


def save_model(directory: str | os.PathLike, config: Any, variables: dict[str, Any]) -> None:
    """Writes `variables` ({'params', 'batch_stats'}, unboxed) and `config` (an OFAConfig or any config with
    `to_dict`) under `directory` (local or remote)."""
    directory = resolved(directory)
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / VARIABLES_DIR, variables, force=True)
    checkpointer.wait_until_finished()
    (directory / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))


def load_model(directory: str | os.PathLike, config_type: type = OFAConfig) -> tuple[Any, dict[str, Any]]:
    """Reads what `save_model` wrote: (config, variables); `config_type` (with `from_dict`) reads the config."""
    directory = resolved(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        raise ValueError(f'{directory} is not a model checkpoint: {CONFIG_FILE} is missing')
    config = config_type.from_dict(json.loads(config_path.read_text()))
    variables = ocp.StandardCheckpointer().restore(directory / VARIABLES_DIR)
    if isinstance(config, OFAConfig):  # written before the token table was padded
        variables = {**variables, 'params': pad_token_table(variables['params'], config)}
    return config, variables


def model_from_config(config: ml_collections.ConfigDict) -> OFA:
    """The model a training config describes: the `config.model` preset with `config.model_overrides`, its
    embedding and output layer as wide as the config's vocabulary (`data.vocab`)."""
    vocab_size = vocabulary_from_spec(config.data.vocab).size
    overrides = dict(config.model_overrides)
    if overrides.setdefault('vocab_size', vocab_size) != vocab_size:
        raise ValueError(
            f'model_overrides.vocab_size is {overrides["vocab_size"]}, but the vocabulary {config.data.vocab!r} has '
            f'{vocab_size} ids: leave vocab_size out, the vocabulary sets it'
        )
    return OFA(model_config(config.model, **overrides))


def restore_fitting(manager: ocp.CheckpointManager, step: int, args: Any, config: ml_collections.ConfigDict) -> Any:
    """manager.restore(step, args=args), with one clear error when the saved arrays do not fit the model `config`
    describes: a workdir written when its vocabulary (data.vocab) had another size, or by another preset."""
    try:
        return manager.restore(step, args=args)
    except ValueError as error:
        if 'not compatible with the stored shape' not in str(error):
            raise
        raise ValueError(
            f'{manager.directory} step {step} does not fit the model its config describes ({config.model}, '
            f'vocabulary {config.data.vocab!r} of {vocabulary_from_spec(config.data.vocab).size} ids): '
            f'{str(error).split(". ")[0]} (written when they had other sizes: train in a new workdir; a workdir '
            'written before the token table was padded to 128-row multiples can start one with --config.init_from)'
        ) from None


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint holds for inference. `train_config` (with `step`) only when it came from a training workdir:
    it says how the model was trained (image size, source length, vocabulary)."""

    config: OFAConfig
    variables: dict[str, Any]  # {'params', 'batch_stats'}, unboxed; the EMA parameters when the run kept them
    train_config: ml_collections.ConfigDict | None = None
    step: int | None = None


def is_training_workdir(path: str | os.PathLike) -> bool:
    return (resolved(path) / TRAINING_CHECKPOINTS).is_dir()


def stored_state_fields(manager: ocp.CheckpointManager, step: int) -> set[str]:
    """The top-level fields of the training state saved at `step` (params, batch_stats, ema_params, ...), read from
    its metadata whichever handlers the manager was given."""
    stored = ocp.PyTreeCheckpointHandler().metadata(manager.directory / str(step) / 'state')
    return set(getattr(stored, 'tree', stored))


def load_checkpoint(path: str | os.PathLike, step: int | None = None) -> Checkpoint:
    """Reads a model directory written by `save_model` (or `python -m ofa_jax.convert`), or a training workdir (its
    latest step, or `step`, with the EMA parameters when the run kept them), onto the first device."""
    path = resolved(path)
    if (path / CONFIG_FILE).exists() and (path / VARIABLES_DIR).is_dir():
        config, variables = load_model(path)
        return Checkpoint(config, variables)
    if not is_training_workdir(path):
        raise ValueError(
            f"checkpoint '{path}' is neither a model directory ({CONFIG_FILE} + {VARIABLES_DIR}/) nor "
            f'a training workdir ({TRAINING_CHECKPOINTS}/)'
        )
    manager = ocp.CheckpointManager(
        path / TRAINING_CHECKPOINTS,
        item_names=('state', 'data', 'config'),
        # The state's handler so that the stored shapes can be read; the input position's so that orbax, meeting it
        # in the step, knows it (it is not read here).
        item_handlers={'state': ocp.PyTreeCheckpointHandler(), 'data': grain.checkpoint.CheckpointHandler()},
    )
    saved = sorted(manager.all_steps())
    if not saved:
        raise ValueError(f"checkpoint '{path}': the training workdir has no saved step yet")
    step = saved[-1] if step is None else step
    if step not in saved:
        raise ValueError(f"checkpoint '{path}' has no step {step}; its saved steps are {saved}")
    train_config = ml_collections.ConfigDict(
        manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
    )
    model = model_from_config(train_config)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
        nn.meta.unbox(abstract_variables(model.config)),
    )
    wanted = {'params': abstract['params'], 'batch_stats': abstract['batch_stats']}
    stored = manager.item_metadata(step)['state']
    stored = getattr(stored, 'tree', stored)
    stored_rows = stored['params']['embed_tokens']['embedding'].shape[0]
    if stored_rows == model.config.vocab_size:  # written before the token table was padded: read it so, pad after
        table = abstract['params']['embed_tokens']['embedding']
        table = jax.ShapeDtypeStruct((stored_rows, table.shape[1]), table.dtype, sharding=device)
        abstract['params'] = {**abstract['params'], 'embed_tokens': {'embedding': table}}
        wanted['params'] = abstract['params']
    if train_config.ema_decay:
        wanted['ema_params'] = abstract['params']
        if 'ema_batch_stats' in stored:  # absent from runs saved before it was kept
            wanted['ema_batch_stats'] = abstract['batch_stats']
    # Only the model's leaves of the saved TrainState are read; their placement comes from the target, so restoring
    # needs no knowledge of the training mesh.
    try:
        restored = restore_fitting(
            manager,
            step,
            ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted), partial_restore=True
                )
            ),
            train_config,
        ).state
    finally:
        manager.close()
    params = pad_token_table(restored.get('ema_params', restored['params']), model.config)
    batch_stats = restored.get('ema_batch_stats', restored['batch_stats'])
    return Checkpoint(model.config, {'params': params, 'batch_stats': batch_stats}, train_config, step)
