"""The api_server's care of the audit chain (shared/audit/chain.py), one supervised loop per process.

At start it seals the genesis if no process has (shared/audit/adopt.py), and, with ``AUDIT_HMAC_KEY``
newly configured, a record sealed with it so derived keys stop being valid at once. Then, every
``AUDIT_CHECKPOINT_SECONDS``, it takes a checkpoint of the head out of the database: one log line
``audit checkpoint SEQ:MAC`` (written whatever ``LOG_LEVEL`` says: it is what a table put back as it
was is caught against, with ``dynconfig-audit verify --checkpoint``) and two gauges with the same
numbers, ``dynconfig_audit_checkpoint_seq`` and ``dynconfig_audit_checkpoint_mac48`` (the MAC part as
an integer: ``printf '%d:%012x' SEQ MAC48`` gives the token back from Prometheus). Every api_server
does it: one small read per minute, and a deployment always has one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiopg
from aiohttp import web

from api_server.metrics import API_METRICS, ApiMetrics
from shared.audit.adopt import read_head, seal_genesis, seal_key_switch
from shared.audit.chain import AUDIT_CHAIN, AuditChain
from shared.audit.verify import Checkpoint
from shared.db import DB_POOL
from shared.runtime.supervisor import SUPERVISOR, cancel_and_wait
from shared.settings import SETTINGS

log = logging.getLogger(__name__)
checkpoint_log = logging.getLogger(f"{__name__}.checkpoint")


def take_checkpoint(checkpoint: Checkpoint, metrics: ApiMetrics) -> None:
    """Send ``checkpoint`` out of the database: a log line and the two gauges."""
    checkpoint_log.info("audit checkpoint %s", checkpoint.token)
    metrics.audit_checkpoint_seq.set(checkpoint.seq)
    metrics.audit_checkpoint_mac48.set(int.from_bytes(checkpoint.mac, "big"))


async def keep(pool: aiopg.Pool, chain: AuditChain, metrics: ApiMetrics, every: float) -> None:
    """The loop (supervised: a failure is logged, counted and retried, the genesis included)."""
    await seal_genesis(pool, chain)
    await seal_key_switch(pool, chain)
    while True:
        head, _ = await read_head(pool)
        take_checkpoint(Checkpoint.of(head), metrics)
        await asyncio.sleep(every)


async def audit_keeper_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the keeper's loop (needs ``pool_ctx``)."""
    checkpoint_log.setLevel(logging.INFO)
    every = app[SETTINGS].audit_checkpoint_seconds

    async def loop() -> None:
        await keep(app[DB_POOL], app[AUDIT_CHAIN], app[API_METRICS], every)

    task = app[SUPERVISOR].spawn("audit-keeper", loop)
    try:
        yield
    finally:
        await cancel_and_wait(task)
