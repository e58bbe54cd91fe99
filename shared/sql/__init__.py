"""SQL, one module per table, as named constants with %(name)s parameters."""
