"""Workdirs and data in a bucket (gs://): training, resuming, validating and evaluating against a Cloud Storage server
running here (gcp-storage-emulator, in memory), reached through etils.epath (gcsfs) as on a pod. Nothing may land on
the local disk. Checkpoints are orbax's (tensorstore's GCS driver), which this server cannot serve: it ignores
generation preconditions, which tensorstore's OCDBT writes need; orbax is given the gs:// path as it is."""

import base64
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

import flax.linen as nn
import gcsfs
import jax
import numpy as np
import pytest
from conftest import png_base64, small_config
from etils import epath

from ofa_jax import ablate, evaluate, train
from ofa_jax.checkpoint import model_from_config, save_model
from ofa_jax.data import mixtures
from ofa_jax.data.sources import JsonlSource, index_path
from ofa_jax.model import init_variables

RED = base64.b64decode(png_base64(np.full((4, 6, 3), (255, 0, 0), np.uint8)))


def _dies_with_this_process() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@pytest.fixture(scope='module')
def storage_server():
    """The URL of a Cloud Storage server holding gs://bucket. It lives as long as the test process: TensorBoard's
    writers upload their event files once more when the process exits."""
    with socket.socket() as probe:
        probe.bind(('localhost', 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, '-m', 'gcp_storage_emulator', 'start', '--port', str(port), '--in-memory']
        + ['--default-bucket', 'bucket'],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_dies_with_this_process,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(('localhost', port), timeout=1).close()
            return f'http://localhost:{port}'
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail('the storage server did not start')
            time.sleep(0.2)


@pytest.fixture
def bucket(storage_server, monkeypatch, tmp_path, request):
    """A folder of gs://bucket of this test's own; the test runs in an empty local directory, to show that nothing
    is written there."""
    monkeypatch.setenv('STORAGE_EMULATOR_HOST', storage_server)  # gcsfs and google-cloud-storage (TensorBoard)
    monkeypatch.setenv('NO_GCE_CHECK', 'True')  # no credentials to look for on a metadata server
    gcsfs.GCSFileSystem.clear_instance_cache()
    local = tmp_path / 'cwd'
    local.mkdir()
    monkeypatch.chdir(local)
    yield epath.Path('gs://bucket') / request.node.name
    gcsfs.GCSFileSystem.clear_instance_cache()
    assert not os.listdir(local), 'a remote path was written to the local disk'


def test_a_workdir_in_a_bucket_holds_the_metrics_tensorboard_and_evaluation_of_a_run(bucket, tmp_path):
    workdir = bucket / 'runs' / 'grounding'
    train.check_writable(str(workdir))
    assert not (workdir / '.write_probe_0').exists()
    for steps in ((1, 2), (2, 3)):  # a run, then its resumption replaying step 2
        writer = train.MetricWriter(str(workdir))
        for step in steps:
            writer.write(step, {'loss': float(step)})
        writer.close()
    assert train.read_metrics(str(workdir)) == [{'step': s, 'loss': float(s)} for s in (1, 2, 3)]
    events = list((workdir / 'tb').iterdir())
    assert events and all(p.name.startswith('events.out.tfevents') and p.stat().length for p in events)

    config = small_config(data={'mixture': mixtures.world_task_name('grounding')})
    model = model_from_config(config)
    save_model(tmp_path / 'model', model.config, nn.meta.unbox(init_variables(model.config, jax.random.key(0))))
    validation_config, world = evaluate.validation_setup(config)
    scores, _ = evaluate.evaluate(
        validation_config, str(tmp_path / 'model'), str(workdir / 'evaluation'), 4, world=world
    )
    assert json.loads((workdir / 'evaluation' / 'metrics.json').read_text()) == scores
    assert len((workdir / 'evaluation' / 'predictions.jsonl').read_text().splitlines()) == 4


def test_a_jsonl_file_in_a_bucket_reads_as_the_same_local_file_and_keeps_its_line_index_there(bucket, tmp_path):
    lines = [{'id': i, 'image': 'images/a.png', 'caption': f'caption {i}', 'region': [i, 2, 3, 4]} for i in range(5)]
    text = '\n'.join(json.dumps(line) for line in lines) + '\n{not json\n'
    for root in (bucket / 'data', tmp_path / 'data'):
        (root / 'images').mkdir(parents=True, exist_ok=True)
        (root / 'images' / 'a.png').write_bytes(RED)
        (root / 'captions.jsonl').write_text(text)
    remote = JsonlSource(str(bucket / 'data' / 'captions.jsonl'))
    local = JsonlSource(tmp_path / 'data' / 'captions.jsonl')
    assert len(remote) == len(local) == 6
    for index in range(6):
        a, b = remote[index], local[index]
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_equal(a[key], b[key])
    assert remote[0]['image'] == RED and remote[5]['_error'].startswith('json')
    assert index_path(str(bucket / 'data' / 'captions.jsonl')).exists()
    assert [p.name for p in (bucket / 'data').iterdir() if p.name.endswith('.tmp')] == []


def test_an_ablation_in_a_bucket_collects_its_sizes_and_writes_its_results_there(bucket):
    workdir = bucket / 'ablation'
    for size, params in (('mini', 4_500_000), ('nano', 1_500_000)):
        row = {'size': size, 'parameters': params, 'steps': 3, 'train_loss': 2.0, 'vqa_accuracy': params / 1e7}
        ablate.write_result(workdir / size / ablate.RESULT_FILE, row)
        (workdir / size / 'metrics.jsonl').write_text(json.dumps({'step': 3, 'loss': 2.0}) + '\n')
    assert [r['size'] for r in ablate.collect(str(workdir))] == ['nano', 'mini']  # by parameters
    assert [r['size'] for r in json.loads((workdir / 'results.json').read_text())['results']] == ['nano', 'mini']
    assert (workdir / 'results.csv').read_text().startswith('size,parameters')
    for plot in ('curves.png', 'scaling.png'):
        assert (workdir / plot).read_bytes()[:4] == b'\x89PNG'
