"""Searching keys as the console does (``GET /keys?namespace=&q=``, ``?prefix=``), on many keys.

    python -m bench.search [--keys 100000] [--runs 20]

Starts its own Postgres and Redis (devtools.services) and a real ``api_server`` on a free loopback
port, stores ``--keys`` keys in one namespace (``bench.search.g<group>.k<n>``, written straight into
Postgres, as bench.scale does: the API would take minutes), one in a thousand of them named
``…readonly…``, and a namespace ACL that lets a plain user read half of the groups. Then it times, as
an admin and as that user, the first page (100 keys, the default) of: a substring found in a
thousandth of the keys (``q=readonly``), one found in none (``q=nothing``), a prefix
(``prefix=bench.search.g7.``), the plain listing and the listing newest first
(``sort=-lastModified``), ``--runs`` times each, and prints the median and
the slowest. Everything it starts is stopped by pid when it ends.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import ExitStack

import psycopg2
import requests

from devtools.devkeys import mint_token
from devtools.services import free_port

from .stack import start_process, stores

NAMESPACE = "bench.search"
GROUPS = 10
READER = "search-reader"


def fill(url: str, keys: int) -> None:
    """``keys`` keys in the namespace, a thousandth of them holding "readonly" (the value is a stand-in:
    a search never opens one); a namespace ACL per group, readable by READER in the even groups."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO keys (key, version, value_enc, creator, deleted, created_at, last_modified)"
            " SELECT %(ns)s || '.g' || (g %% %(groups)s)"
            "        || CASE WHEN g %% 1000 = 0 THEN '.readonly' ELSE '.k' END || g,"
            "        1, '\\x00', 'admin-user', false, now(), now()"
            "   FROM generate_series(1, %(keys)s) g",
            {"ns": NAMESPACE, "groups": GROUPS, "keys": keys},
        )
        for group in range(GROUPS):
            readers = [READER] if group % 2 == 0 else []
            cur.execute(
                "INSERT INTO namespaces (namespace, acl_read, acl_write, updated_by, updated_at)"
                " VALUES (%s, %s, '{}', 'admin-user', now())",
                (f"{NAMESPACE}.g{group}", readers),
            )
        cur.execute("ANALYZE keys")
    conn.close()


def timed(api: str, token: str, query: str, runs: int) -> tuple[float, float, int]:
    """(median ms, slowest ms, keys on the page) of ``runs`` GETs of ``/keys?{query}``."""
    took = []
    found = 0
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        for _ in range(runs):
            started = time.perf_counter()
            answer = session.get(f"{api}/keys?{query}", timeout=30)
            took.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
            found = len(answer.json()["keys"])
    return statistics.median(took), max(took), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with stores() as local, ExitStack() as running:
        fill(local.pg.url, args.keys)
        port = free_port()
        start_process(running, "api_server", local.env(API_PORT=str(port)), port)
        api = f"http://127.0.0.1:{port}"
        tokens = {
            who: mint_token(local.keys.signing_key_path, local.keys.kid, who, ttl_seconds=3600)
            for who in ("admin-user", READER)
        }
        queries = {
            "q=readonly (0.1% match)": f"namespace={NAMESPACE}&q=readonly",
            "q=nothing (no match)": f"namespace={NAMESPACE}&q=nothing",
            "prefix (one group)": f"prefix={NAMESPACE}.g7.",
            "listing, page 1": f"namespace={NAMESPACE}",
            "listing, sort=-lastModified": f"namespace={NAMESPACE}&sort=-lastModified",
        }
        print(f"{args.keys:,} keys in {NAMESPACE}; first page (limit 100), {args.runs} runs each")
        print(f"{'search':<28} {'who':<14} {'median ms':>10} {'max ms':>8} {'keys':>5}")
        for name, query in queries.items():
            for who, token in tokens.items():
                median, slowest, found = timed(api, token, query, args.runs)
                print(f"{name:<28} {who:<14} {median:>10.1f} {slowest:>8.1f} {found:>5}", flush=True)


if __name__ == "__main__":
    main()
