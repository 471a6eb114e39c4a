"""The ``ray`` engine: Ray Data ``map_batches`` over the run's shards with an actor pool, one model replica per
actor. Each actor loads the model once and runs the same per-sample loop as the local engine
(:func:`~mmlens.runs.engine.process_shard`); shards come back to the driver, which alone writes the folder and
its manifest (so resuming works the same, and the workers need no shared file system).

Ray is optional: ``pip install 'mmlens[ray]'``. ``address``: ``None`` (a Ray already started in this process,
else a local one), ``"auto"`` (the cluster this machine belongs to), ``"ray://host:port"`` (Ray Client) or
``"host:port"``; an address that cannot be reached fails within seconds, in one line.

>>> run_dataset(job, source, "demo", "out/", engine="ray", replicas=2)      # doctest: +SKIP
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

from mmlens.errors import InputError
from mmlens.runs.engine import Job, process_shard, table_from_bytes, table_to_bytes
from mmlens.runs.sources import Source
from mmlens.runs.store import RunStore

INSTALL = "--engine ray needs Ray, which is not installed: pip install 'mmlens[ray]'"
CONNECT_TIMEOUT_S = 3.0


def import_ray() -> Any:
    """``ray`` (with Ray Data), or one InputError line saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError(INSTALL) from None
    return ray


def check_address(address: str | None) -> tuple[str, int] | None:
    """(host, port) of a ``ray://host:port`` or ``host:port`` address; None for ``auto`` / no address."""
    if address is None or address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--address {address!r}: pass auto, ray://HOST:PORT (Ray Client, usually port 10001) or "
                         "HOST:PORT of the head node")
    return host.strip("[]"), int(port)


def connect(ray: Any, address: str | None) -> bool:
    """Join the Ray named by ``address`` (see the module docstring); True when this call started it."""
    if ray.is_initialized():
        return False
    target = check_address(address)
    if target is not None:
        try:
            socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise InputError(f"--address {address!r} cannot be reached ({err.strerror or type(err).__name__}): check "
                             "the host and port and that the Ray cluster is up") from None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    try:
        ray.init(address=address, **kwargs) if address is not None else ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = "no running Ray cluster was found on this machine" if address == "auto" else \
            f"Ray could not connect ({' '.join(str(err).split())[:120]})"
        raise InputError(f"--address {address!r}: {where}: start one with `ray start --head`, or leave out "
                         "--address for a local Ray") from None
    return True


class ShardWorker:
    """One Ray actor: a model replica and the job; called with a batch of shard numbers."""

    def __init__(self, model: Any, job: Job, source: Source, ranges: list[tuple[int, int]], strict: bool,
                 threads: int) -> None:
        import torch

        from mmlens.runs.engine import _load

        torch.set_num_threads(max(1, threads))
        self.subject, self.job, self.source, self.ranges, self.strict = _load(model), job, source, ranges, strict
        self.state = job.setup(self.subject)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {"shard": [], "table": [], "tensors": [], "failures": [], "error": []}
        for k in batch["shard"]:
            k = int(k)
            try:
                got = process_shard(self.job, self.subject, self.state, self.source, k, *self.ranges[k], self.strict)
                table, tensors, failures, error = table_to_bytes(got.table), got.tensors or b"", got.failures, ""
            except InputError as err:  # bad input stops the run with its one line, on the driver
                table, tensors, failures, error = b"", b"", [], str(err)
            out["shard"].append(k)
            out["table"].append(table)
            out["tensors"].append(tensors)
            out["failures"].append(json.dumps(failures))
            out["error"].append(error)
        return out


def _check_resources(ray: Any, replicas: int, gpus: float) -> None:
    """A replica must fit the cluster, else Ray Data would wait for it forever."""
    have = ray.cluster_resources()
    if gpus and have.get("GPU", 0) < gpus:
        raise InputError(f"--gpus-per-replica {gpus}: the Ray cluster has {have.get('GPU', 0):g} GPU(s): pass "
                         "--gpus-per-replica 0 to run on CPUs, or join a cluster with GPUs")
    if have.get("CPU", 0) < 1:
        raise InputError("the Ray cluster has no CPU to run a replica on: add a worker node")


def run_ray(job: Job, source: Source, model: Any, store: RunStore, todo: list[int], strict: bool, replicas: int,
            gpus_per_replica: float, address: str | None, show_progress: bool | None) -> None:
    """Run the shards ``todo`` on Ray; each finished shard is written by this (driver) process."""
    check_address(address)
    ray = import_ray()
    started = connect(ray, address)
    try:
        _check_resources(ray, replicas, gpus_per_replica)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = sys.stderr.isatty() if show_progress is None else bool(show_progress)
        cpus = ray.cluster_resources().get("CPU", 1)
        threads = max(1, int(cpus // replicas)) if not gpus_per_replica else 1
        ds = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            ShardWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=replicas),
            num_cpus=1, num_gpus=gpus_per_replica or None,
            fn_constructor_kwargs={"model": model, "job": job, "source": source, "ranges": store.ranges,
                                   "strict": strict, "threads": threads})
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["shard"])):
                if batch["error"][i]:
                    raise InputError(str(batch["error"][i]))
                tensors = bytes(batch["tensors"][i]) or None
                store.write_shard(int(batch["shard"][i]), table_from_bytes(bytes(batch["table"][i])), tensors,
                                  json.loads(str(batch["failures"][i])))
    finally:
        if started:
            ray.shutdown()
