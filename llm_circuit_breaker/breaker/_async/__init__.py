"""The breaker's I/O written once, as coroutines; ``_sync`` holds the generated twins."""
