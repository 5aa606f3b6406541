"""No request waits on the thread pool for a dependency: FastAPI runs a plain `def` dependency in a worker thread,
a hop per dependency per request that made GET /api/status ~10 ms slower under load (bench). Every dependency
of every route, the ones routers add included, is a coroutine function."""

from __future__ import annotations

import inspect

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from api.app import create_app
from core.settings import Settings


def _dependencies(dependant: Dependant):
    for sub in dependant.dependencies:
        yield sub.call
        yield from _dependencies(sub)


def test_every_route_dependency_is_a_coroutine_function():
    app = create_app(Settings())
    # Route contexts, not app.routes: an included router's routes carry the dependencies it was included with.
    routes = [route for route in iter_route_contexts(app.routes) if getattr(route, "dependant", None) is not None]
    assert len(routes) > 10
    walked = {call.__name__ for route in routes for call in _dependencies(route.dependant) if call}
    assert {"require_key", "get_backend"} <= walked, "the routers' own dependencies are walked too"
    threaded = {
        f"{route.path}: {call.__module__}.{call.__qualname__}"
        for route in routes
        for call in _dependencies(route.dependant)
        if call is not None and not inspect.iscoroutinefunction(call)
    }
    assert not threaded, f"dependencies run in the thread pool: {sorted(threaded)}"


def test_the_check_sees_a_plain_def_dependency():
    """The control: the same walk finds a `def` dependency when there is one."""
    from fastapi import Depends, FastAPI

    def plain() -> int:
        return 1

    app = FastAPI()

    @app.get("/x")
    async def x(value: int = Depends(plain)) -> int:
        return value

    route = next(r for r in app.routes if isinstance(r, APIRoute))
    assert [call for call in _dependencies(route.dependant) if not inspect.iscoroutinefunction(call)] == [plain]
