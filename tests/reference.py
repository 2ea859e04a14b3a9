"""Builds modelscope's PyTorch OFA, the reference the parity tests compare against.

modelscope's OFA package imports `fairseq` for its speech model and ViT variant; the ResNet OFA never calls it.
A stand-in finder answers every `fairseq.*` import with placeholders so the real OFA model imports without
building fairseq.
"""
import importlib.abc
import importlib.util
import sys
import types


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
from modelscope.models.multi_modal.ofa.modeling_ofa import OFAModel  # noqa: E402

__all__ = ['torch', 'OFAConfig', 'OFAModel']
