"""What the absl commands (train, evaluate, demo) print: their own lines and warnings, not the libraries' INFO logs,
and a bad flag or config value as one line naming it.

`OFA_VERBOSE=1` (or absl's `--verbosity=0`) brings the INFO logs back, and with OFA_VERBOSE a failure keeps its
traceback.
"""

import os
import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging

# What a bad command line or config raises while the flags are parsed (ml_collections raises AttributeError and
# KeyError for an unknown --config.KEY, TypeError for a value of the wrong type) or while the run checks its config.
CONFIG_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError)


def verbose() -> bool:
    return bool(os.environ.get('OFA_VERBOSE'))


def fail(program: str, error: BaseException) -> None:
    """Ends the process with one line naming what was wrong (exit status 2)."""
    message = str(error).strip('"\'') or type(error).__name__
    print(f'{program}: error: {message}', file=sys.stderr)
    sys.exit(2)


def run(main: Callable[[Sequence[str]], None]) -> None:
    """absl's app.run with the console's rules: libraries log warnings and errors only, and a ValueError (what the
    project raises for a bad config value) or a flag error ends the run with one line instead of a traceback."""
    spec = getattr(sys.modules['__main__'], '__spec__', None)
    program = f'python -m {spec.name}' if spec else os.path.basename(sys.argv[0])

    def parse(argv: list[str]) -> list[str]:
        try:
            args = flags.FLAGS(argv)
        except CONFIG_ERRORS as error:
            fail(program, error)
        if not verbose() and not flags.FLAGS['verbosity'].present:
            logging.set_verbosity(logging.WARNING)
        return args

    def guarded(argv: Sequence[str]) -> None:
        try:
            main(argv)
        except ValueError as error:
            if verbose():
                raise
            fail(program, error)

    app.run(guarded, flags_parser=parse)
