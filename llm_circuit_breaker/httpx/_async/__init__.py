"""The asyncio transport, written once; ``_sync/`` holds its generated twin."""
