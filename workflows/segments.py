"""Segment tags of handbacks: which segment a handback belongs to, and those kept until their segment opens."""

from __future__ import annotations

from workflows.inputs import Handback


def tag_of(handback: Handback) -> object:
    """The segment tag a handback carries back (metadata.handoff of the graph it was pushed with)."""
    return (handback.graph.get("metadata") or {}).get("handoff")


def not_opened_yet(tag: object, attempt: int, last_opened: int) -> bool:
    """A tag of this attempt for a segment after the last one opened (segments open in order).

    Only a re-run step can be handed back such a segment: an earlier execution of the same step pushed it, and
    its worker died before the step was recorded."""
    if not isinstance(tag, dict) or tag.get("attempt") != attempt:
        return False
    segment = tag.get("segment")
    return isinstance(segment, int) and segment > last_opened


Kept = list[tuple[str, Handback]]  # (signal name, handback)


def reopened(kept: Kept, opened_tag: dict, attempt: int, last_opened: int) -> tuple[Kept, Kept]:
    """(the kept handbacks of the segment just opened, those of segments still to open); older ones are dropped."""
    now = [item for item in kept if tag_of(item[1]) == opened_tag]
    later = [item for item in kept if item not in now and not_opened_yet(tag_of(item[1]), attempt, last_opened)]
    return now, later
