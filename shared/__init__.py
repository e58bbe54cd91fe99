"""What several DynConfig processes share (README, "Development", has the map): settings, errors,
version and validation at the top; ``runtime`` (what a process runs on), ``changes`` (what a change
is, as it travels), ``security`` (who may do what), ``audit`` (the sealed trail); and the stores:
``db``, ``redis``, ``migrations`` and ``sql`` (the only code that runs SQL)."""
