"""The MCP tools and the flows they start cannot drift apart: every tool that does work names
the deployment it starts, that deployment is served, and each of the tool's flow parameters
accepts exactly what the flow's parameter accepts (same JSON schema, descriptions aside)."""

from __future__ import annotations

from typing import Any

import pytest
from fastmcp import Client

from deployments.serve import SERVED_FLOWS
from mcp_adapter.server import server
from schemas.flows import DeploymentName

pytestmark = pytest.mark.anyio

TOOL_ONLY = {"idempotency_key", "wait_seconds"}
"""Arguments of the tool itself (which run, how long to wait), not of the flow."""
READS_OR_STEERS = {
    "get_job_status",
    "list_jobs",
    "get_job_logs",
    "approve_job",
    "reject_job",
    "cancel_job",
}
WORDING = {"title", "description", "examples", "position"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def resolved(schema: Any, definitions: dict[str, Any]) -> Any:
    """`schema` with every `$ref` replaced by its definition and the wording left out."""
    if isinstance(schema, list):
        return [resolved(item, definitions) for item in schema]
    if not isinstance(schema, dict):
        return schema
    own = {k: resolved(v, definitions) for k, v in schema.items() if k not in WORDING}
    if "$ref" in own:  # pydantic writes a reference either bare or beside a default
        return {**resolved(definitions[own.pop("$ref").rsplit("/", 1)[-1]], definitions), **own}
    if list(own.get("allOf") or []) and len(own["allOf"]) == 1:
        return {**own.pop("allOf")[0], **own}
    return own


async def test_every_tool_that_does_work_starts_a_served_deployment_with_the_flows_types():
    async with Client(server) as client:
        tools = await client.list_tools()
    starting = {t.name: t for t in tools if (t.meta or {}).get("deployment")}
    assert set(starting) | READS_OR_STEERS == {t.name for t in tools}
    assert {DeploymentName(t.meta["deployment"]) for t in starting.values()} <= set(SERVED_FLOWS)

    for name, tool in starting.items():
        flow = SERVED_FLOWS[DeploymentName(tool.meta["deployment"])]
        flow_schema = flow.parameters.model_dump()
        flow_properties = flow_schema["properties"]
        tool_schema = tool.input_schema
        arguments = set(tool_schema["properties"]) - TOOL_ONLY
        assert arguments <= set(flow_properties), f"{name} sends parameters {flow.name} lacks"
        assert set(flow_schema.get("required") or []) <= arguments, f"{name} misses a required one"
        for argument in arguments:
            tool_side = resolved(tool_schema["properties"][argument], tool_schema.get("$defs", {}))
            flow_side = resolved(flow_properties[argument], flow_schema.get("definitions") or {})
            assert tool_side == flow_side, f"{name}({argument}) and {flow.name}({argument}) differ"
