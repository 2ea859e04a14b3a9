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


def fail(program: str, error: BaseException, argv: Sequence[str] = ()) -> None:
    """Ends the process with one line naming what was wrong (exit status 2); a KeyError (a key of a config dict
    that it lacks) also names the argument of `argv` that asked for it."""
    message = str(error).strip('"\'') or type(error).__name__
    if isinstance(error, KeyError) or isinstance(error.__context__, KeyError):
        asked = [a.split('=')[0] for a in argv if a.startswith('--') and message in a.split('=')[0]]
        message = f'the config has no key {message!r}' + (f' ({asked[0]})' if asked else '')
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
            fail(program, error, argv)
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
