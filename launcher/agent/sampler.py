"""For a program that reports no progress: stacks sampled now and then say which rank is the straggler.

Every SAMPLE_INTERVAL_S the agent takes every local rank's stack and counts the samples in which it
waited on its peers (launcher.agent.stacks.Stack.waiting). In synchronous data parallelism the slow
rank is the one that rarely waits while the others mostly do.
"""

from __future__ import annotations

import statistics
from collections import Counter

from launcher.agent.stacks import Stack

SAMPLE_INTERVAL_S = 2.0
MIN_SAMPLES = 5
# The others wait in at least this share of the samples, and the straggler in this much less.
OTHERS_WAIT_AT_LEAST, GAP = 0.5, 0.4


class StackSampler:
    def __init__(self) -> None:
        self.samples = 0
        self.waiting: Counter[int] = Counter()
        self.ranks: set[int] = set()
        self.next_at = 0.0
        self.told = False

    def add(self, stacks: dict[int, Stack]) -> None:
        self.samples += 1
        self.ranks.update(stacks)
        self.waiting.update(rank for rank, stack in stacks.items() if stack.waiting)

    def verdict(self) -> str | None:
        """One line naming the straggler, once there are enough samples and one stands out."""
        if self.samples < MIN_SAMPLES or len(self.ranks) < 2:
            return None
        share = {rank: self.waiting[rank] / self.samples for rank in self.ranks}
        slowest = min(sorted(share), key=share.__getitem__)
        others = statistics.median(s for rank, s in share.items() if rank != slowest)
        if others < OTHERS_WAIT_AT_LEAST or share[slowest] > others - GAP:
            return None
        return (f"gangrun: straggler (sampled stacks): rank {slowest} waited on its peers in {share[slowest]:.0%} "
                f"of {self.samples} samples, the other ranks in {others:.0%}: it computes while they wait")
