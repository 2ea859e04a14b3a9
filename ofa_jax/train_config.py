"""The config schema: every key the trainer, the evaluator and the data layer read, with its default and meaning.
Every file in configs/ starts from `default_config(source)` and overrides; configs are locked, so a misspelt
`--config.KEY=VALUE` is an error rather than a silently ignored setting.

Kept apart from ofa_jax.train so config files can import it while `python -m ofa_jax.train` runs.
"""

import ml_collections

from ofa_jax import sharding

DATA_SOURCES = ('world', 'ofa_pretrain', 'tasks')


def data_config(source: str) -> ml_collections.ConfigDict:
    """The `data` section for one source: the keys every source has, then the source's own."""
    if source not in DATA_SOURCES:
        raise ValueError(f'data source {source!r}: expected one of {DATA_SOURCES}')
    data = ml_collections.ConfigDict()
    data.source = source
    # 'ofa' (OFA's bundled BPE), 'world' (the synthetic world's, bundled), 'bpe:DIR' (encoder.json, vocab.bpe,
    # dict.txt) or 'spm:MODEL' (SentencePiece); it sets the model's vocab_size, and is saved with every checkpoint's
    # config, so inference uses the vocabulary the model was trained with.
    data.vocab = 'ofa'
    data.image_size = 384  # the square side images are resized to for the model
    data.max_source_length = 80  # instruction tokens, bos and eos included
    data.max_target_length = 30  # target tokens, eos included
    data.workers = 0  # preprocessing processes (0: in the training process)
    data.strict = False  # True: a bad record stops the run, naming it; False: it is dropped and counted
    if source == 'world':
        data.world_size = 4000  # scenes
        data.world_seed = 0  # evaluation uses other seeds: unseen scenes
        data.mixture = 'world_pretrain'  # the mixture or single task (world_<task>) to train on
    elif source == 'ofa_pretrain':
        # OFA's pretraining TSV files; only the vision-language one is required.
        data.vision_language_path = ''
        data.text_path = ''
        data.image_path = ''  # rows carry the centre's VQGAN codes
        data.detection_path = ''
        # The text, image and detection samples form a sub-batch of their own (OFA's extra samples): its lengths.
        data.extra_max_source_length = 288  # the instruction around a text of 256 tokens, some masked
        data.extra_max_target_length = 257  # 256 codes of the image's centre (code_image_size 128) and eos
        data.extra_image_size = 256  # image infilling and detection: code_image_size x 2, as OFA's
        # OFA's negative samples (its --neg-sample-dir: object.txt, all_captions.txt, type2ans.json) for image-text
        # and answer matching; '': other rows' captions and answers.
        data.negatives_dir = ''
    else:
        # Finetuning tasks by name, each {name, kind (a task of ofa_jax.data.tasks), rate, format: 'tsv' (path,
        # tsv_kind: OFA's file layout) | 'jsonl' (path, image_root) | 'tfds' (dataset, split, data_dir), and OFA's
        # dataset options (finetune_task_config)}.
        data.tasks = {}
    return data


# OFA's finetuning TSV layout (ofa_jax.data.sources) of each task that has one; the text tasks come as JSONL or TFDS.
TASK_TSV_LAYOUTS = {
    'caption': 'caption',
    'vqa': 'vqa',
    'grounding': 'refcoco',
    'snli_ve': 'snli_ve',
    'classification': 'imagenet',
}


def finetune_task_config(kind: str, name: str = '', format: str = '', path: str = '', rate: float = 1.0) -> dict:
    """One entry of data.tasks, with every key a source format or a task option may read (so each can be set from
    the command line); the format defaults to OFA's TSV where the task has a layout, else JSONL."""
    return dict(
        name=name or f'ofa_{kind}',
        kind=kind,
        rate=rate,
        format=format or ('tsv' if kind in TASK_TSV_LAYOUTS else 'jsonl'),
        path=path,
        tsv_kind=TASK_TSV_LAYOUTS.get(kind, ''),
        image_root='',
        dataset='',
        split='train',
        data_dir='',
        valid_path='',  # validation records in the same format, scored during training (config.validation)
        prompt_type='none',  # what precedes the answer in the decoder: 'none', 'src' or 'prev_output' (OFA's)
        answers='',  # vqa: the answer list (OFA's trainval_ans2label.pkl, or JSON); evaluation scores every answer
        constrained_training=True,  # vqa with answers, snli_ve: the answer's loss over the answers' trie (OFA's)
        add_object=False,  # vqa: the record's object words follow the question (OFA's --add-object)
        add_caption=False,  # snli_ve: the premise joins the instruction (OFA's --add-caption)
        noise_ratio=0.0,  # summarization: this share of the decoder's input tokens random (OFA's --noise-ratio)
    )


