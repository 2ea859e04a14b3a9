"""Two CPU processes on localhost (jax.distributed, gloo collectives) train, checkpoint and resume the shrunk demo,
with the same losses as one process with the same global batch.

Process p of 2 reads examples p, p + 2, ... of the stream, so with 4 rows each the global batch holds the same 8
examples as one process's batch (in another row order; the loss is a sum over rows divided by the global batch's
tokens, so the order does not matter). Dropout is off and batch norm frozen, so nothing depends on the split.
All steps stay inside the 40 warmup steps of the worker config, where the learning rate does not depend on total_steps:
the 4-step run resumed to 6 follows the same schedule as the straight 6-step run.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / 'tests' / 'train_worker.py'
TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(('OFA_', 'SLURM_')) and k != 'TPU_WORKER_HOSTNAMES'}
    env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
    return env


def run_job(workdir: pathlib.Path, steps: int, processes: int) -> list[str]:
    """Runs `processes` workers to `steps` (as one job when more than 1); fails showing every output unless all
    exit 0 within TIMEOUT. Returns their outputs."""
    port = free_port()
    logs, workers = [], []
    for index in range(processes):
        env = base_env()
        if processes > 1:
            env.update(OFA_COORDINATOR=f'127.0.0.1:{port}', OFA_NUM_PROCESSES=str(processes), OFA_PROCESS_ID=str(index))
        log = open(workdir.parent / f'{workdir.name}_{steps}_{index}.log', 'w+')
        logs.append(log)
        workers.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(workdir), str(steps)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    deadline, problem = time.time() + TIMEOUT, None
    while any(w.poll() is None for w in workers):
        if any(w.poll() not in (None, 0) for w in workers):
            problem = 'a process failed'  # the others would wait for it until the coordinator gives up
            break
        if time.time() > deadline:
            problem = f'timed out after {TIMEOUT} s'
            break
        time.sleep(1)
    for w in workers:
        if w.poll() is None:
            w.kill()
        w.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    if problem is None and any(w.returncode for w in workers):
        problem = 'a process failed'
    if problem:
        shown = '\n'.join(
            f'--- process {i} (exit {w.returncode}) ---\n{out[-6000:]}'
            for i, (w, out) in enumerate(zip(workers, outputs))
        )
        pytest.fail(f'{processes}-process run to step {steps} in {workdir}: {problem}\n{shown}')
    return outputs


def metrics(workdir: pathlib.Path) -> list[dict]:
    with open(workdir / 'metrics.jsonl') as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
@pytest.mark.multihost
def test_two_processes_train_resume_and_match_one(tmp_path):
    two, one = tmp_path / 'two', tmp_path / 'one'
    run_job(two, 4, processes=2)
    assert [row['step'] for row in metrics(two)] == [1, 2, 3, 4]
    run_job(two, 6, processes=2)  # resumes from the step-4 checkpoint and appends steps 5 and 6
    run_job(one, 6, processes=1)

    two_rows, one_rows = metrics(two), metrics(one)
    assert [row['step'] for row in two_rows] == [1, 2, 3, 4, 5, 6]
    assert [row['step'] for row in one_rows] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(two_rows, one_rows):
        assert a['target_tokens'] == b['target_tokens'], a['step']
        assert a['loss'] == pytest.approx(b['loss'], rel=1e-5), a['step']
        assert a['grad_norm'] == pytest.approx(b['grad_norm'], rel=1e-4), a['step']
    saved = {int(p.name) for p in (two / 'checkpoints').iterdir() if p.name.isdigit()}
    assert 6 in saved and max(saved) == 6
