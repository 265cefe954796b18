"""`python -m train --config NAME|PATH [section.key=value ...]`: the program every rank runs."""

from __future__ import annotations

import sys

from train.compat import torch_floor_problem
from train.contract import EXIT_BAD_INPUT, EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Check the torch floor first: on an older torch one line says so, before any import fails."""
    problem = torch_floor_problem()
    if problem is not None:
        print(f"train: error: torch: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Imported only now: it uses APIs the floor guarantees (DCP's staging among them).
    from train.program import main as run_program

    # torch's @record types the wrapped main as returning int | None.
    code = run_program(argv)
    return EXIT_OK if code is None else code


if __name__ == "__main__":
    sys.exit(main())
