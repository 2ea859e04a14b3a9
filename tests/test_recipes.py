"""OFA's finetuning recipes: what ofa-jax builds from a raw record equals what OFA's own procedure builds, each OFA
procedure written out below from the lines of OFA-Sys/OFA it cites."""

import importlib.util
import pathlib
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, small_config

from ofa_jax import sharding, train
from ofa_jax.checkpoint import model_from_config
from ofa_jax.data import mixtures
from ofa_jax.data import vocab as V
from ofa_jax.data.registry import Task
from ofa_jax.data.tasks import resize_transform
from ofa_jax.data.vocab import default_vocabulary

VOCAB = default_vocabulary()
IMAGE = np.full((24, 32, 3), 128, np.uint8)


def preprocess(kind: str, record: dict) -> dict:
    example = dict(record)
    for step in mixtures.finetune_preprocessors(kind, VOCAB, resize_transform(32)):
        example = step(example, np.random.default_rng(0))
    return example


def ofa_caption_target(caption: str, max_tgt_length: int = 20) -> str:
    # data/mm_data/caption_dataset.py:128-131 (training, not SCST): transtab deletes string.punctuation; :138 encodes
    # ' {}'.format(tgt_caption). run_scripts/caption/train_caption_stage1*.sh: --max-tgt-length=20.
    transtab = str.maketrans({key: None for key in string.punctuation})
    caption = caption.translate(transtab).strip()
    return ' '.join(caption.strip().split()[:max_tgt_length])


@pytest.mark.parametrize(
    'caption',
    [
        "A man's T-shirt, on the beach.",
        '  Two dogs   playing (outside) in the snow!  ',
        'A very long caption that goes on and on with many words about a kitchen, a stove, a sink, a fridge and a cat.',
        'DOGS & cats: 3.5 of them',
    ],
)
def test_the_caption_target_is_ofas(caption):
    example = preprocess('caption', {'image': IMAGE, 'caption': caption})
    assert example['target_ids'] == VOCAB.encode(' ' + ofa_caption_target(caption))
    assert example['source_ids'] == VOCAB.encode(' what does the image describe?')  # caption_dataset.py:117


