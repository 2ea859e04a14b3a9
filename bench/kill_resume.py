"""Kills training with SIGKILL many times at random moments (in steps, in asynchronous saves, in restores), resumes it
after each, and checks every logged loss and the final state against a straight run, bit for bit.

    python bench/kill_resume.py [--kills 20] [--seed 0] [--out bench/kill_resume.json]

Prints and writes the kills (phase, delay, whether the save or restore was still in flight) and the figures; exits
non-zero on any difference. The same check with 6 kills is tests/test_faults.py::test_random_kills_lose_nothing.
"""

import argparse
import json
import pathlib
import tempfile

import _common  # noqa: F401  (puts tests/ on the path)
from kill_resume import kill_and_resume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--kills', type=int, default=20)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='bench/kill_resume.json')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        report = kill_and_resume(pathlib.Path(root), args.kills, args.seed)
    in_flight = {
        phase: f'{sum(k["in_flight"] for k in report["kills"] if k["phase"] == phase)} of '
        f'{sum(k["phase"] == phase for k in report["kills"])}'
        for phase in ('step', 'save', 'restore')
    }
    report['in_flight_by_phase'] = in_flight
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != 'kills'}, indent=2))
    print(f'{len(report["kills"])} kills, every loss and the final state equal to the straight run; wrote {args.out}')


if __name__ == '__main__':
    main()
