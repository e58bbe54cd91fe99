"""What a refusal's timing tells (SPEC §5: a caller without access gets 403 and learns nothing else).

A real ``python -m api_server`` over real HTTP (one keep-alive connection, timed in the client), a
caller with no access: its 403s for a key that exists (and is cached) and for keys that never existed
must come from the same distribution, for a read and for every write. The statistic is the one of a
Mann-Whitney test: over every pair (a refusal for a missing key, a refusal for the existing one), the
share in which the missing key's answer came first (ties count half); 0.5 when timing tells nothing.
Before the fix: GET 0.06 (an existing key refused on its cached state, one Redis call; a missing one
after a Postgres read too), PUT 0.12 (the committer claims and drops a placeholder row for a missing
key), rollback 0.32, DELETE 0.41, PATCH 0.45.
"""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from support import ADMIN

OUTSIDER = "timing-outsider"
ROUNDS = 300
WARM_UP = 100

# The band: with the fix, over ~70 measurements on this 2-core machine while other suites ran (load
# 3-7), each case stayed within 0.40-0.64 (GET 0.48-0.64, history 0.40-0.51, the writes 0.47-0.61):
# what is left is ~15-30 us of a ~1.2 ms refusal (parsing the Redis reply and the Postgres row of a
# key that exists), which shows more on a quiet machine. The leaks fixed sit at 0.06 (GET) and 0.12
# (PUT). Under no leak the statistic's own standard deviation at 300 + 300 samples is ~0.024.
BAND = (0.30, 0.70)


def p_first(first: list[float], second: list[float]) -> float:
    """Over all pairs, the share in which the ``first`` sample is faster (ties count half)."""
    ordered = sorted(second)
    total = 0.0
    for t in first:
        below = _count_below(ordered, t)
        ties = _count_below(ordered, t, inclusive=True) - below
        total += len(ordered) - below - ties + ties / 2
    return total / (len(first) * len(second))


def _count_below(ordered: list[float], value: float, inclusive: bool = False) -> int:
    return (bisect.bisect_right if inclusive else bisect.bisect_left)(ordered, value)


async def timed_refusal(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], body: Any
) -> float:
    """Seconds from sending the request to its whole 403 answer."""
    started = time.perf_counter()
    async with session.request(method, url, headers=headers, json=body) as resp:
        answer = await resp.read()
    elapsed = time.perf_counter() - started
    assert resp.status == 403, answer
    return elapsed


# (method, path after /keys/{key}, body): a read, then the writes, whose refusals must not tell either.
CALLS = {
    "get": ("GET", "", None),
    "history": ("GET", "/history", None),
    "put": ("PUT", "", {"value": 3}),
    "patch": ("PATCH", "", {"value": 3}),
    "delete": ("DELETE", "", None),
    "rollback": ("POST", "/rollback", {"version": 1}),
}


@pytest.mark.parametrize("call", CALLS)
async def test_a_refusal_takes_as_long_for_a_missing_key_as_for_an_existing_one(
    spawn: Callable[..., Any], token: Callable[..., str], unique_prefix: str, call: str
) -> None:
    method, suffix, body = CALLS[call]
    api = spawn("api_server")
    admin = {"Authorization": f"Bearer {token(ADMIN)}"}
    outsider = {"Authorization": f"Bearer {token(OUTSIDER)}"}
    # Same length as the missing keys below, so the answers have the same size.
    existing = f"{unique_prefix}.k-existing"
    connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection, reused for every request
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.put(f"{api.url}/keys/{existing}", json={"value": {"a": 1}}, headers=admin) as resp:
            assert resp.status == 201, await resp.text()
        for _ in range(3):  # in the cache now
            async with session.get(f"{api.url}/keys/{existing}", headers=admin) as resp:
                assert resp.status == 200

        names = iter(f"{unique_prefix}.k-{n:08d}" for n in range(10**8))  # never the same missing key
        rng = random.Random(9)
        timings: dict[bool, list[float]] = {True: [], False: []}
        for n in range(WARM_UP + ROUNDS):
            pair = [True, False]
            rng.shuffle(pair)  # interleaved, in random order within each pair: drift cancels out
            for missing in pair:
                key = next(names) if missing else existing
                elapsed = await timed_refusal(session, method, f"{api.url}/keys/{key}{suffix}", outsider, body)
                if n >= WARM_UP:
                    timings[missing].append(elapsed)

    p = p_first(timings[True], timings[False])
    missing, present = (sorted(timings[m])[ROUNDS // 2] * 1e3 for m in (True, False))
    detail = f"{call}: P(missing faster) = {p:.3f}; medians: missing {missing:.3f} ms, existing {present:.3f} ms"
    print(detail)
    assert BAND[0] <= p <= BAND[1], detail
