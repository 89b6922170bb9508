# Generated from the _async twin by tools/unasync.py: edit that file, not this one.
"""The asyncio transport, written once; ``_sync/`` holds its generated twin."""
