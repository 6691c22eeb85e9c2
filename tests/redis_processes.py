"""Real Redis processes for tests: a server, a Cluster and a Sentinel deployment.

``RedisServer``: one private ``redis-server`` that a test may kill, pause and start again.
``RedisClusterNodes``: 3 masters and 3 replicas on free ports, joined by
``redis-cli --cluster create … --cluster-replicas 1 --cluster-yes``; a short node
timeout (1 s) so that a killed master's replica takes over within seconds.
``RedisSentinelSet``: a master, its replica and 3 sentinels watching it (quorum 2,
master down after 1 s).

Both are started by the session fixtures in conftest and stopped at the end; tests that
kill a node take a set of their own from the factory fixtures.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

__all__ = ["RedisServer", "RedisClusterNodes", "RedisSentinelSet", "SERVICE", "free_port"]

SERVICE = "tollway-test"
NODE_TIMEOUT_MS = 1000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` process that tests may kill and start again."""

    def __init__(
        self, executable: str, directory: Path, port: int | None = None,
        extra: tuple[str, ...] = (), config: str | None = None,
    ) -> None:
        """``extra``: more ``redis-server`` arguments (cluster, replication); ``config``:
        the text of a config file to start from (a sentinel needs one it can rewrite)."""
        self.executable = executable
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)  # type: ignore[arg-type]

    def start(self, timeout: float = 10.0) -> None:
        """Start on ``self.port`` and wait until it answers PING."""
        if self.running:
            return
        head: list[str] = [self.executable]
        if self.config is not None:
            conf = self.directory / f"redis-{self.port}.conf"
            if not conf.exists():  # a restart keeps what the server rewrote
                conf.write_text(self.config)
            head.append(str(conf))
        self._process = subprocess.Popen(
            [
                *head,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--logfile", str(self.directory / f"redis-{self.port}.log"),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        probe = self.client(socket_timeout=0.2, socket_connect_timeout=0.2)
        try:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self._process.returncode} on port {self.port}"
                    )
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer on port {self.port}")
                time.sleep(0.02)
        finally:
            probe.close()

    def kill(self) -> None:
        """SIGKILL: the abrupt death a fault test wants (no goodbye to clients)."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGCONT)  # a paused server cannot exit
                self._process.terminate()
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=5)
            self._process = None

    def pause(self) -> None:
        """SIGSTOP: a server that accepts connections but never answers (a stall)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class RedisClusterNodes:
    """A running cluster: ``.url`` (``redis+cluster://…``), ``.nodes``, ``.masters()``,
    ``.master_for(key)``, ``.kill(node)``, ``.wait_promoted(key, old_port)`` and
    ``.wait_healthy()``."""

    def __init__(self, executable: str, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.nodes = [
            RedisServer(executable, directory, extra=(
                "--cluster-enabled", "yes",
                "--cluster-port", str(free_port()),  # the bus: not port + 10000, which may not exist
                "--cluster-config-file", f"nodes-{i}.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--cluster-replica-validity-factor", "0",
                # the other masters keep serving while one is down (as operations.md advises)
                "--cluster-require-full-coverage", "no",
                "--repl-diskless-sync-delay", "0",  # replicas sync at once, not after 5 s
            ))
            for i in range(masters * 2)
        ]
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli")
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )
        self.wait_healthy()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def _info(self, node: RedisServer) -> str:
        client = node.client(socket_timeout=1)
        try:
            return str(client.execute_command("CLUSTER", "INFO"))
        finally:
            client.close()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every running node sees the cluster ``ok`` with all 16,384 slots served, and
        every running replica is in sync with its master."""
        def ok() -> bool:
            for node in self.nodes:
                if not node.running:
                    continue
                info = self._info(node)
                if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                    return False
                client = node.client(socket_timeout=1)
                try:
                    replication = client.info("replication")
                finally:
                    client.close()
                if replication["role"] != "master" and replication.get(
                    "master_link_status"
                ) != "up":
                    return False
            return True

        _until(ok, timeout, "the cluster to be ok")

    def masters(self) -> list[RedisServer]:
        """The running nodes that are masters now."""
        out = []
        for node in self.nodes:
            if node.running:
                client = node.client(socket_timeout=1)
                try:
                    if client.info("replication")["role"] == "master":
                        out.append(node)
                finally:
                    client.close()
        return out

    def master_for(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot now."""
        for node in self.masters():
            client = node.client(socket_timeout=1)
            try:
                slot = client.execute_command("CLUSTER", "KEYSLOT", key)
                for start, end, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = _owner_port(client, slot)
                        return next(n for n in self.nodes if n.port == port)
            finally:
                client.close()
        raise RuntimeError(f"no master serves {key!r}")

    def slot_of(self, key: str) -> int:
        client = self.nodes[0].client(socket_timeout=1)
        try:
            return int(client.execute_command("CLUSTER", "KEYSLOT", key))
        finally:
            client.close()

    def kill(self, node: RedisServer) -> None:
        node.kill()

    def wait_promoted(self, key: str, old_port: int, timeout: float = 30.0) -> RedisServer:
        """Wait until a replica has taken over ``key``'s slot from the master that was on
        ``old_port``, and the cluster is ok again; return the new master."""
        _until(lambda: self.master_for(key).port != old_port, timeout, "a replica to take over")
        self.wait_healthy(timeout)
        return self.master_for(key)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _owner_port(client: redis.Redis, slot: int) -> int:
    for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return int(master[1])
    raise RuntimeError(f"slot {slot} has no owner")


class RedisSentinelSet:
    """A master, a replica and 3 sentinels: ``.url`` (``redis+sentinel://…``),
    ``.master_port()``, ``.kill_master()``, ``.wait_promoted(old_port)``."""

    def __init__(self, executable: str, directory: Path) -> None:
        self.directory = directory
        self.master = RedisServer(executable, directory, extra=("--repl-diskless-sync-delay", "0"))
        self.master.start()
        self.replica = RedisServer(
            executable, directory, extra=("--replicaof", "127.0.0.1", str(self.master.port))
        )
        self.replica.start()
        _until(self._replica_synced, 30.0, "the replica to sync")
        conf = (
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.sentinels = [
            RedisServer(executable, directory, config=conf, extra=("--sentinel",))
            for _ in range(3)
        ]
        for s in self.sentinels:
            s.start()
        _until(self._sentinels_agree, 30.0, "the sentinels to see the master and each other")

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _replica_synced(self) -> bool:
        client = self.replica.client(socket_timeout=1)
        try:
            return bool(client.info("replication").get("master_link_status") == "up")
        finally:
            client.close()

    def _sentinels_agree(self) -> bool:
        for s in self.sentinels:
            client = s.client(socket_timeout=1)
            try:
                state = client.sentinel_master(SERVICE)
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
            finally:
                client.close()
        return True

    def master_port(self) -> int:
        client = self.sentinels[0].client(socket_timeout=1)
        try:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(port)
        finally:
            client.close()

    def kill_master(self) -> RedisServer:
        port = self.master_port()
        node = self.master if self.master.port == port else self.replica
        node.kill()
        return node

    def wait_promoted(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until the sentinels name a new master; return its port."""
        _until(lambda: self.master_port() != old_port, timeout, "a failover")
        return self.master_port()

    def stop(self) -> None:
        for s in (*self.sentinels, self.replica, self.master):
            s.stop()
