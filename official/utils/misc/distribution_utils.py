"""The one place that builds the tf.distribute strategy.

* OneDeviceStrategy on the CPU (no GPU) or on the single GPU;
* MirroredStrategy over several GPUs (`--num_gpus > 1` or `--multi_gpu`), or over N logical CPU
  devices (`num_cpu_replicas`, for testing distribution without GPUs);
* MultiWorkerMirroredStrategy when the cluster (the TF_CONFIG environment variable, or
  `--worker_hosts` + `--task_index`) has more than one task; each worker then mirrors over the
  same number of local GPUs as a single machine would use (`--num_gpus`, `--multi_gpu`), or over
  its one CPU. The global batch is split across every replica of every worker.

A multi-worker run must never hang on a dead peer. Two bounds, both configured here:
* the coordination service's heartbeat: a worker that dies or becomes unreachable is detected
  within `heartbeat_timeout_seconds`, and every other worker's pending collective is aborted;
* a timeout on every collective (`collective_timeout_seconds`): catches a peer that is alive but
  stuck. It must exceed the longest legitimate wait at a collective (the chief saving a large
  checkpoint while the others wait at the next step), hence the generous default.
Startup waits at most `startup_timeout_seconds` for every worker to join.

The strategy must be created before TensorFlow initialises its devices, i.e. before any op runs.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading

import tensorflow as tf
from absl import logging
# No public API configures the coordination service (see _configure_coordination).
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.eager import context

from official.utils.misc.cluster_config import TASK_TYPES, ClusterTask, resolve_cluster

DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 30
DEFAULT_COLLECTIVE_TIMEOUT_SECONDS = 600
DEFAULT_STARTUP_TIMEOUT_SECONDS = 600


def _configure_coordination(task: ClusterTask, heartbeat_timeout_seconds: float,
                            startup_timeout_seconds: float) -> None:
    # MultiWorkerMirroredStrategy configures the coordination service itself, with TF's defaults
    # (wait for peers forever); configured first, ours is kept. No public API sets these.
    leader = ("/job:chief/replica:0/task:0" if "chief" in task.cluster
              else "/job:worker/replica:0/task:0")
    jobs = [coordination_config_pb2.CoordinatedJob(name=name, num_tasks=len(addresses))
            for name, addresses in task.cluster.items()]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=leader, enable_health_check=True,
        cluster_register_timeout_in_ms=int(startup_timeout_seconds * 1000),
        heartbeat_timeout_in_ms=int(heartbeat_timeout_seconds * 1000),
        # At exit each worker waits for the others (the chief may still be exporting); a dead
        # one is caught by the heartbeat, so this bound can be as generous as the startup's.
        shutdown_barrier_timeout_in_ms=int(startup_timeout_seconds * 1000),
        coordinated_jobs=jobs)
    # Without the barrier, cluster_register_timeout bounds only the registration itself: a
    # worker whose peer never started then waited for it for ever, deaf to Ctrl-C and SIGTERM.
    context.context()._coordination_service_config.cluster_register_with_barrier = True


def _not_joined(error: tf.errors.OpError, task: ClusterTask) -> str:
    """Who a startup that timed out waited for, as "worker 1 of the 2 (host:port)": the tasks
    TensorFlow's message names as timed out, or the leader that did not answer."""
    text = getattr(error, "message", "") or str(error)
    if "timed out task names:" in text:  # a list, one a line, up to a blank line
        named = text.split("timed out task names:", 1)[1].split("\n\n", 1)[0]
    else:
        named = " ".join(re.findall(r"remote target (\S+)", text))
    tasks = dict.fromkeys(re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", named))
    found = [f"{job} {index} of the {task.num_workers} ({task.cluster[job][int(index)]})"
             for job, index in tasks
             if job in task.cluster and int(index) < len(task.cluster[job])]
    return ", ".join(found) or "another worker"


def cluster_resolver(task: ClusterTask, num_gpus: int,
                     ) -> tf.distribute.cluster_resolver.SimpleClusterResolver:
    """The resolver MultiWorkerMirroredStrategy reads `task` and this worker's devices from.

    The strategy takes its local replicas from `num_accelerators()` alone: GPU:0..num_gpus-1,
    or the CPU when that is empty (a SimpleClusterResolver without the count trains every
    worker on its CPU, GPUs or not).
    """
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({name: list(addresses) for name, addresses in task.cluster.items()}),
        task_type=task.task_type, task_id=task.task_index, rpc_layer="grpc",
        num_accelerators={"GPU": num_gpus} if num_gpus else {})


