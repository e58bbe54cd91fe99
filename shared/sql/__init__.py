"""SQL, one module per table: named constants with %(name)s parameters, and the small async functions
that run them and return types. Nothing outside this package runs SQL (but shared/db.py's connection
plumbing and dynconfig_admin/migrate.py's runner); no caller reads a row by position."""


def like_escape(text: str) -> str:
    """``text`` matched literally in a LIKE pattern (``\\`` is the escape character)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
