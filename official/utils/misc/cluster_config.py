"""The cluster of a multi-worker run, from TF_CONFIG or `--worker_hosts` + `--task_index`:
parsed and checked before TensorFlow starts (no TensorFlow here), so a malformed cluster is
one line naming what is wrong. official/utils/misc/distribution_utils.py builds the strategy.
"""

from __future__ import annotations

import dataclasses
import json
import os

TASK_TYPES = ("chief", "worker")  # MultiWorkerMirroredStrategy's synchronous roles
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
                     '"task": {"type": "worker", "index": 0}}')

@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """This process's place in a cluster: TF_CONFIG's "cluster" and "task", validated."""
    cluster: dict[str, tuple[str, ...]]  # task type -> "host:port" addresses
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return sum(len(addresses) for addresses in self.cluster.values())

    @property
    def is_chief(self) -> bool:
        """The task that writes: "chief" if the cluster has one, else worker 0 (TF's rule)."""
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0


def _check_address(address, where: str) -> str:
    if not isinstance(address, str) or address.count(":") < 1:
        raise ValueError(f"{where}: address {address!r} is not 'host:port'")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{where}: address {address!r} is not 'host:port' with a port in "
                         "1-65535")
    return address


def parse_tf_config(raw: str, where: str = "TF_CONFIG") -> ClusterTask | None:
    """A validated ClusterTask from TF_CONFIG's JSON text; None when `raw` is empty.

    Raises:
      ValueError: one line naming `where` and the problem (not JSON, no "cluster" / "task",
        a parameter-server job, a bad address, a task that is not in the cluster, ...).
    """
    if not raw.strip():
        return None
    try:
        config = json.loads(raw)
    except ValueError as error:
        raise ValueError(f"{where} is malformed: not JSON ({error}); expected "
                         f"{TF_CONFIG_EXAMPLE}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) \
            or not isinstance(config.get("task"), dict):
        raise ValueError(f"{where} is malformed: needs a \"cluster\" and a \"task\" object; "
                         f"expected {TF_CONFIG_EXAMPLE}")
    cluster = {}
    for task_type, addresses in config["cluster"].items():
        if task_type not in TASK_TYPES:
            raise ValueError(f"{where}: cluster job {task_type!r} is not supported by "
                             f"synchronous multi-worker training; use {list(TASK_TYPES)}")
        if not isinstance(addresses, list) or not addresses:
            raise ValueError(f"{where}: cluster job {task_type!r} must be a non-empty list of "
                             "'host:port' addresses")
        cluster[task_type] = tuple(_check_address(a, f"{where} cluster.{task_type}")
                                   for a in addresses)
    if len(cluster.get("chief", ())) > 1:
        raise ValueError(f"{where}: a cluster has at most one chief, got "
                         f"{len(cluster['chief'])}")
    every = [address for addresses in cluster.values() for address in addresses]
    duplicates = sorted({address for address in every if every.count(address) > 1})
    if duplicates:
        raise ValueError(f"{where}: address {duplicates[0]} is listed twice")
    task = config["task"]
    task_type, task_index = task.get("type"), task.get("index", 0)
    if isinstance(task_index, str) and task_index.isdigit():
        task_index = int(task_index)
    if task_type not in cluster or not isinstance(task_index, int) \
            or not 0 <= task_index < len(cluster[task_type]):
        available = ", ".join(f"{name}:0-{len(addresses) - 1}"
                              for name, addresses in cluster.items())
        raise ValueError(f"{where}: task {task_type}:{task_index} is not in its cluster "
                         f"({available})")
    return ClusterTask(cluster, task_type, task_index)


def cluster_size_from_tf_config(tf_config: str | None = None) -> int:
    """Number of tasks in TF_CONFIG's cluster (0 when unset); ValueError when malformed."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    task = parse_tf_config(raw)
    return task.num_workers if task else 0


def tf_config_from_hosts(worker_hosts: list[str] | tuple[str, ...], task_index: int) -> str:
    """TF_CONFIG's JSON for `--worker_hosts=h1:p,h2:p --task_index=i` (worker 0 is the chief).

    Raises:
      ValueError: an empty host list, a bad address or a task index outside the list.
    """
    hosts = [host.strip() for host in worker_hosts if host.strip()]
    if not hosts:
        raise ValueError("--worker_hosts: give a comma-separated list of host:port")
    if task_index is None or not 0 <= task_index < len(hosts):
        raise ValueError(f"--task_index={task_index}: must be in 0-{len(hosts) - 1} for the "
                         f"{len(hosts)} --worker_hosts")
    raw = json.dumps({"cluster": {"worker": hosts},
                      "task": {"type": "worker", "index": task_index}})
    parse_tf_config(raw, where="--worker_hosts")  # the same checks as a hand-written TF_CONFIG
    return raw


def resolve_cluster(worker_hosts: list[str] | tuple[str, ...] | None = None,
                    task_index: int | None = None) -> ClusterTask | None:
    """The cluster from `--worker_hosts`/`--task_index` or else TF_CONFIG; None for one machine.

    Raises:
      ValueError: both given, --task_index without --worker_hosts, or a malformed cluster.
    """
    env = os.environ.get("TF_CONFIG", "")
    if worker_hosts:
        if env.strip():
            raise ValueError("--worker_hosts and the TF_CONFIG environment variable are both "
                             "set; use one of them")
        if task_index is None:
            raise ValueError("--worker_hosts needs --task_index: this host's place in the "
                             "list, from 0")
        return parse_tf_config(tf_config_from_hosts(worker_hosts, task_index), "--worker_hosts")
    if task_index is not None:  # --task_index=0 alone was ignored without a word
        raise ValueError(f"--task_index={task_index} needs --worker_hosts")
    return parse_tf_config(env)
