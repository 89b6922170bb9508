"""An aiohttp.web health endpoint that serves the breakers' states.

    python examples/health_endpoint.py      # then: curl http://127.0.0.1:8080/health/breakers

GET /health/breakers returns ``breaker_registry.snapshot()``: 200 while every circuit is
CLOSED or HALF_OPEN, 503 while any is OPEN (so a load balancer can route around this replica).
"""

from __future__ import annotations

import os

from aiohttp import web

from llm_circuit_breaker import breaker_registry, circuit_breaker


@circuit_breaker("openai", failure_threshold=5, reset_timeout=30.0)
async def complete(prompt: str) -> str:  # your real client call goes here
    return f"echo: {prompt}"


async def breakers(_request: web.Request) -> web.Response:
    snapshot = breaker_registry.snapshot()
    down = any(view["state"] == "OPEN" for view in snapshot.values())
    return web.json_response(snapshot, status=503 if down else 200)


async def ask(request: web.Request) -> web.Response:
    return web.json_response({"answer": await complete(request.query.get("q", "hi"))})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/health/breakers", breakers)
    app.router.add_get("/ask", ask)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
