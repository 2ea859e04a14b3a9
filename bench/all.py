"""Every comparison with the PyTorch reference, one after another, into BENCHMARKS.md.

    .venv/bin/python bench/all.py [--out BENCHMARKS.md] [--compile_sizes tiny]

Runs each bench/*_vs_reference.py in a process of its own (each times both sides in turns; see
bench/_common.interleaved), bench/input_pipeline.py, then, with --compile_sizes, bench/compile_time.py, and writes
the figures with the date, the machine and the versions. Run it on a quiet machine: load slows the reference more
than ofa-jax, and a ratio measured under load says more about the load than the code (a spread over 20% is flagged
in the table).
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent
COMPARISONS = (  # script, its arguments, what the row measures
    ('train_step_vs_reference.py', (), 'train step: tiny, batch 8, 256 px, 64+32 tokens, AdamW, dropout 0.1'),
    ('forward_vs_reference.py', (), 'forward pass: tiny, batch 8, 256 px, 64+32 tokens'),
    ('captions_vs_reference.py', (), 'captions: tiny, batch 16, 256 px, beam 5, at most 16 tokens'),
    ('text_to_image_vs_reference.py', (), 'text-to-image query: tiny, 1,024 codes sampled, VQGAN decode'),
    ('vqa_candidates_vs_reference.py', (), "all-candidates VQA: tiny, 2 questions, 256 px, VQA v2's 3,129 answers"),
    ('vqgan_vs_reference.py', (), 'VQGAN encode and decode: batch 2, 256 px'),
)


def run(script: str, *arguments: str) -> list[dict]:
    """The JSON lines a bench script prints (its warnings pass through to stderr)."""
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *arguments], capture_output=True, text=True, cwd=BENCH.parent
    )
    sys.stderr.write(''.join(line + '\n' for line in done.stderr.splitlines() if line.startswith('warning:')))
    if done.returncode:
        raise SystemExit(f'{script} failed:\n{done.stderr[-3000:]}')
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{')]


def spread_note(timing: dict) -> str:
    spread = max(timing['spread'].values())
    return f'{spread:.0%}' + (' (noisy)' if spread > 0.2 else '')


def comparison_rows(record: dict, measures: str) -> list[str]:
    parts = [(measures, record)]
    if 'encode' in record:  # the VQGAN bench times two things
        parts = [(f'{measures}: encode', record['encode']), (f'{measures}: decode', record['decode'])]
    return [
        f'| {what} | {t["ofa_jax_s"]:.3f} | {t["reference_s"]:.3f} | **{t["speedup"]:.2f}x** | {spread_note(t)} '
        f'| {t["repeats"]} | {record.get("ofa_jax_compile_s", "")} |'
        for what, t in parts
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', default=str(BENCH.parent / 'BENCHMARKS.md'))
    parser.add_argument('--compile_sizes', nargs='*', default=[])
    args = parser.parse_args()

    lines = [
        '| what | ofa-jax s | reference s | speedup | spread | repeats | ofa-jax compile s |',
        '|---|---|---|---|---|---|---|',
    ]
    records = []
    for script, arguments, measures in COMPARISONS:
        print(f'running {script} ...', file=sys.stderr)
        for record in run(script, *arguments):
            records.append(record)
            lines += comparison_rows(record, measures)
    mfus = [r['mfu'] for r in records if 'mfu' in r]
    if mfus:
        lines += ['', f'Train step model-FLOPs utilization: {mfus[0]:.1%} of the float32 matmul peak measured here.']
    print('running input_pipeline.py ...', file=sys.stderr)
    feeds = run('input_pipeline.py', '--workers', '0', '2')
    step = records[0]  # the train step: what it consumes, at 256 px
    lines += ['', '| input pipeline: world mixture, 384 px, batch 32 | examples/s |', '|---|---|']
    lines += [f'| {f["workers"]} worker processes | {f["examples_per_second"]} |' for f in feeds]
    lines += [f'| the tiny train step above consumes (batch 8 at 256 px) | {8 / step["ofa_jax_s"]:.1f} |']
    if args.compile_sizes:
        print('running compile_time.py ...', file=sys.stderr)
        compiles = run('compile_time.py', '--sizes', *args.compile_sizes)
        lines += [
            '',
            '| pretraining train step, 8 simulated CPU devices | layers | trace and lower s | XLA compile s |',
            '|---|---|---|---|',
        ]
        lines += [
            f'| {c["size"]}, mesh {c["mesh"]} | {c["layers"]} | {c["trace_lower_s"]} | {c["compile_s"]} |'
            for c in compiles
        ]

    versions = ', '.join(f'{p} {importlib.metadata.version(p)}' for p in ('jax', 'flax', 'torch', 'modelscope'))
    threads = {r.get('threads') for r in records}
    header = [
        '# Benchmarks',
        '',
        f'Measured {datetime.date.today()} by `python bench/all.py` on {os.cpu_count()} CPU cores '
        f'({platform.processor() or platform.machine()}), threads {sorted(threads)}; {versions}.',
        '',
        "Each row runs in a process of its own. ofa-jax and modelscope's PyTorch OFA (same shapes, same weights where "
        'the output is compared) are timed in turns, A B A B, after one untimed call of each; the figures are the '
        'medians and the speedup is the ratio of the medians (reference / ofa-jax: above 1, ofa-jax is faster). '
        "The spread is the widest of the two sides' (slowest - fastest) / median; over 20% the machine was busy "
        'and the row should be measured again.',
        '',
    ]
    pathlib.Path(args.out).write_text('\n'.join(header + lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
