"""A SIMULATOR of the python-plane generation services: fake artifacts of the real shapes, no real generation.

Outputs carry `"simulated": true`; each service takes `seconds` in `steps`, reporting cumulative job progress.
"""

from __future__ import annotations

import asyncio
import logging

from core.timestamps import iso_now
from handoff.dataplane import Handler, NodeCall, NodeFailure
from workflows.graph import job_progress, weight_share

log = logging.getLogger(__name__)

SIMULATED_BUCKET = "output"
# Plausible sizes: ~10 s of 48 kHz 16-bit mono speech, ~10 s of 720p H.264.
SIMULATED_SIZES = {"audio/wav": 960_044, "video/mp4": 4_718_592, "application/octet-stream": 65_536}
EXTENSIONS = {"audio/wav": "wav", "video/mp4": "mp4", "application/octet-stream": "bin"}


def simulated_artifact(call: NodeCall, content_type: str) -> dict:
    return {
        "bucket": SIMULATED_BUCKET,
        "key": f"jobs/{call.job_id}/{call.node['id']}.{EXTENSIONS[content_type]}",
        "size_bytes": SIMULATED_SIZES[content_type],
        "created_at": iso_now(),
        "content_type": content_type,
    }


def require(call: NodeCall, field: str) -> None:
    if call.input.get(field) is None:
        raise NodeFailure("INVALID_INPUT", f"{call.node['service']} needs input.{field} from an upstream node's output")


class Simulator:
    """Serves dummy.dummy_task and the generate.* services with SIMULATED outputs."""

    def __init__(self, seconds: float = 0.0, steps: int = 4):
        self.seconds, self.steps = seconds, max(1, steps)

    def handlers(self) -> dict[str, Handler]:
        return {
            "dummy.dummy_task": self.dummy_task,
            "generate.f5_to_tts": self.f5_to_tts,
            "generate.infinite_talk": self.infinite_talk,
            "generate.upscale_video": self.upscale_video,
        }

    async def dummy_task(self, call: NodeCall) -> dict:
        progress = await self._simulate_work(call)
        preset = (call.node.get("params") or {}).get("preset")
        return {
            "currentProgress": progress,
            "preset": preset,
            "artifact": simulated_artifact(call, "application/octet-stream"),
            "simulated": True,
        }

    async def f5_to_tts(self, call: NodeCall) -> dict:
        progress = await self._simulate_work(call)
        return {"audioArtifact": simulated_artifact(call, "audio/wav"), "currentProgress": progress, "simulated": True}

    async def infinite_talk(self, call: NodeCall) -> dict:
        require(call, "audioArtifact")
        progress = await self._simulate_work(call)
        return {"videoArtifact": simulated_artifact(call, "video/mp4"), "currentProgress": progress, "simulated": True}

    async def upscale_video(self, call: NodeCall) -> dict:
        require(call, "videoArtifact")
        progress = await self._simulate_work(call)
        return {"videoArtifact": simulated_artifact(call, "video/mp4"), "currentProgress": progress, "simulated": True}

    async def _simulate_work(self, call: NodeCall) -> float:
        """Spend `seconds` in `steps`, reporting job progress; returns the node's output currentProgress."""
        failure = (call.node.get("params") or {}).get("simulateFailure")
        if isinstance(failure, str):
            raise NodeFailure("SIMULATED_FAILURE", failure)
        require(call, "currentProgress")
        try:
            so_far = float(call.input["currentProgress"])
        except (TypeError, ValueError):
            raise NodeFailure(
                "INVALID_INPUT", f"input.currentProgress is not a number: {call.input['currentProgress']!r}"
            ) from None
        share = weight_share(call.graph, call.node["id"])
        base = await call.progress.base(so_far)
        log.info(
            "SIMULATING %s for job %s node %s (%.1fs)", call.node["service"], call.job_id, call.node["id"], self.seconds
        )
        await self._report_steps(call, [base + share * step / self.steps for step in range(1, self.steps + 1)])
        # The completed weight with this node, normalised: parallel branches are not counted twice or lost.
        return max(min(1.0, so_far), job_progress(call.graph, also_done=[call.node["id"]]))

    async def _report_steps(self, call: NodeCall, values: list[float]) -> None:
        if self.seconds <= 0:
            await call.progress.report(*values)  # no time passes between the steps: all in one round trip
            return
        for value in values:
            await asyncio.sleep(self.seconds / len(values))
            await call.progress.report(value)
