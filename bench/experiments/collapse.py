"""Summarise py-spy ``--format raw`` (collapsed) stacks: self time by function, and
inclusive time of chosen functions, per thread kind.

    python bench/experiments/collapse.py FILE.raw [pattern ...]
"""

from __future__ import annotations

import collections
import re
import sys


def main() -> None:
    path, patterns = sys.argv[1], sys.argv[2:]
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as fh:
        lines = fh.readlines()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        thread = re.sub(r"\d+", "N", frames[0])
        threads[thread] += n
        leaf = frames[-1]
        self_t[re.sub(r":\d+\)", ")", leaf)] += n
        seen = set()
        for f in frames:
            for p in patterns:
                if p in f and p not in seen:
                    seen.add(p)
                    incl[p] += n
    print(f"samples: {total}")
    print("by thread:")
    for t, n in threads.most_common(10):
        print(f"  {n / total:6.1%}  {t}")
    print("self (top 30):")
    for f, n in self_t.most_common(30):
        print(f"  {n / total:6.1%}  {f[:150]}")
    if patterns:
        print("inclusive:")
        for p in patterns:
            print(f"  {incl[p] / total:6.1%}  {p}")


if __name__ == "__main__":
    main()