def modelscope_criterion():
    """modelscope's port of OFA's criterion module, loaded on its own (it imports torch and transformers only)."""
    spec = importlib.util.find_spec('modelscope')
    path = pathlib.Path(spec.submodule_search_locations[0]) / 'trainers/multi_modal/ofa/ofa_trainer_utils.py'
    module_spec = importlib.util.spec_from_file_location('ofa_trainer_utils', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('drop_worst_ratio', [0.0, 0.2, 0.5])
@pytest.mark.parametrize('constrained', [False, True])
def test_the_loss_is_ofas_criterion(drop_worst_ratio, constrained):
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(0)
    batch, length, width, eps = 4, 7, 40, 0.1
    logits = rng.normal(size=(batch, length, width)).astype(np.float32) * 3
    targets = rng.integers(4, width, size=(batch, length))
    targets[np.arange(batch), rng.integers(2, length, size=batch)] = V.EOS
    targets[:, -2:] = V.PAD  # padding the loss skips
    start, end = (10, 30) if constrained else (0, width)
    if constrained:
        targets = np.where(targets >= 4, rng.integers(start, end, size=targets.shape), targets)
    ranges = np.tile([start, end], (batch, 1))

    loss, _ = train.token_losses(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(ranges), eps)
    tokens = jnp.asarray(targets != V.PAD)
    if drop_worst_ratio:
        tokens = train.drop_worst_tokens(loss, tokens, drop_worst_ratio)
    ours = float(jnp.where(tokens, loss, 0.0).sum() / tokens.sum())

    # OFA's: logits outside [start, end) but for the 4 special ids at -inf (constraint_start/end), log-softmax,
    # padding removed, then the label-smoothed loss over the kept tokens (update_num 1 > drop_worst_after 0).
    masked = torch.tensor(logits)
    if constrained:
        masked[:, :, 4:start] = -float('inf')
        masked[:, :, end:] = -float('inf')
    lprobs = torch.log_softmax(masked, dim=-1).view(-1, width)
    target = torch.tensor(targets).view(-1)
    lprobs, target = lprobs[target != V.PAD], target[target != V.PAD]
    want, _, _ = modelscope_criterion().label_smoothed_nll_loss(
        lprobs,
        target,
        eps,
        1,
        drop_worst_ratio=drop_worst_ratio,
        drop_worst_after=0,
        constraint_start=start if constrained else None,
        constraint_end=end if constrained else None,
    )
    assert ours == pytest.approx(float(want), rel=1e-5)


def test_a_frozen_token_embedding_is_neither_updated_nor_clipped():
    config = small_config(freeze_token_embedding=True, clip_norm=1.0, learning_rate=0.1, warmup_steps=0)
    params = {'embed_tokens': {'embedding': jnp.ones((6, 2))}, 'layer': {'kernel': jnp.ones((2, 2))}}
    grads = {'embed_tokens': {'embedding': jnp.full((6, 2), 100.0)}, 'layer': {'kernel': jnp.full((2, 2), 0.1)}}
    optimizer = train.make_optimizer(config)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    assert not np.any(np.asarray(updates['embed_tokens']['embedding']))  # no step, no weight decay
    # The rest steps as if the embedding were not there: its huge gradient does not shrink the clipped norm.
    config.freeze_token_embedding = False
    alone = train.make_optimizer(config)
    want, _ = alone.update(
        {'layer': grads['layer']}, alone.init({'layer': params['layer']}), {'layer': params['layer']}
    )
    np.testing.assert_allclose(updates['layer']['kernel'], want['layer']['kernel'], rtol=1e-6)


def test_a_frozen_token_embedding_has_sharded_optimizer_state():
    """The moments' shardings follow the parameters' logical axes, the frozen embedding having none."""
    config = small_config(freeze_token_embedding=True)
    model, optimizer = model_from_config(config), train.make_optimizer(config)
    mesh = sharding.make_mesh(**config.mesh)
    shardings = train.state_shardings(model, optimizer, config, mesh)
    state = jax.eval_shape(lambda: train.initial_state(model, optimizer, config, config.data.image_size))
    assert jax.tree_util.tree_structure(shardings.opt_state) == jax.tree_util.tree_structure(state.opt_state)


def test_epochs_count_the_tasks_records():
    config = small_config(epochs=2.5, total_steps=0, batch_size=4)
    task = Task('ten', list(range(10)), [])
    assert train.steps_for_epochs(config, [task]) == 7  # ceil(2.5 * 10 / 4)
    with pytest.raises(ValueError, match='needs one task; the config mixes 2'):
        train.steps_for_epochs(config, [task, task])
    config.total_steps = 100
    with pytest.raises(ValueError, match='set one of total_steps'):
        train.steps_for_epochs(config, [task])


@pytest.mark.parametrize(
    'arg, batch, epochs, steps, lr, drop_path',
    [  # OFA's scripts: global batch = --batch-size x --update-freq x GPUs
        ('caption', 128, 5, 0, 1e-5, 0.1),  # caption/train_caption_stage1_base.sh:23-30,40,51: 8 x 4 x 4
        ('caption,large', 128, 2, 0, 1e-5, 0.1),  # caption/train_caption_stage1.sh:40
        ('vqa', 512, 15, 0, 5e-5, 0.1),  # vqa/train_vqa_base_distributed.sh:11-13,40-44,70-74: 4 x 4 x 8 x 4
        ('vqa,large', 512, 0, 40_000, 5e-5, 0.2),  # vqa/train_vqa_distributed.sh:43-44,70-74
        ('grounding', 128, 10, 0, 5e-5, 0.1),  # refcoco/train_refcoco_base.sh:26-30,38-40: 4 x 8 x 4
        ('grounding,large', 128, 10, 0, 3e-5, 0.2),  # refcoco/train_refcoco.sh:29-30,38-40
        ('snli_ve', 256, 5, 0, 5e-5, 0.1),  # snli_ve/train_snli_ve_base.sh:26-30,39-41: 4 x 8 x 8
        ('snli_ve,large', 256, 6, 0, 2e-5, 0.2),  # snli_ve/train_snli_ve.sh:29-30,39-41
    ],
)
def test_the_finetuning_recipes_are_ofas_scripts(arg, batch, epochs, steps, lr, drop_path):
    config = load_config('finetune', arg)
    assert (config.batch_size, config.epochs, config.total_steps, config.learning_rate) == (batch, epochs, steps, lr)
    overrides = config.model_overrides
    assert overrides['encoder_drop_path_rate'] == overrides['decoder_drop_path_rate'] == drop_path
    kind = arg.split(',')[0]
    assert config.freeze_token_embedding == (kind in ('caption', 'vqa'))  # --freeze-{en,de}coder-embedding
    assert (config.drop_worst_ratio, config.drop_worst_after) == {
        'caption': (0.2, 6000),
        'caption,large': (0.2, 2500),
    }.get(arg, (0.0, 0))
    warmup = (config.warmup_ratio, config.warmup_steps)
    assert warmup == {'vqa': (0.04, 0), 'vqa,large': (0.0, 1000)}.get(arg, (0.06, 0))
