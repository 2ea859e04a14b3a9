"""Builds modelscope's PyTorch OFA, the reference the parity tests compare against: the model, its tokenizer and
its finetuning preprocessors.

modelscope's OFA package imports `fairseq` for its speech model and ViT variant; the ResNet OFA never calls it.
A stand-in finder answers every `fairseq.*` import with placeholders so the real OFA model imports without
building fairseq.
"""

import dataclasses
import importlib
import importlib.abc
import importlib.util
import json
import os
import pathlib
import shutil
import sys
import types

import numpy as np
from PIL import Image


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
    'write_tokenizer_files',
    'ofa_preprocessor',
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


def write_tokenizer_files(directory: pathlib.Path, bpe_dir: pathlib.Path) -> None:
    """Writes what modelscope's OFATokenizer (a BartTokenizer) reads, from OFA's BPE files in `bpe_dir`: vocab.json
    mapping each BPE piece to its fairseq dictionary id (dict.txt line k -> id k+4, specials 0-3, <mask> last) and
    merges.txt (OFA's vocab.bpe)."""
    with open(bpe_dir / 'encoder.json', encoding='utf-8') as f:
        piece_of = {i: piece for piece, i in json.load(f).items()}
    vocab = {'<s>': 0, '<pad>': 1, '</s>': 2, '<unk>': 3}
    with open(bpe_dir / 'dict.txt', encoding='utf-8') as f:
        for k, line in enumerate(f):
            symbol = line.split(' ')[0]
            vocab[piece_of[int(symbol)] if symbol.isdigit() else symbol] = k + 4
    vocab['<mask>'] = len(vocab)
    (directory / 'vocab.json').write_text(json.dumps(vocab), encoding='utf-8')
    shutil.copy(bpe_dir / 'vocab.bpe', directory / 'merges.txt')


def _install_torchvision_stand_in() -> None:
    """modelscope's OFA preprocessors resize, convert and normalize images with torchvision, whose registry wheels do
    not load against the CPU torch wheel. These few functions do what the preprocessors call them for (the patch
    pixels are not what the parity tests compare; the box arithmetic around the resize is modelscope's own)."""
    if 'torchvision' in sys.modules:
        return
    functional = types.ModuleType('torchvision.transforms.functional')
    functional.resize = lambda image, size, interpolation=Image.BICUBIC: image.resize((size[1], size[0]), interpolation)
    functional.to_tensor = lambda image: torch.from_numpy(np.asarray(image, np.float32).transpose(2, 0, 1) / 255)
    functional.normalize = lambda tensor, mean, std: (
        (tensor - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    )
    transforms = types.ModuleType('torchvision.transforms')
    transforms.functional = functional
    transforms.InterpolationMode = types.SimpleNamespace(BICUBIC=Image.BICUBIC)

    def compose(steps):
        def apply(image):
            for step in steps:
                image = step(image)
            return image

        return apply

    transforms.Compose = compose
    transforms.Resize = lambda size, interpolation: lambda image: functional.resize(image, size, interpolation)
    transforms.ToTensor = lambda: functional.to_tensor
    transforms.Normalize = lambda mean, std: lambda tensor: functional.normalize(tensor, mean, std)
    torchvision = types.ModuleType('torchvision')
    torchvision.transforms = transforms
    sys.modules.update(
        {
            'torchvision': torchvision,
            'torchvision.transforms': transforms,
            'torchvision.transforms.functional': functional,
        }
    )


def _import_preprocessor_module(name: str) -> types.ModuleType:
    """modelscope.preprocessors.ofa.`name`, imported without the package's __init__ (which imports the speech
    preprocessor's librosa and torchaudio) and with stand-ins for modules the finetuning path never calls: the
    audio feature helpers and modelscope's image loader (cv2; the tests pass PIL images)."""
    package = 'modelscope.preprocessors.ofa'
    if package not in sys.modules:
        spec = importlib.util.find_spec('modelscope')
        module = types.ModuleType(package)
        module.__path__ = [os.path.join(spec.submodule_search_locations[0], 'preprocessors', 'ofa')]
        sys.modules[package] = module
        audio = types.ModuleType(f'{package}.utils.audio_helper')
        audio._get_kaldi_fbank = audio._get_torchaudio_fbank = audio.convert_waveform = None
        images = types.ModuleType('modelscope.preprocessors.image')
        images.load_image = None
        sys.modules.update(
            {'torchaudio': types.ModuleType('torchaudio'), audio.__name__: audio, images.__name__: images}
        )
        _install_torchvision_stand_in()
    return importlib.import_module(f'{package}.{name}')


class _FairseqDictionary(dict):
    """The VQA and SNLI-VE preprocessors' constraint masks call `self.tgt_dict.bos()`, fairseq's Dictionary method,
    on the plain {id: token} dict modelscope builds: the same dict with that method."""

    def bos(self) -> int:
        return 0


def ofa_preprocessor(module: str, cls: str, task: str, model: dict, column_map: dict, model_dir: pathlib.Path):
    """modelscope's OFA finetuning preprocessor `cls` of modelscope.preprocessors.ofa.`module` in training mode, for
    modelscope task `task`, with `model` the config's model section (prompt_type, answer2label, ...) and the
    tokenizer files in `model_dir` (write_tokenizer_files)."""
    from modelscope.utils.config import Config
    from modelscope.utils.constant import ModeKeys

    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    preprocessor_class = getattr(_import_preprocessor_module(module), cls)
    config = Config({'task': task, 'model': model, 'dataset': {'column_map': column_map}})
    preprocessor = preprocessor_class(config, str(model_dir), mode=ModeKeys.TRAIN)
    preprocessor.tgt_dict = _FairseqDictionary(preprocessor.tgt_dict)
    return preprocessor
