"""One list of deployments: `prefect.yaml` declares, `deployments.serve` serves and the MCP
adapter starts exactly the deployments `schemas.flows.DeploymentName` names."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint

from deployments.serve import SERVED_FLOWS
from schemas.flows import DeploymentName

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_declares_the_deployments_of_the_shared_list():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    declared = set()
    for deployment in config["deployments"]:
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        declared.add(f"{flow.name}/{deployment['name']}")
    assert declared == {name.value for name in DeploymentName}


def test_serve_serves_every_deployment_of_the_list_with_its_flow():
    assert set(SERVED_FLOWS) == set(DeploymentName)
    for name, flow in SERVED_FLOWS.items():
        assert flow.name == name.flow_name, name
