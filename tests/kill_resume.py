"""Training killed with SIGKILL at random moments and resumed, against the same training run straight through.

Each kill strikes one of three moments of a run of tests/train_worker.py, chosen in turn: a random time into a
training step, a random time after an (asynchronous) checkpoint save began, or a random time into the restore of
the latest checkpoint. After each kill the workdir is resumed by a new process; once all kills are done a last
process runs to the end. The run is then compared with a straight one: every loss logged by any of its processes
(steps replayed after a kill included) and the final parameters and optimizer state must be equal bit for bit.

Used by tests/test_faults.py (a few kills) and bench/kill_resume.py (20 or more).
"""

import dataclasses
import json
import os
import pathlib
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / 'tests' / 'train_worker.py'
PHASES = ('step', 'save', 'restore')
TIMEOUT = 600


@dataclasses.dataclass
class Kill:
    phase: str  # 'step', 'save' or 'restore'
    delay: float  # seconds from the phase's moment to the kill
    in_flight: bool  # the save or restore had not finished when the kill struck; for steps, always True
    # The step the killed process had resumed from (None: it started afresh or was killed before it resumed).
    resumed_from: int | None


def launch(
    workdir: pathlib.Path, steps: int, log: pathlib.Path, *overrides: str, limit_file_size: int | None = None
) -> subprocess.Popen:
    """Starts a worker training `workdir` to `steps`, checkpointing every 2 steps (unless `overrides` say otherwise)
    and tracing to WORKDIR.trace, in a process group of its own (with its data workers, if any); with
    limit_file_size, no file it writes can grow past that many bytes, as on a full disk."""
    command = [sys.executable, str(WORKER), str(workdir), str(steps), f'--trace={workdir}.trace', 'checkpoint_every=2']
    with open(log, 'w') as out:  # unbuffered: what a killed process printed is kept
        return subprocess.Popen(
            [*command, *overrides],
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=limit_file_size and (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size,) * 2)),
            env={**os.environ, 'PYTHONUNBUFFERED': '1'},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def resumed_from(log: pathlib.Path) -> int | None:
    resumed = [x for x in lines(log) if x.startswith('resumed from step')]
    return int(resumed[-1].split()[3]) if resumed else None


def lines(path: pathlib.Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, deadline: float) -> bool:
    """Polls every millisecond until `condition()` holds (True) or the process ends (False)."""
    while not condition():
        if process.poll() is not None or time.time() > deadline:
            return False
        time.sleep(0.001)
    return True


def finish(process: subprocess.Popen, log: pathlib.Path, deadline: float) -> None:
    try:
        process.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
        process.kill()
    if process.returncode:
        raise AssertionError(f'a training process exited {process.returncode}:\n{log.read_text()[-6000:]}')


def strike(
    process: subprocess.Popen, workdir: pathlib.Path, log: pathlib.Path, phase: str, rng: random.Random, deadline: float
) -> Kill | None:
    """Waits for `phase` in the running process and kills it at a random moment of it; returns the Kill, or None
    when the process ended first."""
    trace, metrics, checkpoints = pathlib.Path(f'{workdir}.trace'), workdir / 'metrics.jsonl', workdir / 'checkpoints'
    traced, started_from = len(lines(trace)), finalized(checkpoints)
    if phase in ('step', 'save'):  # once this process completed a checkpoint, so that the next one resumes further
        if not wait_for(lambda: finalized(checkpoints) > started_from, process, deadline):
            return None
    if phase == 'step':  # a random time into one of the next few steps (the log line closes the step before it)
        target = len(lines(metrics)) + rng.randint(1, 4)
        if not wait_for(lambda: len(lines(metrics)) >= target, process, deadline):
            return None
        delay = rng.uniform(0.0, 0.1)
    elif phase == 'save':  # a random time into the next save, which takes about a second here
        traced = len(lines(trace))
        if not wait_for(lambda: any(x.startswith('save') for x in lines(trace)[traced:]), process, deadline):
            return None
        delay = rng.uniform(0.0, 1.0)
    else:  # a random time inside the restore, which lasts about as long as the last finished one
        if not wait_for(lambda: any(x.startswith('restore ') for x in lines(trace)[traced:]), process, deadline):
            return None
        times = [x.split() for x in lines(trace) if x.startswith('restore')]
        durations = [
            float(b[1]) - float(a[1]) for a, b in zip(times, times[1:]) if (a[0], b[0]) == ('restore', 'restored')
        ]
        delay = rng.uniform(0.0, durations[-1] if durations else 0.5)
    time.sleep(delay)
    saving = checkpoints.exists() and any('tmp' in p.name for p in checkpoints.iterdir())
    restoring = not lines(trace)[-1].startswith('restored')
    process.send_signal(signal.SIGKILL)
    process.wait()
    return Kill(phase, delay, {'step': True, 'save': saving, 'restore': restoring}[phase], resumed_from(log))


