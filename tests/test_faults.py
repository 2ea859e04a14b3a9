"""Faults a long run meets: SIGKILL at random moments."""

import pytest
from kill_resume import kill_and_resume


@pytest.mark.slow
def test_random_kills_lose_nothing(tmp_path):
    report = kill_and_resume(tmp_path, kills=6, seed=0)
    assert [k['phase'] for k in report['kills']] == ['step', 'save', 'restore', 'step', 'save', 'restore']
    print(report)
