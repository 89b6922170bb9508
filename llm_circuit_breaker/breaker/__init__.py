"""The breaker: one circuit (in process or linked to a store), its telemetry, and the registry
that shares breakers by name."""
