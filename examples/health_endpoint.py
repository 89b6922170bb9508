"""An aiohttp.web readiness endpoint that reports degraded providers without failing.

    python examples/health_endpoint.py      # then: curl http://127.0.0.1:8080/health/ready

GET /health/ready answers 200 while this replica can serve, and lists the providers whose
circuit is OPEN (or probing, HALF_OPEN) or whose throttle a rate limit paused as ``degraded``:
a provider outage is every replica's outage, so pulling replicas out of the load balancer for it
would only add a second outage (the breakers and fallbacks already answer fast). Page on the
alert rules in docs/ops/ instead. GET /health/breakers returns ``breaker_registry.snapshot()``
for people and dashboards, always 200.
"""

from __future__ import annotations

import os

from aiohttp import web

from llm_circuit_breaker import breaker_registry, circuit_breaker


@circuit_breaker("openai", failure_threshold=5, reset_timeout=30.0)
async def complete(prompt: str) -> str:  # your real client call goes here
    return f"echo: {prompt}"


async def ready(_request: web.Request) -> web.Response:
    snapshot = breaker_registry.snapshot()
    degraded = {
        name: {
            "state": view["state"],
            "retry_after": view["retry_after"],
            "throttle_paused_for": view["throttle"]["paused_for"] or 0.0,
        }
        for name, view in snapshot.items()
        if view["state"] != "CLOSED" or (view["throttle"]["paused_for"] or 0.0) > 0.0
    }
    status = "degraded" if degraded else "ok"
    # 200 either way: this replica serves (refusals and fallbacks answer at once).
    return web.json_response({"status": status, "degraded": degraded})


async def breakers(_request: web.Request) -> web.Response:
    return web.json_response(breaker_registry.snapshot())


async def ask(request: web.Request) -> web.Response:
    return web.json_response({"answer": await complete(request.query.get("q", "hi"))})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/health/breakers", breakers)
    app.router.add_get("/ask", ask)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
