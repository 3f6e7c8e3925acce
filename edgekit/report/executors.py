"""Where a report's work runs: in this process (the default, nothing to install) or as Ray tasks on a cluster.

A report has two phases. ``prepare`` (convert or quantize a target, then eval it) is independent per target, so a
cluster runs those side by side. ``bench`` times an artifact, so it runs one at a time per machine, on the machine
that built the artifact (its files are there), while nothing else of the report runs: phase two starts when phase
one has ended. Every task is a plain function of JSON-able arguments returning JSON-able data, so both executors
run the same code and give the same figures."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from edgekit.errors import EdgekitError

EXECUTORS = ("local", "ray")


class LocalExecutor:
    """Runs every task in this process, in order."""

    name = "local"

    def prepare(self, fn: Callable[..., dict], calls: Sequence[tuple], tick: Callable[[], None]) -> list[dict]:
        return [_ticked(fn(*args), tick) for args in calls]

    def bench(self, fn: Callable[..., dict], calls: Sequence[tuple], nodes: Sequence[str | None],
              tick: Callable[[], None]) -> list[dict]:
        return [_ticked(fn(*args), tick) for args in calls]

    def close(self) -> None:
        pass


def _ticked(result: dict, tick: Callable[[], None]) -> dict:
    tick()
    return result


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _with_node(fn: Callable[..., dict], *args: Any) -> dict:
    """A prepare task on Ray: its result, and which node ran it (its artifact is on that node's disk)."""
    return {**fn(*args), "node": _node()}


class RayExecutor:
    """Prepare tasks spread over the cluster (one CPU each by default); bench tasks through one actor per node,
    pinned there, so a node times one artifact at a time, the one it built."""

    name = "ray"

    def __init__(self, address: str | None = None, prepare_cpus: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise EdgekitError("--executor ray needs Ray, which is not installed",
                               "pip install 'edgekit[ray]' (or pip install ray), or drop --executor ray") from None
        if address not in (None, "auto", "local"):
            _check_answers(address)
        try:
            ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
                     log_to_driver=False, include_dashboard=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise EdgekitError(f"cannot join the Ray cluster at {address or 'a new local one'}: "
                               f"{str(err).splitlines()[0] if str(err) else type(err).__name__}",
                               "start it with `ray start --head` and pass its address (host:port)") from None
        self.ray = ray
        self.prepare_cpus = prepare_cpus
        self.actors: dict[str, Any] = {}

    def prepare(self, fn: Callable[..., dict], calls: Sequence[tuple], tick: Callable[[], None]) -> list[dict]:
        task = self.ray.remote(num_cpus=self.prepare_cpus, max_retries=0)(_with_node)
        return self._gather([task.remote(fn, *args) for args in calls], tick)

    def _gather(self, refs: list[Any], tick: Callable[[], None]) -> list[dict]:
        """Results in the order of ``refs``, ticking as each one ends."""
        waiting = list(refs)
        while waiting:
            done, waiting = self.ray.wait(waiting, num_returns=1)
            for _ in done:
                tick()
        return self.ray.get(refs)

    def _actor(self, node: str | None) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = node or self.ray.get_runtime_context().get_node_id()
        if node not in self.actors:
            @self.ray.remote(num_cpus=0, max_restarts=0)
            class Bencher:
                def run(self, fn: Callable[..., dict], *args: Any) -> dict:
                    return fn(*args)

            self.actors[node] = Bencher.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)).remote()
        return self.actors[node]

    def bench(self, fn: Callable[..., dict], calls: Sequence[tuple], nodes: Sequence[str | None],
              tick: Callable[[], None]) -> list[dict]:
        # an actor runs its calls one after another: one bench at a time per node; nodes run side by side
        return self._gather([self._actor(node).run.remote(fn, *args)
                             for args, node in zip(calls, nodes, strict=True)], tick)

    def close(self) -> None:
        for actor in self.actors.values():
            self.ray.kill(actor)
        self.ray.shutdown()


def _check_answers(address: str, timeout: float = 5.0) -> None:
    """One line, at once, when nothing listens at ``address`` (Ray's own client retries for a minute)."""
    address = address.removeprefix("ray://")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EdgekitError(f"--address {address!r} is not host:port", "pass the address `ray start --head` printed")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise EdgekitError(f"the Ray cluster at {address} does not answer ({err.strerror or err})",
                           "start it with `ray start --head` or pass the address it printed") from None


def make(name: str, address: str | None = None) -> LocalExecutor | RayExecutor:
    """The executor ``name`` ("local" | "ray"); ``address`` joins an existing Ray cluster (host:port)."""
    if name == "local":
        if address:
            raise EdgekitError("--address applies to --executor ray", "add --executor ray or drop --address")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise EdgekitError(f"unknown executor {name!r}", f"choose one of: {', '.join(EXECUTORS)}")