def finalized(checkpoints: pathlib.Path) -> int:
    """The latest complete checkpoint's step (0 for none)."""
    steps = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.exists() else []
    return max(steps, default=0)


def losses_by_step(workdir: pathlib.Path) -> dict[int, list[float]]:
    """Every loss logged in the workdir, by step (a step replayed after a kill is logged again)."""
    logged: dict[int, list[float]] = {}
    for line in lines(workdir / 'metrics.jsonl'):
        record = json.loads(line)
        logged.setdefault(record['step'], []).append(record['loss'])
    return logged


def final_state(workdir: pathlib.Path, step: int) -> dict:
    return ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(step) / 'state')


def kill_and_resume(root: pathlib.Path, kills: int, seed: int = 0, steps: int | None = None) -> dict:
    """Trains straight to `steps` (4 per kill by default), then again under `kills` kills, and compares the two
    (AssertionError on any difference). Returns what happened: the kills and the figures."""
    steps = steps or 4 * kills
    rng, deadline, began = random.Random(seed), time.time() + TIMEOUT + 60 * kills, time.time()
    straight, killed = root / 'straight', root / 'killed'
    finish(launch(straight, steps, root / 'straight.log'), root / 'straight.log', deadline)

    # The first process has no checkpoint to restore: it is killed in a step, the others in turn.
    phases = ['step'] + [PHASES[(i + 1) % 3] for i in range(kills - 1)]
    done: list[Kill] = []
    for phase in phases:
        log = root / f'killed_{len(done)}.log'
        process = launch(killed, steps, log)
        kill = strike(process, killed, log, phase, rng, deadline)
        if kill is None:
            finish(process, log, deadline)
            raise AssertionError(f'the run ended before kill {len(done) + 1} of {kills} ({phase}): train longer')
        done.append(kill)
    log = root / 'killed_last.log'
    finish(launch(killed, steps, log), log, deadline)

    expected = {step: losses[0] for step, losses in losses_by_step(straight).items()}
    got = losses_by_step(killed)
    assert sorted(expected) == list(range(1, steps + 1)), sorted(expected)
    assert sorted(got) == sorted(expected), f'steps logged: {sorted(got)}'
    for step, losses in got.items():
        assert all(loss == expected[step] for loss in losses), (
            f'step {step}: {losses} after kills, straight {expected[step]}'
        )
    a, b = final_state(straight, steps), final_state(killed, steps)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    assert len(jax.tree_util.tree_leaves(a)) == len(jax.tree_util.tree_leaves(b))
    leftovers = [p.name for p in (killed / 'checkpoints').iterdir() if not p.name.isdigit()]
    return {
        'kills': [dataclasses.asdict(k) for k in done],
        'steps': steps,
        'processes': len(done) + 1,
        'last_resumed_from': resumed_from(log),
        'replayed_steps': sum(len(v) - 1 for v in got.values()),
        'leftover_entries': leftovers,
        'seconds': round(time.time() - began, 1),
    }
