"""Judging: what an exception, a status or a body means for the breaker and the retries."""
