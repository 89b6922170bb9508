"""A real 3-node Redis Cluster on free loopback ports, made from plain ``redis-server
--cluster-enabled yes`` processes: slots assigned with CLUSTER ADDSLOTSRANGE and the nodes
introduced with CLUSTER MEET from Python (no other tool)."""

from __future__ import annotations

import os
import time

import pytest
import redis

from tests.redis_server import RedisServer, free_port

SLOTS = 16384


class RedisCluster:
    """Three primaries, each a third of the slots; started and stopped as one."""

    def __init__(self, nodes: int = 3) -> None:
        self.buses = [free_port() for _ in range(nodes)]  # each node's cluster bus port
        self.servers = [
            RedisServer("--cluster-enabled", "yes", "--cluster-port", str(bus),
                        "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000")
            for bus in self.buses
        ]  # fmt: skip

    @property
    def url(self) -> str:
        """Any node's URL (a cluster client finds the others)."""
        return self.servers[0].url

    def start(self) -> None:
        for server in self.servers:
            server.start()
        version = redis.Redis(port=self.servers[0].port).info("server")["redis_version"]
        if int(str(version).split(".")[0]) < 7:  # CLUSTER ADDSLOTSRANGE, --cluster-port
            self.stop()
            reason = f"the cluster tests need redis-server >= 7, this is {version}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        clients = [redis.Redis(port=s.port, socket_timeout=5) for s in self.servers]
        share = SLOTS // len(clients)
        for index, client in enumerate(clients):
            first = index * share
            last = SLOTS - 1 if index == len(clients) - 1 else first + share - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        for server, bus in zip(self.servers[1:], self.buses[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", server.port, bus)
        deadline = time.monotonic() + 60  # the nodes gossip until each knows every slot
        while not all(self._ready(c, len(clients)) for c in clients):
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not come up within 60 s")
            time.sleep(0.05)
        for client in clients:
            client.close()

    @staticmethod
    def _ready(client: redis.Redis, nodes: int) -> bool:
        info = client.cluster("INFO")
        return bool(
            info.get("cluster_state") == "ok"
            and int(info.get("cluster_known_nodes", 0)) == nodes
            and int(info.get("cluster_slots_ok", 0)) == SLOTS
        )

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def flush(self) -> None:
        for server in self.servers:
            client = redis.Redis(port=server.port, socket_timeout=5)
            client.flushall()
            client.close()
