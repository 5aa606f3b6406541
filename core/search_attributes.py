"""The custom search attributes spinbot uses, registered in the Temporal namespace at start-up (idempotently)."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from core.temporal import RPC_TIMEOUT
from workflows.names import SEARCH_ATTRIBUTES

KEYWORD = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
# What Temporal Cloud (or a locked-down cluster) answers when a client may not manage search attributes.
FORBIDDEN = (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED, RPCStatusCode.UNAUTHENTICATED)


class SearchAttributesMissing(RuntimeError):
    """Search attributes spinbot needs are missing and this client may not create them."""


def how_to_create(namespace: str, names: list[str], reason: str) -> str:
    """One line: which attributes to create, and the command for a cluster and for Temporal Cloud."""
    cli = " ".join(f"--name {name} --type Keyword" for name in names)
    cloud = " ".join(f"--search-attribute {name}=Keyword" for name in names)
    return (
        f"search attributes {', '.join(names)} (Keyword) are missing in Temporal namespace {namespace!r} and this "
        f"client may not create them ({reason}); create them once, then start again: "
        f"`temporal operator search-attribute create --namespace {namespace} {cli}` "
        f"(Temporal Cloud: `tcld namespace search-attributes add --namespace {namespace} {cloud}`)"
    )


async def _defined(client: Client, name: str) -> bool:
    """Whether a visibility query may name `name`: works where the operator service is closed to us."""
    try:
        await client.count_workflows(f"{name} = ''", rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            return False
        raise
    return True


async def missing_search_attributes(client: Client, names: tuple[str, ...] = SEARCH_ATTRIBUTES) -> list[str]:
    """The attributes of `names` the namespace does not define yet."""
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace), timeout=RPC_TIMEOUT
        )
    except RPCError as exc:
        if exc.status not in FORBIDDEN:
            raise
        return [name for name in names if not await _defined(client, name)]
    known = {**listed.system_attributes, **listed.custom_attributes}
    wrong = [name for name in names if name in known and known[name] != KEYWORD]
    if wrong:
        raise SearchAttributesMissing(
            f"search attributes {', '.join(wrong)} exist in Temporal namespace {client.namespace!r} with another "
            "type; spinbot needs them as Keyword"
        )
    return [name for name in names if name not in known]


async def ensure_search_attributes(client: Client, names: tuple[str, ...] = SEARCH_ATTRIBUTES) -> list[str]:
    """Register whichever of `names` is missing (as Keyword) and return those; [] when all exist already.

    Raises SearchAttributesMissing, naming what to create and how, where the server forbids registering.
    """
    missing = await missing_search_attributes(client, names)
    if not missing:
        return []
    request = AddSearchAttributesRequest(namespace=client.namespace, search_attributes=dict.fromkeys(missing, KEYWORD))
    try:
        await client.operator_service.add_search_attributes(request, timeout=RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status in FORBIDDEN:
            reason = f"{exc.status.name}: {exc.message}"
            raise SearchAttributesMissing(how_to_create(client.namespace, missing, reason)) from None
        raise
    return missing
