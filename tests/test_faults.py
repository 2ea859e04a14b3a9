"""Faults a long run meets: SIGKILL at random moments, and SIGTERM at awkward ones."""

import os
import pathlib
import signal
import time

import orbax.checkpoint as ocp
import pytest
from kill_resume import finalized, finish, kill_and_resume, launch, lines, wait_for


@pytest.mark.slow
def test_random_kills_lose_nothing(tmp_path):
    report = kill_and_resume(tmp_path, kills=6, seed=0)
    assert [k['phase'] for k in report['kills']] == ['step', 'save', 'restore', 'step', 'save', 'restore']
    assert report['leftover_entries'] == []  # no half-written save is left behind


def sigterm_saved(workdir: pathlib.Path, log: pathlib.Path) -> int:
    """The step the stopped run logged last, after checking its checkpoint is that step's, complete and
    restorable."""
    logged = len(lines(workdir / 'metrics.jsonl'))
    assert 'SIGTERM: saved step' in log.read_text(), log.read_text()[-3000:]
    assert finalized(workdir / 'checkpoints') == logged
    assert not [p for p in (workdir / 'checkpoints').iterdir() if not p.name.isdigit()]
    state = ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(logged) / 'state')
    assert int(state['step']) == logged
    return logged


@pytest.mark.slow
def data_workers(pid: int) -> list[int]:
    """The data worker processes (multiprocessing children) of process `pid`."""
    children = []
    for entry in pathlib.Path('/proc').iterdir():
        try:
            parent = int((entry / 'stat').read_text().rsplit(')', 1)[1].split()[1])
            if parent == pid and b'spawn_main' in (entry / 'cmdline').read_bytes():
                children.append(int(entry.name))
        except (ValueError, OSError, IndexError):  # not a process, or one that just ended
            continue
    return children


@pytest.mark.slow
@pytest.mark.parametrize(
    'moment', ['during_an_asynchronous_save', 'twice', 'to_the_data_workers_first', 'to_the_whole_process_group']
)
def test_sigterm_at_awkward_moments_saves_and_exits_cleanly(tmp_path, moment):
    workdir, log, deadline = tmp_path / 'run', tmp_path / 'run.log', time.time() + 600
    trace, metrics = pathlib.Path(f'{workdir}.trace'), workdir / 'metrics.jsonl'
    process = launch(workdir, 500, log, *(['data.workers=2'] if 'data_workers' in moment or 'group' in moment else []))
    if moment == 'during_an_asynchronous_save':  # the second save: the first step has run, the step after waits
        assert wait_for(lambda: sum(x.startswith('save') for x in lines(trace)) >= 2, process, deadline)
        process.send_signal(signal.SIGTERM)
    elif moment == 'twice':  # as a scheduler might, impatient
        assert wait_for(lambda: len(lines(metrics)) >= 3, process, deadline)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
    elif moment == 'to_the_data_workers_first':  # the run goes on, then stops when the trainer gets its own
        assert wait_for(lambda: len(lines(metrics)) >= 3, process, deadline)
        workers = data_workers(process.pid)
        assert len(workers) == 2
        for worker in workers:
            os.kill(worker, signal.SIGTERM)
        logged = len(lines(metrics))
        assert wait_for(lambda: len(lines(metrics)) >= logged + 3, process, deadline), log.read_text()[-3000:]
        process.send_signal(signal.SIGTERM)
    else:  # the whole process group, as a terminal or a job scheduler stops a job: the trainer and its data workers
        assert wait_for(lambda: len(lines(metrics)) >= 3, process, deadline)
        os.killpg(process.pid, signal.SIGTERM)
    finish(process, log, deadline)
    assert 2 <= sigterm_saved(workdir, log) < 500


@pytest.mark.slow
def test_a_failing_asynchronous_save_stops_the_run_and_is_never_restored(tmp_path):
    # Files up to 2 MiB: the 1 MiB probe of the workdir passes, and the first save fails whatever the timing of its
    # writes, which decides how they group into files: one array alone, the 4 MiB image position table of a
    # 128-wide bucket grid, cannot fit.
    workdir, log, deadline = tmp_path / 'run', tmp_path / 'run.log', time.time() + 600
    # Saves 200 steps apart: the failed one surfaces within seconds, tens of steps of this small model.
    process = launch(
        workdir, 500, log, 'checkpoint_every=200', 'model_overrides.image_bucket_size=128', limit_file_size=2 << 20
    )
    assert process.wait(timeout=600) != 0
    output = log.read_text()
    assert 'File too large' in output, output[-3000:]
    assert 200 <= len(lines(workdir / 'metrics.jsonl')) < 400  # stopped before the next save was due
    assert finalized(workdir / 'checkpoints') == 0
    # The disk has room again: the run starts afresh, never from the half-written save, and clears it away.
    finish(launch(workdir, 2, log), log, deadline)
    assert 'resumed from' not in log.read_text()
    assert [p.name for p in (workdir / 'checkpoints').iterdir()] == ['2']
