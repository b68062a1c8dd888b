"""The verifiers, one per module; import them from ``tools.verify``, which is the public entry point."""
