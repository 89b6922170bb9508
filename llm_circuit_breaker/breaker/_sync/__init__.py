# Generated from the _async twin by tools/unasync.py: edit that file, not this one.
"""The breaker's I/O written once, as coroutines; ``_sync`` holds the generated twins."""
