"""Every side effect the workflow asks for: node-plane services, persistence, publishing, handoff."""
