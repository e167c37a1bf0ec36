"""The service shell: configuration loading, wiring, HTTP plumbing, CLI and the embedded runtime."""
