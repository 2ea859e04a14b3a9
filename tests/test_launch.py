"""The launchers' own logic, run on this machine: launch/slurm.sh with `srun` and `scontrol` standing in for SLURM's
(srun starts the command as one task; scontrol writes down what it was asked)."""

import os
import pathlib
import signal
import subprocess
import time

import pytest
from conftest import ROOT, SMALL_DEMO_FLAGS
from kill_resume import finalized, lines


def slurm_job(tmp_path: pathlib.Path, *args: str) -> subprocess.Popen:
    """launch/slurm.sh as SLURM would run it for job 77, with the stand-ins first on the PATH."""
    stand_ins = tmp_path / 'bin'
    stand_ins.mkdir()
    (stand_ins / 'srun').write_text('#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    (stand_ins / 'scontrol').write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path}/scontrol.log\n')
    for tool in stand_ins.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, 'PATH': f'{stand_ins}:{os.environ["PATH"]}', 'SLURM_JOB_ID': '77', 'PYTHONUNBUFFERED': '1'}
    env['SLURM_SUBMIT_DIR'] = str(ROOT)
    command = ['bash', 'launch/slurm.sh', *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_slurm_job_checkpoints_and_requeues_at_its_time_limit(tmp_path):
    workdir = tmp_path / 'run'
    job = slurm_job(tmp_path, 'configs/demo.py', str(workdir), *SMALL_DEMO_FLAGS)
    deadline = time.time() + 600
    while len(lines(workdir / 'metrics.jsonl')) < 3 and job.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)  # --signal=B:TERM@120: to the batch shell, two minutes before the time limit
    output, _ = job.communicate(timeout=300)
    assert job.returncode == 0, output[-3000:]
    assert 'SIGTERM: saved step' in output
    assert (tmp_path / 'scontrol.log').read_text() == 'requeue 77\n'
    assert finalized(workdir / 'checkpoints') == len(lines(workdir / 'metrics.jsonl')) >= 3


def test_slurm_job_that_fails_is_not_requeued(tmp_path):
    job = slurm_job(tmp_path, 'configs/demo.py', str(tmp_path / 'run'), '--config.nonfinite=ignore')
    output, _ = job.communicate(timeout=300)
    assert job.returncode == 2 and "nonfinite is 'ignore'" in output, output[-3000:]
    assert not (tmp_path / 'scontrol.log').exists()
