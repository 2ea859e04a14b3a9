"""taming-transformers' GumbelVQ in PyTorch, as a reference for ofa_jax.vqgan.

taming's `GumbelVQ` class needs torchvision and an old pytorch-lightning, so this module assembles the same modules
(taming's Encoder, Decoder and GumbelQuantize plus the two 1x1 convs) under GumbelVQ's state-dict names.
"""

import dataclasses

import numpy as np
import torch
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import GumbelQuantize

from ofa_jax.vqgan import VQGANConfig


class ReferenceGumbelVQ(torch.nn.Module):
    def __init__(self, config: VQGANConfig):
        super().__init__()
        ddconfig = {k: v for k, v in dataclasses.asdict(config).items() if k not in ('embed_dim', 'n_embed')}
        ddconfig.update(double_z=False, dropout=0.0)
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = GumbelQuantize(config.z_channels, config.embed_dim, n_embed=config.n_embed)
        self.quant_conv = torch.nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.eval()

    @torch.no_grad()
    def logits(self, images: np.ndarray) -> np.ndarray:
        """float NHWC [-1, 1] -> logits NHWC [b, h, w, n_embed]."""
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        return self.quantize.proj(self.quant_conv(self.encoder(x))).permute(0, 2, 3, 1).numpy()

    @torch.no_grad()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int codes [b, h, w] -> float NHWC images, as GumbelVQ.decode_code computes them."""
        z = self.quantize.embed(torch.from_numpy(codes.astype(np.int64))).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(z)).permute(0, 2, 3, 1).numpy()


def random_reference(config: VQGANConfig, seed: int = 0) -> ReferenceGumbelVQ:
    """A reference with random weights; norms and biases are randomized too so that the conversion of each shows."""
    torch.manual_seed(seed)
    model = ReferenceGumbelVQ(config)
    with torch.no_grad():
        for name, value in model.named_parameters():
            if value.ndim == 1:  # GroupNorm scales around 1, biases around 0
                value.copy_(torch.randn_like(value) * 0.1 + float(name.endswith('weight')))
    return model


def save_lightning_checkpoint(model: ReferenceGumbelVQ, path: str) -> None:
    """Saves as Lightning's `last.ckpt` does: weights under 'state_dict', beside a discriminator's `loss.*` weights."""
    state = dict(model.state_dict())
    state['loss.discriminator.main.0.weight'] = torch.zeros(4, 3, 4, 4)
    torch.save({'epoch': 3, 'global_step': 1000, 'state_dict': state, 'optimizer_states': []}, path)


def write_model_yaml(config: VQGANConfig, path: str) -> None:
    """taming's model.yaml for `config`."""
    import yaml

    ddconfig = {k: v for k, v in dataclasses.asdict(config).items() if k not in ('embed_dim', 'n_embed')}
    ddconfig = {k: list(v) if isinstance(v, tuple) else v for k, v in ddconfig.items()}
    document = {
        'model': {
            'base_learning_rate': 4.5e-06,
            'target': 'taming.models.vqgan.GumbelVQ',
            'params': {
                'kl_weight': 1e-08,
                'embed_dim': config.embed_dim,
                'n_embed': config.n_embed,
                'monitor': 'val/rec_loss',
                'ddconfig': {**ddconfig, 'double_z': False, 'dropout': 0.0},
                'lossconfig': {'target': 'taming.modules.losses.vqperceptual.DummyLoss'},
            },
        }
    }
    with open(path, 'w') as f:
        yaml.safe_dump(document, f)
