"""What a change is, in the order it travels: a key's state (state), a change built once (writes),
the names of what happened (kinds: event kinds and audit actions), and the change log's events as
readers get them (events)."""
