"""Builds modelscope's PyTorch OFA, the reference the parity tests compare against.

modelscope's OFA package imports `fairseq` for its speech model and ViT variant; the ResNet OFA never calls it.
A stand-in finder answers every `fairseq.*` import with placeholders so the real OFA model imports without
building fairseq.
"""

import dataclasses
import importlib.abc
import importlib.util
import sys
import types

import numpy as np


class _Placeholder:
    def __init__(self, *args, **kwargs):
        pass


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, attr: str):
        if attr.startswith('__'):
            raise AttributeError(attr)
        return type(attr, (_Placeholder,), {})


class _FairseqStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == 'fairseq' or name.startswith('fairseq.'):
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _PlaceholderModule(spec.name)

    def exec_module(self, module):
        pass


def _install_fairseq_stand_in() -> None:
    if not any(isinstance(f, _FairseqStandIn) for f in sys.meta_path):
        sys.meta_path.insert(0, _FairseqStandIn())


_install_fairseq_stand_in()

import torch  # noqa: E402
from modelscope.models.multi_modal.ofa.configuration_ofa import OFAConfig  # noqa: E402
from modelscope.models.multi_modal.ofa.generate.sequence_generator import SequenceGenerator  # noqa: E402
from modelscope.models.multi_modal.ofa.modeling_ofa import OFAModel  # noqa: E402

__all__ = [
    'torch',
    'OFAConfig',
    'OFAModel',
    'SequenceGenerator',
    'IdsOnlyTokenizer',
    'reference_generate',
    'tiny_reference',
]


@dataclasses.dataclass
class IdsOnlyTokenizer:
    """What SequenceGenerator reads from a tokenizer: the special ids (OFA's 0-3) and the vocabulary size."""

    size: int
    bos_token_id: int = 0
    pad_token_id: int = 1
    eos_token_id: int = 2
    unk_token_id: int = 3

    def get_vocab(self) -> dict[str, int]:
        return {f'<{i}>': i for i in range(self.size)}

    def get_added_vocab(self) -> dict[str, int]:
        return {}


def tiny_reference(**overrides) -> OFAModel:
    """OFA-Tiny (ResNet-50 trunk, 256 wide, 4+4 layers) with random weights, in eval mode; overrides go to
    OFAConfig."""
    torch.manual_seed(0)
    return OFAModel(
        OFAConfig(
            **{
                **dict(
                    d_model=256,
                    encoder_layers=4,
                    decoder_layers=4,
                    encoder_attention_heads=4,
                    decoder_attention_heads=4,
                    encoder_ffn_dim=1024,
                    decoder_ffn_dim=1024,
                    resnet_type='resnet50',
                ),
                **overrides,
            }
        )
    ).eval()


def reference_generate(model: OFAModel, src: np.ndarray, images: np.ndarray, settings) -> tuple[list, np.ndarray]:
    """modelscope's SequenceGenerator with ofa_jax DecodeSettings `settings` (beam search, no sampling).

    src [b, s] int64, images [b, h, w, 3] float32. Returns (per row, per hypothesis, the token ids with eos),
    scores [b, beam]. fairseq's max_len_b counts tokens before eos, so it is max_length - 1."""
    generator = SequenceGenerator(
        IdsOnlyTokenizer(model.config.vocab_size),
        beam_size=settings.beam_size,
        max_len_b=settings.max_length - 1,
        min_len=settings.min_length,
        len_penalty=settings.length_penalty,
        no_repeat_ngram_size=settings.no_repeat_ngram_size,
    )
    sample = {
        'net_input': {
            'input_ids': torch.from_numpy(src),
            'patch_images': torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
            'patch_masks': torch.ones(len(src), dtype=torch.bool),
        }
    }
    with torch.no_grad():
        hypotheses = generator.generate([model], sample)
    return (
        [[h['tokens'].tolist() for h in row] for row in hypotheses],
        np.array([[float(h['score']) for h in row] for row in hypotheses]),
    )
