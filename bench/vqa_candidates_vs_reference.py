"""All-candidates VQA of OFA-Tiny: ofa-jax's `score_candidates` against OFA's allcand procedure run on modelscope's
PyTorch OFA, same converted weights, same CPU, one run.

    .venv/bin/python bench/vqa_candidates_vs_reference.py [--repeats 3] [--threads N] [--answers 3129]

Each question's every candidate answer (VQA v2's 3,129 by default; here random id sequences of 1 to 3 tokens) is
scored by its summed log-probability, each token's renormalized over the tokens that continue some answer (the
answers' trie), and the best is the answer. The reference side is OFA's procedure (utils/eval_utils.py, vqa_gen
with allcand): the encoder once per batch of questions, then the decoder over chunks of 20 answers per question
(OFA's valid_batch_size) with the encoder's output repeated for each, the logits outside the trie at -inf before
the log-softmax; its per-answer trie masks are built beforehand, as OFA's task builds them at setup. ofa-jax scores
256 (question, answer) pairs a decoder pass, a question's answers together against its encoder output's keys and
values, projected once. Both sides must pick the same answers. Batch 2 questions, 256 px,
float32; the two are timed in turns (bench/_common.interleaved). Needs the test requirements (torch, modelscope).
"""

import argparse
import json
import os
import time

import jax
import numpy as np
from _common import interleaved  # also puts tests/ on the path for `reference`
from reference import tiny_reference, torch

from ofa_jax.convert import from_torch_state_dict
from ofa_jax.data import vocab as V
from ofa_jax.data.answers import AnswerTrie
from ofa_jax.decode import score_candidates
from ofa_jax.model import OFA

REFERENCE_CHUNK = 20  # answers per question in one decoder pass: OFA's valid_batch_size


def random_answers(count: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """`count` distinct id sequences of 1 to 3 text tokens, mostly short, as VQA's answers are."""
    answers: dict[tuple[int, ...], None] = {}
    while len(answers) < count:
        length = int(rng.choice([1, 1, 1, 2, 2, 3]))
        answers[tuple(int(t) for t in rng.integers(4, 50000, length))] = None
    return list(answers)


def trie_masks(answers: list[tuple[int, ...]], vocab_size: int) -> list[torch.Tensor]:
    """Per answer, bool [len + 1, vocab]: at each of its positions the tokens that continue some answer with its
    prefix (eos where an answer ends), as OFA's valid_constraint_masks."""
    following: dict[tuple[int, ...], set[int]] = {}
    for answer in answers:
        for i in range(len(answer) + 1):
            following.setdefault(answer[:i], set()).add(answer[i] if i < len(answer) else V.EOS)
    masks = []
    for answer in answers:
        mask = torch.zeros(len(answer) + 1, vocab_size, dtype=torch.bool)
        for i in range(len(answer) + 1):
            mask[i, sorted(following[answer[:i]])] = True
        masks.append(mask)
    return masks


def reference_all_candidates(model, src, images, answers, masks) -> np.ndarray:
    """OFA's allcand: scores [b, n_answers] of every answer after bos, summed over the answer and eos."""
    from modelscope.models.multi_modal.ofa.modeling_ofa import _expand_mask  # noqa: PLC0415

    batch, pad = len(src), model.config.pad_token_id
    with torch.no_grad():
        encoded = model.encoder(
            input_ids=torch.from_numpy(src),
            patch_images=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
            patch_masks=torch.ones(batch, dtype=torch.bool),
        )
        results = []
        for start in range(0, len(answers), REFERENCE_CHUNK):
            chunk = answers[start : start + REFERENCE_CHUNK]
            size, length = len(chunk), max(map(len, chunk)) + 1
            previous = torch.full((batch * size, length), pad, dtype=torch.long)
            target = torch.full((batch * size, length), pad, dtype=torch.long)
            allowed = torch.zeros(batch * size, length, model.config.vocab_size, dtype=torch.bool)
            for row in range(batch * size):
                answer = chunk[row % size]
                previous[row, : len(answer) + 1] = torch.tensor([V.BOS, *answer])
                target[row, : len(answer) + 1] = torch.tensor([*answer, V.EOS])
                allowed[row, : len(answer) + 1] = masks[start + row % size]
            hidden = encoded.last_hidden_state.repeat_interleave(size, dim=0)
            padding = encoded.padding_mask.repeat_interleave(size, dim=0)
            logits = model.decoder(
                input_ids=previous,
                attention_mask=previous.eq(pad) if previous.eq(pad).any() else None,
                encoder_hidden_states=hidden,
                encoder_attention_mask=_expand_mask(padding, hidden.dtype, length),
                src_pos_embed=encoded.position_embedding.repeat_interleave(size, dim=0),
            ).last_hidden_state
            logits.masked_fill_(~allowed, -torch.inf)
            scores = torch.log_softmax(logits.float(), dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
            scores = scores.masked_fill(target.eq(pad), 0).sum(1)
            results.append(scores.view(batch, size))
    return torch.cat(results, dim=1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag, default in (('--repeats', 3), ('--threads', os.cpu_count()), ('--batch', 2), ('--answers', 3129)):
        parser.add_argument(flag, type=int, default=default)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image_size = 256

    reference = tiny_reference()
    config, variables = from_torch_state_dict(reference.state_dict())
    model = OFA(config)
    rng = np.random.default_rng(0)
    src = np.concatenate(
        [np.zeros((args.batch, 1)), rng.integers(4, 50000, (args.batch, 10)), np.full((args.batch, 1), V.EOS)], axis=1
    ).astype(np.int64)  # bos, a question's tokens, eos
    images = rng.uniform(-1, 1, (args.batch, image_size, image_size, 3)).astype(np.float32)
    answers = random_answers(args.answers, rng)
    trie, masks = AnswerTrie(answers, config.vocab_size), trie_masks(answers, reference.config.vocab_size)
    jax_inputs = [jax.device_put(x) for x in (src.astype(np.int32), images, np.ones(args.batch, bool))]

    chosen = {}

    def ours():
        scores = np.asarray(score_candidates(model, variables, *jax_inputs, answers, trie=trie))
        chosen['ofa_jax'] = scores.argmax(1)

    def theirs():
        chosen['reference'] = reference_all_candidates(reference, src, images, answers, masks).argmax(1)

    start = time.perf_counter()
    ours()
    compile_s = time.perf_counter() - start
    timings = interleaved(ours, theirs, args.repeats)
    if not np.array_equal(chosen['ofa_jax'], chosen['reference']):
        raise SystemExit(f'the two sides chose different answers: {chosen}')

    print(
        json.dumps(
            {
                'benchmark': 'tiny all-candidates VQA',
                'batch': args.batch,
                'answers': args.answers,
                'image_size': image_size,
                'threads': args.threads,
                'device': jax.devices()[0].device_kind,
                'ofa_jax_questions_per_s': round(args.batch / timings['ofa_jax_s'], 3),
                'reference_questions_per_s': round(args.batch / timings['reference_s'], 3),
                **timings,
                'ofa_jax_compile_s': round(compile_s, 1),
            }
        )
    )


if __name__ == '__main__':
    main()
