"""OFA pretraining with OFA's recipe, for one size: tiny, medium, base, large or huge.

Recipe (OFA): AdamW lr 1e-4 with 1% warmup and linear decay, clip 5.0, no label smoothing, drop-path 0.1 in the
encoder and decoder, 196 sampled image patches, source 80 / target 30 tokens, bf16 compute. Data: OFA's pretraining
TSV files; only the vision-language file is required. The text, image and detection samples (a fifth of each batch,
as OFA's 4 of every 20) form a sub-batch of their own with sources of 288 and targets of 257 tokens (a text's last
256 tokens, all 256 codes of an image, the whole objects that fit) and 256-pixel images, whose mean loss is added
to the image-text one with weight 2, as OFA's criterion adds its two sample lists.

    python -m ofa_jax.train --config configs/pretrain.py:base --workdir gs://BUCKET/ofa_base \\
        --config.data.vision_language_path=vision_language_examples.tsv \\
        --config.data.text_path=pure_text_examples.tsv \\
        --config.data.image_path=pure_image_examples.tsv \\
        --config.data.detection_path=detection_examples.tsv \\
        --config.data.negatives_dir=negative_sample    # OFA's object.txt, all_captions.txt, type2ans.json
    bash launch/tpu_pod.sh TPU_NAME ZONE configs/pretrain.py:large gs://BUCKET/ofa_large --config.data...
"""

import ml_collections

from ofa_jax.train_config import default_config

# Global batch, image side (OFA-Huge starts at 256 px), how far parameters are sharded (fsdp; data takes the rest of
# the devices), the TPU slice each size is planned for in BUILD.md's fit table and the rows each chip takes in one pass
# there (gradients accumulate to the global batch; on other hardware set --config.device_batch_size). The larger sizes
# recompute layers in the backward pass to fit activations. Every size scans its transformer layers and ResNet
# blocks, so a pod compiles each kind once (on a CPU, where a scanned ResNet's backward is slow, train with
# --config.model_overrides.scan_resnet=False).
SIZES = {
    'tiny': dict(batch_size=1024, image_size=384, fsdp=1, remat=False, slice='v5e:2x2', device_batch_size=16),
    'medium': dict(batch_size=1024, image_size=384, fsdp=1, remat=False, slice='v5e:2x2', device_batch_size=8),
    'base': dict(batch_size=2048, image_size=384, fsdp=1, remat=False, slice='v5e:4x4', device_batch_size=8),
    'large': dict(batch_size=2048, image_size=384, fsdp=8, remat=True, slice='v5e:4x4', device_batch_size=16),
    'huge': dict(batch_size=2048, image_size=256, fsdp=16, remat=True, slice='v5e:4x4', device_batch_size=16),
}


def get_config(size: str = 'base') -> ml_collections.ConfigDict:
    if size not in SIZES:
        raise ValueError(f'configs/pretrain.py:{size}: the size must be one of {", ".join(SIZES)}')
    settings = SIZES[size]
    config = default_config('ofa_pretrain')
    config.model = size
    config.model_overrides = dict(
        dtype='bfloat16',
        # run_scripts/pretraining/pretrain_ofa_{base,large}.sh: --encoder/decoder-drop-path-rate=0.1
        encoder_drop_path_rate=0.1,
        decoder_drop_path_rate=0.1,
        remat=settings['remat'],
        remat_policy='nothing_saveable',  # or dots_saveable: less recompute, more memory (BUILD.md)
        scan_layers=True,
        scan_resnet=True,
    )
    config.data.update(image_size=settings['image_size'], max_source_length=80, max_target_length=30, workers=8)

    config.batch_size = settings['batch_size']
    config.device_batch_size = settings['device_batch_size']
    config.total_steps = 200_000
    config.learning_rate = 1e-4
    config.warmup_steps, config.warmup_ratio = 0, 0.01
    config.clip_norm = 5.0
    config.label_smoothing = 0.0
    config.sample_patch_num = 196
    config.mesh = dict(replica=1, data=-1, fsdp=settings['fsdp'], tensor=1)

    config.log_every = 100
    config.checkpoint_every = 2000
    config.keep_every_steps = 20_000
    return config
