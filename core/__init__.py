"""The shared floor every role stands on: settings, contracts, store, Redis keys and clients, metrics,
logging, retry, object storage, the planner, wire-message parsing, the Temporal connection.

Imports only `workflows`, `config` and `migrations`; every role (`activities`, `handoff`, `api`) builds on it.
"""
