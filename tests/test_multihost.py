"""Two CPU processes on localhost (jax.distributed, gloo collectives), started with the environment each launcher
creates (the explicit OFA_* variables, SLURM's), train, checkpoint and resume the shrunk demo, with the same losses
as one process with the same global batch; and one of them failing ends both.

Process p of 2 reads examples p, p + 2, ... of the stream, so with 4 rows each the global batch holds the same 8
examples as one process's batch (in another row order; the loss is a sum over rows divided by the global batch's
tokens, so the order does not matter). Dropout is off and batch norm frozen, so nothing depends on the split.
All steps stay inside the 40 warmup steps of the worker config, where the learning rate does not depend on total_steps:
the 4-step run resumed to 6 follows the same schedule as the straight 6-step run.
"""

import io
import json
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from PIL import Image

from ofa_jax.data.world import World

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / 'tests' / 'train_worker.py'
TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def base_env() -> dict:
    """This environment without any job description, on one CPU device a process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(('OFA_', 'SLURM_')) and k != 'TPU_WORKER_HOSTNAMES'}
    env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
    return env


def launcher_env(launcher: str, processes: int, index: int, port: int) -> dict:
    """What a launcher gives process `index` of a job on this host: the explicit variables (launch/local.sh) or
    SLURM's (srun of launch/slurm.sh, with SLURM_JOB_ID chosen so that jax's port for the job is `port`)."""
    if processes == 1:
        return {}
    if launcher == 'explicit':
        return dict(OFA_COORDINATOR=f'127.0.0.1:{port}', OFA_NUM_PROCESSES=str(processes), OFA_PROCESS_ID=str(index))
    return dict(
        SLURM_JOB_ID=str(port - (65535 - 2**12 + 1)),  # jax: port = job id % 4096 + 61440
        SLURM_STEP_NODELIST='localhost',
        SLURM_STEP_NUM_NODES='1',
        SLURM_NTASKS=str(processes),
        SLURM_PROCID=str(index),
        SLURM_LOCALID=str(index),
    )


def job_port(launcher: str) -> int:
    """A free port (for SLURM one in the range jax derives from a job id)."""
    if launcher == 'explicit':
        return free_port()
    while True:
        port = random.randint(65535 - 2**12 + 1, 65535)
        with socket.socket() as s:
            if s.connect_ex(('127.0.0.1', port)):  # nothing listens there
                return port


def start_job(
    workdir: pathlib.Path, steps: int, processes: int, args=lambda index: (), launcher: str = 'explicit'
) -> list:
    """Starts `processes` workers training to `steps` (as one job when more than 1, with the environment
    `launcher` creates), process i with the extra arguments args(i); returns [(process, log file)]."""
    port = job_port(launcher)
    job = []
    for index in range(processes):
        env = base_env() | launcher_env(launcher, processes, index, port)
        log = open(workdir.parent / f'{workdir.name}_{steps}_{index}.log', 'w+')
        command = [sys.executable, str(WORKER), str(workdir), str(steps), *args(index)]
        job.append((subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return job


def wait_job(job: list, timeout: float = TIMEOUT) -> tuple[list, list[str], list[float]]:
    """Waits for every process (killing what is left after `timeout` s); returns their exit codes (None: killed),
    outputs and exit times."""
    deadline, exits = time.time() + timeout, [None] * len(job)
    while None in exits and time.time() < deadline:
        for i, (process, _) in enumerate(job):
            if exits[i] is None and process.poll() is not None:
                exits[i] = time.time()
        time.sleep(0.1)
    codes, outputs = [], []
    for process, log in job:
        codes.append(process.poll())
        if process.poll() is None:
            process.kill()
            process.wait()
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return codes, outputs, exits


def shown(codes: list, outputs: list[str]) -> str:
    return '\n'.join(f'--- process {i} (exit {c}) ---\n{out[-6000:]}' for i, (c, out) in enumerate(zip(codes, outputs)))


def run_job(workdir: pathlib.Path, steps: int, processes: int, launcher: str = 'explicit') -> list[str]:
    """Runs `processes` workers to `steps`; fails showing every output unless all exit 0. Returns their outputs."""
    codes, outputs, _ = wait_job(start_job(workdir, steps, processes, launcher=launcher))
    if any(codes):
        pytest.fail(f'{processes}-process run to step {steps} in {workdir}: a process failed\n{shown(codes, outputs)}')
    return outputs


def metrics(workdir: pathlib.Path) -> list[dict]:
    with open(workdir / 'metrics.jsonl') as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
@pytest.mark.multihost
@pytest.mark.parametrize('launcher', ['explicit', 'slurm'])
def test_two_processes_train_resume_and_match_one(tmp_path, launcher):
    two, one = tmp_path / 'two', tmp_path / 'one'
    run_job(two, 4, processes=2, launcher=launcher)
    assert [row['step'] for row in metrics(two)] == [1, 2, 3, 4]
    run_job(two, 6, processes=2, launcher=launcher)  # resumes from the step-4 checkpoint and appends steps 5, 6
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
    if launcher == 'explicit':  # one process cannot take over the data positions of two
        codes, outputs, _ = wait_job(start_job(two, 8, 1))
        assert codes == [1], shown(codes, outputs)
        assert 'step 6 was saved by 2 process(es) with 0 data worker(s) each; this run has 1' in outputs[0]


@pytest.mark.slow
@pytest.mark.multihost
def test_two_processes_validate_as_one_and_agree_on_the_best(tmp_path):
    args = ['data.mixture=world_grounding', 'validation.every=2', 'validation.max_examples=8']
    two, one = tmp_path / 'two', tmp_path / 'one'
    for workdir, processes in ((two, 2), (one, 1)):
        codes, outputs, _ = wait_job(start_job(workdir, 4, processes, lambda index: args))
        assert codes == [0] * processes, shown(codes, outputs)
    scored = [
        {r['step']: r['validation/grounding_accuracy'] for r in metrics(w) if 'validation/grounding_accuracy' in r}
        for w in (two, one)
    ]
    assert list(scored[0]) == [2, 4] and scored[0] == pytest.approx(scored[1], abs=1e-6)
    best = [sorted(p.name for p in (w / 'best' / 'checkpoints').iterdir() if p.name.isdigit()) for w in (two, one)]
    assert len(best[0]) == 1 and scored[0][int(best[0][0])] == max(scored[0].values()), best


def caption_data(folder: pathlib.Path, rows: int, readable: bool) -> str:
    """A JSONL caption file of `rows` world scenes (32 pixels) and their images; with readable=False every line
    names an image that is not there, as on a host whose copy of the data is broken. Returns its path."""
    (folder / 'images').mkdir(parents=True)
    world, lines = World(size=rows, image_size=32), []
    for i in range(rows):
        if readable:
            buffer = io.BytesIO()
            Image.fromarray(world[i]['image']).save(buffer, format='PNG')
            (folder / 'images' / f'{i}.png').write_bytes(buffer.getvalue())
        lines.append(json.dumps({'id': str(i), 'caption': world[i]['caption'], 'image': f'images/{i}.png'}))
    (folder / 'captions.jsonl').write_text('\n'.join(lines) + '\n')
    return str(folder / 'captions.jsonl')


@pytest.mark.slow
@pytest.mark.multihost
@pytest.mark.parametrize('strict', [True, False], ids=['strict', 'every_record_dropped'])
def test_a_process_whose_data_fails_ends_the_job(tmp_path, strict):
    # Process 1 reads a broken copy of the data: in strict mode its first record raises; otherwise every record
    # is dropped until the pipeline gives up. Process 0 waits for it in the first step's collectives.
    paths = [caption_data(tmp_path / 'good', 64, readable=True), caption_data(tmp_path / 'bad', 64, readable=False)]

    def args(index: int) -> list[str]:
        task = dict(name='captions', kind='caption', rate=1.0, format='jsonl', path=paths[index], image_root='')
        return ['data.source=tasks', f'data.tasks={{"captions": {task!r}}}', f'data.strict={strict}']

    codes, outputs, exits = wait_job(start_job(tmp_path / 'job', 4, 2, args))
    assert codes == [1, 1], shown(codes, outputs)
    assert exits[0] - exits[1] < 10, f'process 0 ended {exits[0] - exits[1]:.1f} s after process 1'
    named = r'line \d+ of \S*bad/captions.jsonl' if strict else 'were all dropped'
    assert 'process 1: error: ValueError' in outputs[1] and re.search(named, outputs[1]), shown(codes, outputs)
    assert 'process 0: stopping: process 1 failed: ValueError' in outputs[0], shown(codes, outputs)


@pytest.mark.slow
@pytest.mark.multihost
def test_a_sigterm_to_one_process_stops_the_job_at_an_agreed_step(tmp_path):
    # A preemption notice may reach one host first: the processes agree every 5 steps, and all save that step.
    workdir = tmp_path / 'job'
    job = start_job(workdir, 500, 2, lambda index: ['preemption_check_every=5', 'checkpoint_every=1000'])
    log, deadline = workdir / 'metrics.jsonl', time.time() + TIMEOUT
    while not log.exists() or log.read_text().count('\n') < 3:
        assert time.time() < deadline and all(p.poll() is None for p, _ in job), 'the job did not reach step 3'
        time.sleep(0.1)
    job[1][0].send_signal(signal.SIGTERM)
    codes, outputs, _ = wait_job(job)
    assert codes == [0, 0], shown(codes, outputs)
    saved = [int(re.search(r'SIGTERM: saved step (\d+)', out).group(1)) for out in outputs]
    assert saved[0] == saved[1] and saved[0] % 5 == 0 and 3 <= saved[0] < 500, saved
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == [str(saved[0])]
