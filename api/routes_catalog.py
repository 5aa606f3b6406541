"""GET /api/pipelines: the fixed pipelines a job can be planned from (config/pipelines.json)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import BackendDep
from api.models import PipelineList

router = APIRouter(prefix="/api", tags=["pipelines"])

NODE_FIELDS = ("id", "name", "service", "plane", "progressWeight", "params")


@router.get("/pipelines", response_model=PipelineList)
async def pipelines(backend: BackendDep):
    """Every pipeline: its nodes (id, name, service, plane, weight, default params), edges and weights."""
    listed = []
    for name, template in sorted(backend.contracts.pipelines.items()):
        nodes = [{field: node[field] for field in NODE_FIELDS if field in node} for node in template["nodes"]]
        weights = {node["id"]: float(node.get("progressWeight", 0)) for node in template["nodes"]}
        edges = [
            {"from": edge["from"], "to": edge["to"], "kind": edge.get("kind", "normal")} for edge in template["edges"]
        ]
        listed.append({"name": name, "nodes": nodes, "edges": edges, "weights": weights})
    return {"pipelines": listed}
