"""The ``audit_log`` table and the audit chain's head (``audit_chain``, one row)."""

#: The sealed columns, in the order shared.auditchain.Entry and the statements below take them.
SEALED = "at, actor, action, key, version, outcome, request_id"

#: Sealed too, when set (migration 9): ``detail`` of the chain's own records (adoptions, key
#: switches) and, on the first row of each batch, the head it was appended after (``link_*``).
LINKED = "detail, link_seq, link_seal"

#: Moves the chain's head past the rows just sealed and seals it (shared.auditchain.seal_head); ends
#: every statement that appends sealed rows.
ADVANCE = """
UPDATE audit_chain
   SET seq = %(head_seq)s, mac = %(head_mac)s, sealed_seq = %(head_seq)s, sealed_mac = %(head_mac)s,
       seal = %(seal)s, seal_key = %(seal_key)s, adopted_through = %(adopted_through)s
"""

#: A batch in one statement: one array per column, rows in order, each sealed by the audit chain
#: (``seq``, ``mac``, ``mac_key``, ``link_*``, from shared.auditchain.AuditChain.columns), and the
#: chain's head moved past them. The head must have been locked in this transaction (``HEAD_FOR_UPDATE``).
INSERT_MANY = f"""
WITH rows AS (
    INSERT INTO audit_log ({SEALED}, {LINKED}, seq, mac, mac_key)
    SELECT * FROM unnest(%(at)s::timestamptz[], %(actor)s::text[], %(action)s::text[], %(key)s::text[],
                         %(version)s::bigint[], %(outcome)s::text[], %(request_id)s::text[],
                         %(detail)s::text[], %(link_seq)s::bigint[], %(link_seal)s::bytea[],
                         %(seq)s::bigint[], %(mac)s::bytea[], %(mac_key)s::text[])
)
{ADVANCE}
"""

_HEAD = "seq, mac, sealed_seq, sealed_mac, seal, seal_key, adopted_through"

#: The chain's head (shared.auditchain.Head), locked until COMMIT: appenders queue here, so seq order
#: is commit order.
HEAD_FOR_UPDATE = f"SELECT {_HEAD} FROM audit_chain FOR UPDATE"

#: The head as it is now, and the last id written before the chain began (migration 8).
HEAD = f"SELECT {_HEAD}, legacy_through FROM audit_chain"

#: A page of sealed rows in chain order, as shared.auditchain.Row.from_db reads them.
SEALED_PAGE = f"""
SELECT id, seq, {SEALED}, {LINKED}, mac, mac_key FROM audit_log
 WHERE seq > %(after)s AND (%(through)s::bigint IS NULL OR seq <= %(through)s)
 ORDER BY seq
 LIMIT %(limit)s
"""

#: The first sealed row past the head, if any: none can be there honestly (a row and the head that
#: names it commit together), and the walk, which stops at the head, would never look at it.
SEALED_BEYOND_HEAD = f"""
SELECT id, seq, {SEALED}, {LINKED}, mac, mac_key FROM audit_log
 WHERE seq > (SELECT seq FROM audit_chain)
 ORDER BY seq
 LIMIT 1
"""

#: A page of rows without a seal, in id order (ids after ``after``, up to ``through`` when given), as
#: shared.auditadopt digests them.
UNSEALED_PAGE = f"""
SELECT id, {SEALED} FROM audit_log
 WHERE seq IS NULL AND id > %(after)s AND (%(through)s::bigint IS NULL OR id <= %(through)s)
 ORDER BY id
 LIMIT %(limit)s
"""

LAST_UNSEALED_ID = "SELECT max(id) FROM audit_log WHERE seq IS NULL"

#: Every version of a key (``key_history``) that no audit row records as written (same key and
#: version, outcome ok), in a fixed order, with its time; only those written at ``since`` or later
#: when it is given (after a prune: shared/auditprune.py). One statement: one snapshot, and a change
#: commits its version and its audit row together, so a write in flight is never half seen.
UNAUDITED_VERSIONS = """
SELECT h.key, h.version, h.at FROM key_history h
 WHERE (%(since)s::timestamptz IS NULL OR h.at >= %(since)s)
   AND NOT EXISTS (
       SELECT 1 FROM audit_log a WHERE a.key = h.key AND a.version = h.version AND a.outcome = 'ok')
 ORDER BY h.key COLLATE "C", h.version
"""

# Newest first by time, then id; each filter is skipped when its parameter is NULL. The cursor is the
# (at, id) of the last record of the previous page.
PAGE = """
SELECT id, at, actor, action, key, version, outcome, request_id, seq IS NOT NULL FROM audit_log
 WHERE (%(key)s::text IS NULL OR key = %(key)s)
   AND (%(actor)s::text IS NULL OR actor = %(actor)s)
   AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
   AND (%(before_at)s::timestamptz IS NULL OR (at, id) < (%(before_at)s, %(before_id)s::bigint))
 ORDER BY at DESC, id DESC
 LIMIT %(limit)s
"""

# --- retention (shared/auditprune.py, shared/retention.py) -----------------------------------------

#: The newest few of the chain's own records of one kind (``actor`` system:audit, so the index on
#: (actor, at, id) finds them among millions), newest first; the caller takes the highest seq.
LATEST_RECORDS = f"""
SELECT id, seq, {SEALED}, {LINKED}, mac, mac_key FROM audit_log
 WHERE actor = %(actor)s AND action = %(action)s AND seq IS NOT NULL
 ORDER BY at DESC, id DESC
 LIMIT %(limit)s
"""

#: The oldest of the chain's own records of one kind (the genesis, for ``audit.adopt``).
FIRST_RECORD = f"""
SELECT id, seq, {SEALED}, {LINKED}, mac, mac_key FROM audit_log
 WHERE actor = %(actor)s AND action = %(action)s AND seq IS NOT NULL
 ORDER BY at, id
 LIMIT 1
"""

#: Deleting pruned rows (seq up to a prune record's anchor) waits for no verification in progress: each
#: batch takes this lock exclusively (``pg_try_advisory_xact_lock``, never waiting), ``verify`` holds it
#: shared for its whole walk (on a session, so a long walk never sits idle in a transaction).
PRUNE_DELETE_LOCK = 0x44594E56  # "DYNV"
TRY_DELETE_LOCK = f"SELECT pg_try_advisory_xact_lock({PRUNE_DELETE_LOCK})"
HOLD_AGAINST_DELETES = f"SELECT pg_advisory_lock_shared({PRUNE_DELETE_LOCK})"
RELEASE_AGAINST_DELETES = f"SELECT pg_advisory_unlock_shared({PRUNE_DELETE_LOCK})"

#: One batch of the oldest sealed rows a prune record removed (seq up to ``through``): a short
#: transaction on the unique index on seq, touching no row a writer touches; how many went.
DELETE_PRUNED = """
WITH gone AS (
    DELETE FROM audit_log WHERE id IN (
        SELECT id FROM audit_log WHERE seq <= %(through)s ORDER BY seq LIMIT %(limit)s
    ) RETURNING 1
)
SELECT count(*) FROM gone
"""
