"""`python -m train --config NAME|PATH [section.key=value ...]`: the program every rank runs, or its check mode."""

from __future__ import annotations

import os
import sys

from train.contract import CHECK_ENV
from train.notice import NOTICE


def main(argv: list[str] | None = None) -> int:
    """Report startup, then check the torch floor: on an older torch one line says so, before any import fails."""
    from train.progress import Progress

    progress = Progress()
    from train.compat import torch_floor_problem
    from train.contract import EXIT_BAD_INPUT, EXIT_OK

    problem = torch_floor_problem()
    if problem is not None:
        print(f"train: error: torch: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Imported only now: it uses APIs the floor guarantees (DCP's staging among them).
    from train.program import main as run_program

    # torch's @record types the wrapped main as returning int | None.
    code = run_program(argv, progress)
    return EXIT_OK if code is None else code


if __name__ == "__main__":
    if os.environ.get(CHECK_ENV) == "1":
        from train.check import main as check

        sys.exit(check())
    # First, before torch is imported (seconds): from here on a stop signal is noted, never fatal.
    NOTICE.install()
    code = main()
    NOTICE.settle()
    sys.exit(code)