@contextlib.contextmanager
def _signals_for_the_wait():
    """The signals around the strategy's start-up, which waits for the peers inside TensorFlow
    holding the interpreter's lock, so a Python handler would run only when the wait ends (up
    to --startup_timeout_seconds later):
    - Ctrl-C ends the process at once inside the block (exit 130, no line; nothing is written
      before it). A background job's Ctrl-C is ignored, and stays so.
    - SIGTERM cannot be had so: TensorFlow's coordination service installs a handler of its
      own (a preemption notice for a checkpoint handler not used here) that ignores it, so a
      worker a scheduler or `kill` stopped trained on. The program's own (cli.run_program:
      exit 143) is put back when the block ends."""
    if threading.current_thread() is not threading.main_thread():  # (signal.signal's rule)
        yield
        return
    sigterm = signal.getsignal(signal.SIGTERM)
    sigint = signal.getsignal(signal.SIGINT)
    if sigint not in (signal.SIG_IGN, None):
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        yield
    finally:
        for signum, handler in ((signal.SIGINT, sigint), (signal.SIGTERM, sigterm)):
            if handler is not None:  # (None: not set from Python, cannot be put back)
                signal.signal(signum, handler)


def multi_worker_strategy(task: ClusterTask, num_gpus: int, *,
                          heartbeat_timeout_seconds: float = DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
                          collective_timeout_seconds: float = DEFAULT_COLLECTIVE_TIMEOUT_SECONDS,
                          startup_timeout_seconds: float = DEFAULT_STARTUP_TIMEOUT_SECONDS,
                          ) -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy for `task` over `num_gpus` local GPUs (0: the CPU), with
    bounded waits on dead or stuck peers. Every worker must use the same number of GPUs."""
    _configure_coordination(task, heartbeat_timeout_seconds, startup_timeout_seconds)
    resolver = cluster_resolver(task, num_gpus)
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=collective_timeout_seconds)
    addresses = [address for name in task.cluster for address in task.cluster[name]]
    logging.info("waiting up to %g s for the %d workers to join: %s",
                 startup_timeout_seconds, len(addresses), ", ".join(addresses))
    try:
        with _signals_for_the_wait():
            strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                                 communication_options=options)
    except tf.errors.DeadlineExceededError as error:
        raise ConnectionError(
            f"multi-worker training could not start: {_not_joined(error, task)} did not join "
            f"within {startup_timeout_seconds:g} s; start every worker with the same cluster "
            "and flags") from None
    except tf.errors.UnknownError as error:
        if "Could not start gRPC server" not in str(error):
            raise
        # This worker's own address is taken (another program, or a worker of a cluster
        # still running): TensorFlow's error was a traceback.
        address = task.cluster[task.task_type][task.task_index]
        raise ConnectionError(
            f"multi-worker training could not start: {task.task_type} {task.task_index}'s "
            f"address {address} is in use or cannot be bound; free its port or give "
            "another") from None
    return strategy


def configure_cpu_replicas(num_cpu_replicas: int) -> None:
    """Split the first CPU into `num_cpu_replicas` logical devices (before TF initialises)."""
    if num_cpu_replicas <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    existing = tf.config.get_logical_device_configuration(cpus[0])
    if existing and len(existing) >= num_cpu_replicas:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_cpu_replicas)
    except RuntimeError as error:
        raise ValueError(f"--num_cpu_replicas={num_cpu_replicas}: TensorFlow is already "
                         f"initialised ({error})") from None


def visible_gpu_count() -> int:
    """GPUs TensorFlow can see in this process (after CUDA_VISIBLE_DEVICES)."""
    return len(tf.config.list_physical_devices("GPU"))


def get_distribution_strategy(num_gpus: int | None = None, multi_gpu: bool = False,
                              num_cpu_replicas: int = 0, *,
                              worker_hosts: list[str] | tuple[str, ...] | None = None,
                              task_index: int | None = None,
                              collective_timeout_seconds: float =
                              DEFAULT_COLLECTIVE_TIMEOUT_SECONDS,
                              heartbeat_timeout_seconds: float =
                              DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
                              startup_timeout_seconds: float = DEFAULT_STARTUP_TIMEOUT_SECONDS,
                              gpus_flag: str = "--num_gpus") -> tf.distribute.Strategy:
    """The strategy for this process; logs its replica devices (one INFO line).

    Args:
      num_gpus: GPUs to use on this machine (on each worker of a cluster); None means 1 if a
        GPU is visible, else 0 (the CPU).
      multi_gpu: mirror over every visible GPU (the original's flag).
      num_cpu_replicas: with no GPU, mirror over this many logical CPU devices when > 1
        (single machine only).
      worker_hosts, task_index: the cluster as flags (instead of TF_CONFIG).
      collective_timeout_seconds, heartbeat_timeout_seconds, startup_timeout_seconds:
        multi-worker bounds (see above).
      gpus_flag: the caller's flag for `num_gpus`, as errors name it (the Slim trainer's is
        --num_clones).

    Raises:
      ValueError: more GPUs requested than visible, --num_cpu_replicas in a cluster, or a
        malformed cluster.
      ConnectionError: a worker of the cluster did not join within the startup timeout.
    """
    visible = visible_gpu_count()
    if multi_gpu:
        if visible == 0 and num_cpu_replicas <= 1:
            raise ValueError(f"--multi_gpu: no GPU is visible (use {gpus_flag}=0 for the CPU)")
        num_gpus = visible
    elif num_gpus is None:
        num_gpus = min(visible, 1)
    if num_gpus > visible:
        raise ValueError(f"{gpus_flag}={num_gpus} but {visible} GPU(s) are visible")

    task = resolve_cluster(worker_hosts, task_index)
    if task is not None and task.num_workers > 1:
        if num_cpu_replicas > 1:
            # MultiWorkerMirroredStrategy runs one replica per worker on the CPU; silently
            # dropping the split would change the per-replica batch the user asked for.
            raise ValueError(f"--num_cpu_replicas={num_cpu_replicas} is for a single machine; "
                             "a multi-worker run uses one CPU replica per worker")
        strategy = multi_worker_strategy(
            task, num_gpus, heartbeat_timeout_seconds=heartbeat_timeout_seconds,
            collective_timeout_seconds=collective_timeout_seconds,
            startup_timeout_seconds=startup_timeout_seconds)
    elif num_gpus == 0 and num_cpu_replicas > 1:
        configure_cpu_replicas(num_cpu_replicas)
        strategy = tf.distribute.MirroredStrategy(
            [f"/cpu:{index}" for index in range(num_cpu_replicas)])
    elif num_gpus <= 1:
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if num_gpus else "/cpu:0")
    else:
        strategy = tf.distribute.MirroredStrategy([f"/gpu:{index}" for index in range(num_gpus)])
    # The public name: TF's class behind tf.distribute.MultiWorkerMirroredStrategy is called
    # CollectiveAllReduceStrategy.
    name = ("MultiWorkerMirroredStrategy"
            if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            else type(strategy).__name__)
    logging.info("%s: %d replica(s) in sync; this process's: %s", name,
                 strategy.num_replicas_in_sync, ", ".join(strategy.extended.worker_devices))
    return strategy


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Worker processes in lock-step (1 unless MultiWorkerMirroredStrategy)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return sum(len(jobs.get(name, ())) for name in TASK_TYPES) or 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, summaries, exports and logs."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    cluster = {name: tuple(addresses) for name, addresses in
               resolver.cluster_spec().as_dict().items()}
    return ClusterTask(cluster, resolver.task_type, resolver.task_id).is_chief


# What a dead, unreachable or stuck peer raises in the survivors' collectives.
CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                  tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                  tf.errors.InternalError)


def cluster_failure_message(error: tf.errors.OpError, workers: int, model_dir: str) -> str:
    """One line for a collective that failed: which peer (when TF's message names it), the
    cause, and how to resume."""
    text = getattr(error, "message", "") or str(error)
    peer = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", text)
    causes = [line.strip() for line in text.splitlines()
              if re.search(r"(?i)unavailable|connect|deadline|timed? ?out|heartbeat|abort|"
                           r"cancel|unhealthy|shut ?down", line)
              and "Graph execution error" not in line]
    cause = (causes or [line for line in text.splitlines() if line.strip()] or [""])[0]
    who = f"{peer.group(1)} {peer.group(2)}" if peer else "another worker"
    return (f"multi-worker training stopped: {who} of the {workers} died, is unreachable or is "
            f"stuck ({type(error).__name__}: {cause[:240]}); restart every worker with the same "
            f"flags to resume from the last checkpoint in {model_dir}")


def precision_warning(dtype: str, strategy: tf.distribute.Strategy) -> str | None:
    """What to say when `dtype` (a --dtype value) will run far slower than it should here:
    float16 on replicas without a GPU. TensorFlow's CPU kernels of fused batch norm have no
    float16 version, so each step falls back op by op (a walk-through measured 0.3 images/s
    against 46 in fp32 and 125 in bf16 on a 2-core Xeon); bf16 is the CPU's half precision."""
    if dtype == "fp16" and not any("GPU" in device.upper()
                                   for device in strategy.extended.worker_devices):
        return ("--dtype=fp16 without a GPU: TensorFlow's CPU kernels lack float16 batch "
                "norm, so training runs about 100x slower than fp32; on a CPU use "
                "--dtype=bf16")
    return None


def per_replica_batch_size(global_batch_size: int, num_replicas: int) -> int:
    """The batch each replica sees; ValueError when the global batch does not split evenly."""
    if global_batch_size % num_replicas:
        raise ValueError(f"--batch_size={global_batch_size} is not divisible by the "
                         f"{num_replicas} replicas; use a multiple of {num_replicas}")
    return global_batch_size // num_replicas


def broadcast_from_chief(strategy: tf.distribute.Strategy, variables) -> None:
    """Overwrite `variables` on every worker with the chief's values (one all-reduce).

    Used after the chief alone restored a checkpoint: model_dir need not be on a filesystem the
    other workers share. No-op with a single worker.
    """
    workers = num_workers(strategy)
    if workers <= 1:
        return
    variables = list(variables)
    chief = is_chief(strategy)
    local_replicas = strategy.num_replicas_in_sync // workers

    def replica_fn():
        context = tf.distribute.get_replica_context()
        # Exactly one contribution (the chief's first local replica), the others add zeros.
        mine = tf.logical_and(tf.constant(chief),
                              tf.equal(context.replica_id_in_sync_group % local_replicas, 0))
        by_dtype: dict[tf.DType, list[int]] = {}  # one all-reduce per dtype (packed)
        values = []
        for index, variable in enumerate(variables):
            value = tf.convert_to_tensor(variable)
            if not value.dtype.is_floating:  # integer counters: exact in float64 below 2**53
                value = tf.cast(value, tf.float64)
            values.append(tf.where(mine, value, tf.zeros_like(value)))
            by_dtype.setdefault(value.dtype, []).append(index)
        for indices in by_dtype.values():
            summed = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                        [values[index] for index in indices])
            for index, value in zip(indices, summed):
                values[index] = value
        return values

    @tf.function
    def broadcast():
        reduced = strategy.run(replica_fn)
        for variable, value in zip(variables, reduced):
            variable.assign(tf.cast(strategy.experimental_local_results(value)[0],
                                    variable.dtype))

    broadcast()
