"""Entry of one worker process:
`python -m jepa_core.runtime.worker [-p MODULE]... RECIPE [overrides]`.

Used by `jepa run --nproc` and by users' own `torchrun ... -m jepa_core.runtime.worker ...`
commands; the arguments are those of `jepa run`, with any `-p MODULE` first.
"""

import sys

from jepa_core.commands.cli import main


def worker_argv(argv: list[str]) -> list[str]:
    """The `jepa` arguments of a spawned worker: the `-p` plugins, then `run` and the rest."""
    head = []
    while len(argv) >= 2 and argv[0] in ("-p", "--plugin"):
        head += argv[:2]
        argv = argv[2:]
    return [*head, "run", *argv]


if __name__ == "__main__":
    sys.exit(main(worker_argv(sys.argv[1:])))
