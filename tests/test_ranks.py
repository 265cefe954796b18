"""A running job's ranks and stacks on demand, through the status folder and the rendezvous store,
with real files, a real TCPStore and a real process whose stack is taken."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from launcher.agent.exchange import HangCall, NodeExchange
from launcher.agent.guard import AgentSettings, NodeGuard, write_json_atomic
from launcher.agent.hang import RankView
from launcher.agent.progress import RankProgress
from launcher.agent.stacks import faulthandler_dump, main_thread, parse_threads
from launcher.agent.watchdog import HangTimeout, Watchdog
from launcher.ranks import format_ranks, read_ranks, request_stacks


def test_the_rank_table_merges_every_nodes_file(tmp_path: Path) -> None:
    for node, rank in ((0, 0), (1, 1)):
        write_json_atomic(tmp_path / f"node{node}.json", {"node": node, "ranks": [
            RankProgress(rank, 100.0, 7, "train", 10 + rank, f"host{node}", {"step_p50": 0.012, "step_p95": 0.02})
            .to_json()]})
    rows = read_ranks(tmp_path)
    assert [row["rank"] for row in rows] == [0, 1]
    table = format_ranks(rows, now=103.0).splitlines()
    assert table[0].split() == ["rank", "host", "step", "phase", "step", "p50", "step", "p95", "last", "progress"]
    assert table[2].split() == ["1", "host1", "7", "train", "12.0ms", "20.0ms", "3s", "ago"]
    assert format_ranks([]) == "ranks: none reported yet"


def test_stacks_on_demand_come_from_the_agent_that_watches_the_process(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time\ndef sleeping_here():\n    time.sleep(60)\n"
                                "sleeping_here()"])
    try:
        time.sleep(0.5)
        guard = NodeGuard(AgentSettings(HangTimeout("off"), 30, str(tmp_path)))
        guard._watchdog = Watchdog(HangTimeout("off"), {0: sleeper.pid}, time.time())
        done = threading.Event()

        def monitor_loop() -> None:
            # What the agent's monitor loop does about once a second.
            while not done.is_set():
                guard._publish(time.time() + 60)
                time.sleep(0.1)

        answering = threading.Thread(target=monitor_loop)
        answering.start()
        try:
            text = request_stacks(tmp_path, nodes=1, timeout_s=20)
        finally:
            done.set()
            answering.join()
    finally:
        sleeper.kill()
    assert text.startswith("# rank 0 (") and "sleeping_here (<string>:3)" in text and "Thread " in text


def test_nodes_share_one_hang_call_and_every_nodes_views(tmp_path: Path) -> None:
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10), wait_for_workers=False)
    node0, node1 = NodeExchange(store, 0, 2, attempt=1), NodeExchange(store, 1, 2, attempt=1)
    assert node1.called() is None
    first = node0.call(HangCall(0, 100.0, 9.0))
    # A second caller gets the standing call: one time, one evidence folder for both.
    assert node1.call(HangCall(1, 101.0, 8.0)) == first == node1.called()
    view = RankView(1, "host1", 5, "train", False, False, True, "stall_here() at job.py:8", "", "stall_here")
    threading.Thread(target=node1.views, args=([view],)).start()
    views = node0.views([RankView(0, "host0", 5, "train", False, True, True, "train_step() at loop.py:1", "",
                                  "all_reduce")])
    assert sorted(v.rank for v in views) == [0, 1] and view in views
    assert NodeExchange(store, 0, 2, attempt=2).called() is None


def test_where_py_spy_cannot_attach_the_programs_own_faulthandler_answers(tmp_path: Path) -> None:
    program = ("import sys, time\nsys.path.insert(0, sys.argv[1])\nfrom train.progress import Progress\n"
               "progress = Progress({'GANGRUN_PROGRESS_DIR': sys.argv[2], 'RANK': '0'})\n"
               "def waiting_here():\n    open(sys.argv[2] + '/ready', 'w').close()\n    time.sleep(60)\n"
               "waiting_here()\n")
    rank = subprocess.Popen([sys.executable, "-c", program, str(Path(__file__).parent.parent), str(tmp_path)])
    try:
        deadline = time.monotonic() + 20
        # Only once it sits in waiting_here: the progress file alone comes before (seen under load).
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        text = faulthandler_dump(rank.pid, tmp_path / "rank0.stacks")
    finally:
        rank.kill()
    assert text is not None and 'line 7 in waiting_here' in text
    assert main_thread(parse_threads(text))[0].function == "waiting_here"
