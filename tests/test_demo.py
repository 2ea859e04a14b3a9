"""The README's first command: the demo fits the embedded example, saves the model and decodes the caption."""
import pathlib
import subprocess
import sys

from ofa_jax import demo
from ofa_jax.checkpoint import load_model

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_example_image_draws_both_shapes():
    image = demo.example_image(64)
    assert image.shape == (64, 64, 3) and image.min() >= -1 and image.max() <= 1
    red = (image[..., 0] > 0.9) & (image[..., 2] < -0.5)
    blue = (image[..., 2] > 0.9) & (image[..., 0] < -0.5)
    assert red[:32].sum() > 100 and red[32:].sum() == 0
    assert blue[32:].sum() > 100 and blue[:32].sum() == 0


def test_demo_learns_the_caption(tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'ofa_jax.demo', '--config', 'configs/demo.py', f'--workdir={tmp_path}'],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    losses = [float(line.split()[3]) for line in result.stdout.splitlines() if line.startswith('step')]
    assert losses[-1] < losses[0] / 5
    assert '(match)' in result.stdout
    config, _ = load_model(tmp_path / 'model')
    assert config.d_model == 64
