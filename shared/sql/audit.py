"""The ``audit_log`` table."""

#: The sealed columns, in the order shared.auditchain.Entry and the statements below take them.
SEALED = "at, actor, action, key, version, outcome, request_id"

#: Moves the chain's head past the rows just sealed; ends every statement that appends sealed rows.
ADVANCE = "UPDATE audit_chain SET seq = %(head_seq)s, mac = %(head_mac)s"

#: A batch in one statement: one array per column, rows in order, each sealed by the audit chain
#: (``seq``, ``mac``, ``mac_key``, from shared.auditchain.AuditChain.columns), and the chain's head
#: moved past them. The head must have been locked in this transaction (``CHAIN_HEAD_FOR_UPDATE``).
INSERT_MANY = f"""
WITH rows AS (
    INSERT INTO audit_log ({SEALED}, seq, mac, mac_key)
    SELECT * FROM unnest(%(at)s::timestamptz[], %(actor)s::text[], %(action)s::text[], %(key)s::text[],
                         %(version)s::bigint[], %(outcome)s::text[], %(request_id)s::text[],
                         %(seq)s::bigint[], %(mac)s::bytea[], %(mac_key)s::text[])
)
{ADVANCE}
"""

#: The chain's head, locked until COMMIT: appenders queue here, so seq order is commit order.
CHAIN_HEAD_FOR_UPDATE = "SELECT seq, mac FROM audit_chain FOR UPDATE"

#: The head, and the last id written before the chain began (rows up to it carry no seal).
CHAIN_STATE = "SELECT seq, mac, legacy_through FROM audit_chain"

#: A page of sealed rows in chain order, as shared.auditchain.Row.from_db reads them.
SEALED_PAGE = f"""
SELECT id, seq, {SEALED}, mac, mac_key FROM audit_log
 WHERE seq > %(after)s AND (%(through)s::bigint IS NULL OR seq <= %(through)s)
 ORDER BY seq
 LIMIT %(limit)s
"""

#: The first row without a seal written after the chain began: one nobody who appends could have made.
FIRST_UNSEALED_AFTER = f"""
SELECT id, seq, {SEALED}, mac, mac_key FROM audit_log WHERE seq IS NULL AND id > %(after)s ORDER BY id LIMIT 1
"""

COUNT_UNSEALED_THROUGH = "SELECT count(*) FROM audit_log WHERE seq IS NULL AND id <= %(through)s"

# Newest first by time, then id; each filter is skipped when its parameter is NULL. The cursor is the
# (at, id) of the last record of the previous page.
PAGE = """
SELECT id, at, actor, action, key, version, outcome, request_id FROM audit_log
 WHERE (%(key)s::text IS NULL OR key = %(key)s)
   AND (%(actor)s::text IS NULL OR actor = %(actor)s)
   AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
   AND (%(before_at)s::timestamptz IS NULL OR (at, id) < (%(before_at)s, %(before_id)s::bigint))
 ORDER BY at DESC, id DESC
 LIMIT %(limit)s
"""
