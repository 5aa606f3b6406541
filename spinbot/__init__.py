"""Shared pieces no single role owns: settings, contracts, the PostgreSQL store, the CLI."""
