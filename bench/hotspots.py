"""Where a py-spy profile's time goes, by function (see bench/README.md, "Profiles").

    python -m bench.hotspots PROFILE.txt [--top 30] [--match TEXT]

Reads py-spy's collapsed stacks (``--format raw``, as ``bench.compare --profile`` writes them) and prints
each function's share of all samples: inclusive (on the stack) and self (at the top). Frames are named
``function (file)`` with line numbers dropped, so one function counts once however many lines it spans.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    """``handle (aiohttp/web_protocol.py:512)`` → ``handle (aiohttp/web_protocol.py)``."""
    name = _LINE.sub(")", frame.strip())
    return re.sub(r"\(.*?/(site-packages|lib/python3\.\d+)/", "(", name)


def hotspots(text: str) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, and samples per function: inclusive and self."""
    total, inclusive, own = 0, Counter[str](), Counter[str]()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [frame_name(f) for f in stack.split(";") if f]
        for name in set(frames):
            inclusive[name] += n
        if frames:
            own[frames[-1]] += n
    return total, inclusive, own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--match", default="", help="only functions whose name contains this")
    args = parser.parse_args()
    total, inclusive, own = hotspots(args.profile.read_text())
    if not total:
        raise SystemExit(f"{args.profile}: no samples")
    print(f"{total:,} samples")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"\n{title}:")
        rows = [(name, n) for name, n in counter.most_common() if args.match in name][: args.top]
        for name, n in rows:
            print(f"{100 * n / total:6.1f}%  {name}")


if __name__ == "__main__":
    main()
