"""``/metrics``, ``/openapi.json`` and the JSON error shape (SPEC §4, §8), in-process."""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

Client = TestClient[Any, Any]
HISTOGRAM = "dynconfig_http_request_duration_seconds"
# 413's reason phrase changed across RFCs (7231 "Payload Too Large", 9110 "Content Too Large").
PHRASES_413 = {"Payload Too Large", "Content Too Large", "Request Entity Too Large"}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def count_samples(text: str, **labels: str) -> float:
    """The ``_count`` of the request histogram over every series whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != HISTOGRAM:
            continue
        for sample in family.samples:
            if sample.name == f"{HISTOGRAM}_count" and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def metrics_text(client: Client) -> str:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    return await resp.text()


# --- /metrics -----------------------------------------------------------------------------------


async def test_metrics_label_requests_by_route_template_and_status(
    client: Client, token: Callable[..., str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.metrics.present"
    resp = await client.put(f"/keys/{key}", json={"value": 1}, headers=auth(token()))
    assert resp.status == 201
    resp = await client.get(f"/keys/{key}", headers=auth(token()))
    assert resp.status == 200
    resp = await client.get(f"/keys/{unique_prefix}.metrics.absent", headers=auth(token()))
    assert resp.status == 404

    text = await metrics_text(client)
    assert f"# TYPE {HISTOGRAM} histogram" in text
    assert count_samples(text, route="/keys/{key}", status="200", method="GET") >= 1
    assert count_samples(text, route="/keys/{key}", status="201", method="PUT") >= 1
    assert count_samples(text, route="/keys/{key}", status="404", method="GET") >= 1


async def test_metrics_never_contain_raw_key_names(
    client: Client, token: Callable[..., str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}/secret/db.password"
    assert (await client.put(f"/keys/{key}", json={"value": "x"}, headers=auth(token()))).status == 201
    assert (await client.get(f"/keys/{key}", headers=auth(token()))).status == 200
    assert (await client.get(f"/keys/{key}/history", headers=auth(token()))).status == 200
    assert (await client.get(f"/nowhere/{unique_prefix}", headers=auth(token()))).status == 404

    text = await metrics_text(client)
    assert unique_prefix not in text
    assert count_samples(text, route="/keys/{key}/history", status="200") >= 1


async def test_two_apps_in_one_process_each_serve_their_own_metrics(
    make_client: Callable[..., Awaitable[Client]], token: Callable[..., str], unique_prefix: str
) -> None:
    first = await make_client()
    second = await make_client()
    for _ in range(3):
        resp = await first.get(f"/keys/{unique_prefix}.only-first", headers=auth(token()))
        assert resp.status == 404

    first_text = await metrics_text(first)
    second_text = await metrics_text(second)
    assert "Duplicated timeseries" not in first_text + second_text
    assert count_samples(first_text, route="/keys/{key}", status="404") == 3
    # A registry per app: the first app's requests are not counted by the second.
    assert count_samples(second_text, route="/keys/{key}", status="404") == 0


# --- /openapi.json ------------------------------------------------------------------------------


async def openapi(client: Client) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc = json.loads(await resp.text())
    assert isinstance(doc, dict)
    return doc


async def test_openapi_is_version_3_1_0(client: Client) -> None:
    doc = await openapi(client)
    assert doc["openapi"] == "3.1.0"
    assert isinstance(doc["info"]["title"], str)
    assert isinstance(doc["paths"], dict)


async def test_openapi_documents_every_route_of_the_app(client: Client) -> None:
    doc = await openapi(client)
    routes: set[tuple[str, str]] = set()
    for resource in client.app.router.resources():
        for route in resource:
            if route.method not in ("HEAD", "OPTIONS", "*"):
                routes.add((resource.canonical, route.method.lower()))
    assert len(routes) >= 12
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    missing = sorted(routes - documented)
    assert missing == []


async def test_openapi_path_parameters_are_declared(client: Client) -> None:
    doc = await openapi(client)
    for path, ops in doc["paths"].items():
        names = {p["name"] for p in ops.get("parameters", []) if p.get("in") == "path"}
        for method, op in ops.items():
            if method == "parameters":
                continue
            op_names = names | {p["name"] for p in op.get("parameters", []) if p.get("in") == "path"}
            wanted = {part[1:-1] for part in path.split("/") if part.startswith("{")}
            assert wanted <= op_names, (path, method)


# --- the error shape ----------------------------------------------------------------------------


async def _sample_error(case: str, client: Client, token: Callable[..., str], prefix: str) -> Any:
    admin = auth(token())
    if case == "401":
        return await client.get(f"/keys/{prefix}.x")
    if case == "401-bad-token":
        return await client.get(f"/keys/{prefix}.x", headers={"Authorization": "Bearer not.a.jwt"})
    if case == "400-key":
        return await client.get(f"/keys/{prefix}..x", headers=admin)
    if case == "400-json":
        return await client.put(
            f"/keys/{prefix}.x", data=b'{"value": ', headers={**admin, "Content-Type": "application/json"}
        )
    if case == "403":
        key = f"{prefix}.private"
        acls = {"read": ["admin-user"], "write": ["admin-user"]}
        assert (await client.put(f"/keys/{key}", json={"value": 1, "acls": acls}, headers=admin)).status == 201
        return await client.get(f"/keys/{key}", headers=auth(token(f"{prefix}-stranger")))
    if case == "404":
        return await client.get(f"/keys/{prefix}.absent", headers=admin)
    if case == "404-route":
        return await client.get(f"/no-such-route/{prefix}", headers=admin)
    if case == "405":
        return await client.post(f"/keys/{prefix}.x", json={"value": 1}, headers=admin)
    if case == "412":
        key = f"{prefix}.versioned"
        assert (await client.put(f"/keys/{key}", json={"value": 1}, headers=admin)).status == 201
        return await client.put(f"/keys/{key}", json={"value": 2}, headers={**admin, "If-Match": '"7"'})
    if case == "413-value":
        # One byte over 1 MiB of compact JSON ("x" * 1_048_575 plus two quotes), well under the body limit.
        body = json.dumps({"value": "x" * 1_048_575}).encode()
        return await client.put(
            f"/keys/{prefix}.big", data=io.BytesIO(body), headers={**admin, "Content-Type": "application/json"}
        )
    if case == "413-body":
        body = b'{"value": "' + b"x" * (5 * 1024 * 1024) + b'"}'
        return await client.put(
            f"/keys/{prefix}.huge", data=io.BytesIO(body), headers={**admin, "Content-Type": "application/json"}
        )
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "status", "phrase"),
    [
        ("401", 401, "Unauthorized"),
        ("401-bad-token", 401, "Unauthorized"),
        ("400-key", 400, "Bad Request"),
        ("400-json", 400, "Bad Request"),
        ("403", 403, "Forbidden"),
        ("404", 404, "Not Found"),
        ("404-route", 404, "Not Found"),
        ("405", 405, "Method Not Allowed"),
        ("412", 412, "Precondition Failed"),
        ("413-value", 413, None),
        ("413-body", 413, None),
    ],
)
async def test_error_responses_are_json_with_the_error_shape(
    client: Client, token: Callable[..., str], unique_prefix: str, case: str, status: int, phrase: str | None
) -> None:
    resp = await _sample_error(case, client, token, unique_prefix)
    assert resp.status == status
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert isinstance(body, dict)
    assert isinstance(body.get("message"), str) and body["message"]
    assert set(body) <= {"error", "message", "fields"}
    if phrase is None:
        assert body["error"] in PHRASES_413
    else:
        assert body["error"] == phrase
    assert "Traceback" not in body["message"]


async def test_both_413_paths_use_the_same_phrase(
    client: Client, token: Callable[..., str], unique_prefix: str
) -> None:
    value = await (await _sample_error("413-value", client, token, unique_prefix)).json()
    body = await (await _sample_error("413-body", client, token, unique_prefix)).json()
    assert value["error"] == body["error"]
