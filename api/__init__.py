"""FastAPI app: routes, WebSocket hub, request models, planner entry points, auth, metrics."""
