"""The event kinds (SPEC §6) are defined twice, once for the server and once for the independent client:
the two definitions, and the places the server cannot import them into, must agree."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import dynconfig_client
from api_server.openapi import SPEC
from dynconfig_client.models import EventKind as ClientEventKind
from shared.changes.kinds import EventKind
from shared.migrations import MIGRATIONS

REPO = Path(__file__).resolve().parents[2]


def test_client_and_server_kinds_agree() -> None:
    assert [(k.name, k.value) for k in ClientEventKind] == [(k.name, k.value) for k in EventKind]
    assert dynconfig_client.EventKind is ClientEventKind


def test_kinds_are_their_wire_strings() -> None:
    for kind in (*EventKind, *ClientEventKind):
        assert kind == kind.value and f"{kind}" == kind.value
        assert json.dumps({"event": kind}) == json.dumps({"event": kind.value})


def test_schema_check_constraints_list_the_kinds() -> None:
    # Migrations are append-only, so their text keeps its own copy; a later migration that changed
    # the constraint would have to be checked here too.
    schema = "\n".join(m.sql for m in MIGRATIONS)
    checks = re.findall(r"CHECK \(event IN \(([^)]*)\)\)", schema)
    assert len(checks) == 2, checks  # key_history and outbox
    for check in checks:
        assert [item.strip().strip("'") for item in check.split(",")] == [k.value for k in EventKind]


def test_openapi_lists_the_kinds() -> None:
    history = SPEC["components"]["schemas"]["History"]["properties"]["versions"]["items"]["properties"]
    assert history["event"] == {"enum": ["update", "delete", "expired"]}


def test_client_does_not_import_the_server_packages() -> None:
    code = (
        "import sys, dynconfig_client, dynconfig_client.cli\n"
        "server = sorted(m for m in sys.modules if m.split('.')[0] in"
        " {'shared', 'api_server', 'notifier', 'expiry_worker'})\n"
        "assert not server, server\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
