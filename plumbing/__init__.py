"""Plumbing shared by the use cases (layer 3): HTTP error mapping and body reading, client
authentication, background tasks, the runtime a process holds, and the context CLI commands run in.

It imports ca_core, hsm and storage (below it) and nothing above it; docs/architecture.md has the layers.
"""