def default_config(source: str = 'world') -> ml_collections.ConfigDict:
    """Every key, with OFA's optimizer settings and the `data` section of `source`; configs start here and
    override."""
    config = ml_collections.ConfigDict()
    config.model = 'tiny'  # a preset of ofa_jax.model.PRESETS
    config.model_overrides = {}  # OFAConfig fields, e.g. dropout, dtype='bfloat16', remat=True
    config.seed = 0
    config.init_from = ''  # a model directory (ofa_jax.checkpoint) to start from, e.g. a converted OFA checkpoint

    config.batch_size = 256  # global, over all processes
    config.grad_accum_steps = 1
    config.device_batch_size = 0  # rows per batch shard in one pass; when set, grad_accum_steps follows from it
    config.total_steps = 10_000
    config.epochs = 0.0  # or train for this many passes over the (one) task's records: OFA's --max-epoch
    config.learning_rate = 1e-4
    config.end_learning_rate = 0.0
    config.warmup_steps = 100
    config.warmup_ratio = 0.0  # or warm up for this fraction of total_steps (OFA's --warmup-ratio; warmup_steps 0)
    config.weight_decay = 0.01
    config.adam_b1, config.adam_b2, config.adam_eps = 0.9, 0.999, 1e-8
    config.clip_norm = 1.0
    config.label_smoothing = 0.0
    config.drop_worst_ratio = 0.0  # OFA's --drop-worst-ratio: the loss skips this fraction of highest-loss tokens
    config.drop_worst_after = 0  # ... once this many updates are done (--drop-worst-after)
    config.freeze_token_embedding = False  # OFA's --freeze-{en,de}coder-embedding: the shared embedding stays fixed
    config.ema_decay = 0.0  # 0: no EMA of the parameters
    config.nonfinite = 'skip'  # a step with a NaN or Inf loss or gradient: 'skip' its update (counted), or 'stop'
    config.sample_patch_num = 0  # 0: every image patch; OFA pretraining samples 196
    config.scst = False  # self-critical training on the model's own captions, rewarded by CIDEr-D (ofa_jax.scst)

    config.mesh = dict(replica=1, data=-1, fsdp=1, tensor=1)
    config.logical_axis_rules = sharding.DEFAULT_RULES

    # Validation during training: every `every` steps (and at the last) the model (its EMA when kept) answers the
    # validation data (each finetuning task's valid_path; unseen scenes of the world) and is scored as
    # `python -m ofa_jax.evaluate` scores it; the best checkpoint by `metric` is kept in WORKDIR/best.
    config.validation = ml_collections.ConfigDict()
    config.validation.every = 0  # 0: no validation
    config.validation.every_epochs = 0.0  # > 0: instead every this many passes over a one-task run's records
    config.validation.max_examples = 0  # per task; 0: all (the world: 256 scenes)
    config.validation.batch_size = 0  # examples per model call; 0: the training batch of a process
    config.validation.metric = ''  # the score keeping the best checkpoint, e.g. 'caption_cider'; '': the first one
    config.validation.mode = 'max'  # 'max' or 'min': which way the metric is better

    # Compiled programs are kept here across runs, so a restarted or resumed run loads its train step instead of
    # compiling it again (a directory on each host, or a gs:// path); '' turns it off. An environment's
    # JAX_COMPILATION_CACHE_DIR takes precedence.
    config.compilation_cache_dir = '~/.cache/ofa_jax/compilation'

    # Processes of a multi-process job agree on a SIGTERM (a preemption) every this many steps: the agreement is a
    # collective that waits for the step in flight, so each check costs the host its lead over the devices. A single
    # process stops after the step it is in. Keep it * step time well inside the grace before SIGKILL.
    config.preemption_check_every = 10

    config.log_every = 50
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3
    config.keep_every_steps = 0  # also keep every K-th step's checkpoint (0: none)

    config.data = data_config(source)
    return config
