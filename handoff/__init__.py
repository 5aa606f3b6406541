"""The Redis bridge: stream handoff, handback relay, pub/sub listener, reference data-plane worker."""
