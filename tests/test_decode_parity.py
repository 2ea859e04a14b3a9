"""generate() against modelscope's SequenceGenerator (OFA's fairseq generator) on the same random weights."""

import numpy as np
import pytest
from reference import OFAConfig, OFAModel, reference_generate, torch

from ofa_jax.convert import from_torch_state_dict
from ofa_jax.data import vocab as V
from ofa_jax.decode import DecodeSettings, generate
from ofa_jax.model import OFA

# Compares with modelscope's PyTorch OFA; one test process builds the module's fixtures once.
pytestmark = [pytest.mark.parity, pytest.mark.xdist_group('decode_parity')]

IMAGE_SIZE = 64


@pytest.fixture(scope='module')
def models():
    config = OFAConfig(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        resnet_type='resnet50',
        dropout=0.0,
    )
    torch.manual_seed(0)
    reference = OFAModel(config)
    with torch.no_grad():
        # N(0, 0.02) weights give near-uniform next-token distributions whose ties make beams fragile; a larger
        # (tied) token embedding sharpens the output projection while layernorm_embedding undoes it at the input.
        reference.encoder.embed_tokens.weight.mul_(20.0)
        for name, tensor in reference.state_dict().items():
            if 'rel_pos_table' in name:
                tensor.normal_(0.0, 0.5)
    reference.eval()
    ours, variables = from_torch_state_dict(reference.state_dict())
    rng = np.random.default_rng(0)
    src = np.ones((3, 9), np.int64)
    for row, length in enumerate((9, 7, 5)):
        src[row, :length] = np.concatenate([[V.BOS], rng.integers(4, 50000, length - 2), [V.EOS]])
    images = rng.uniform(-1, 1, (3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    return reference, OFA(ours), variables, src, images


@pytest.mark.parametrize(
    'settings',
    [
        DecodeSettings(beam_size=1, max_length=16),
        DecodeSettings(beam_size=5, max_length=16, min_length=3, length_penalty=0.6, no_repeat_ngram_size=3),
    ],
    ids=['greedy', 'beam5'],
)
def test_generate_matches_modelscope(models, settings):
    reference, model, variables, src, images = models
    expected_tokens, expected_scores = reference_generate(reference, src, images, settings)
    tokens, scores = generate(model, variables, src.astype(np.int32), images, None, settings)
    tokens = [[[t for t in hypothesis if t != V.PAD] for hypothesis in row] for row in np.asarray(tokens).tolist()]
    assert tokens == expected_tokens
    np.testing.assert_allclose(np.asarray(scores), expected_scores, rtol=1e-4, atol=1e-5)
