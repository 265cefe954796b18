"""A running job's ranks, as the node agents publish them in its status folder, and stacks on demand.

Each agent rewrites ``node<N>.json`` there about once a second (launcher/agent/guard.py). ``gangrun
stacks`` drops a request file that every agent answers with its ranks' stacks; the folder is the
job folder on Slurm (shared by the nodes) and the run's handle folder locally.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

STACKS_REQUEST = "stacks.request"
STACKS_TIMEOUT_S = 30.0


def read_ranks(folder: Path) -> list[dict[str, Any]]:
    """Every rank's newest report across the nodes' files, by rank."""
    rows: list[dict[str, Any]] = []
    for path in sorted(folder.glob("node*.json")):
        try:
            rows.extend(json.loads(path.read_text())["ranks"])
        except (OSError, ValueError, KeyError):
            continue
    return sorted(rows, key=lambda row: int(row["rank"]))


def _ms(value: Any) -> str:
    return f"{float(value) * 1e3:.1f}ms" if isinstance(value, (int, float)) else "-"


def format_ranks(rows: list[dict[str, Any]], now: float | None = None) -> str:
    """One line per rank: host, step, phase, step time p50/p95, and how old its last progress is."""
    if not rows:
        return "ranks: none reported yet"
    now = time.time() if now is None else now
    lines = ["rank  host                  step  phase       step p50  step p95  last progress"]
    for row in rows:
        age = f"{now - float(row['updated']):.0f}s ago" if row.get("updated") else "-"
        lines.append(f"{row['rank']:>4}  {str(row.get('host') or '-')[:20]:<20}  {row.get('step') or 0:>4}  "
                     f"{row.get('phase') or '-'!s:<10}  {_ms(row.get('step_p50')):>8}  {_ms(row.get('step_p95')):>8}"
                     f"  {age}")
    return "\n".join(lines)


def request_stacks(folder: Path, nodes: int, timeout_s: float = STACKS_TIMEOUT_S) -> str:
    """Ask every node's agent for its ranks' stacks now; their dumps, rank by rank, with a header each.

    Raises TimeoutError naming the nodes that did not answer.
    """
    name = f"stacks-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    answer = folder / name
    request = folder / STACKS_REQUEST
    tmp = folder / f".{STACKS_REQUEST}.{uuid.uuid4().hex[:6]}"
    tmp.write_text(name)
    tmp.replace(request)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(list(answer.glob("node*.done"))) < nodes:
        time.sleep(0.2)
    done = sorted(p.stem for p in answer.glob("node*.done"))
    if len(done) < nodes:
        missing = sorted(set(f"node{n}" for n in range(nodes)) - set(done))
        raise TimeoutError(f"no stacks from {', '.join(missing)} within {timeout_s:.0f} s "
                           f"(is the job running? answers so far in {answer})")
    dumps = sorted(answer.glob("rank*.txt"), key=lambda p: int(p.stem.removeprefix("rank")))
    return "\n".join(p.read_text() for p in dumps) + f"\n(also in {answer}/)"


def main(argv: list[str]) -> int:
    """``python -m launcher.ranks ranks|stacks FOLDER``, run inside a pod by `gangrun status|stacks`."""
    command, folder = argv
    if command == "ranks":
        print(json.dumps(read_ranks(Path(folder))))
    else:
        print(request_stacks(Path(folder), 1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
