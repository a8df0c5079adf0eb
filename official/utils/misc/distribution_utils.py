"""The one place that builds the tf.distribute strategy.

* OneDeviceStrategy on the CPU (no GPU) or on the single GPU;
* MirroredStrategy over several GPUs (`--num_gpus > 1` or `--multi_gpu`), or over N logical CPU
  devices (`num_cpu_replicas`, for testing distribution without GPUs);
* MultiWorkerMirroredStrategy when the TF_CONFIG environment variable names a cluster with more
  than one task (each worker then mirrors over its own local GPUs, or its CPU).

The strategy must be created before TensorFlow initialises its devices, i.e. before any op runs.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf


def cluster_size_from_tf_config(tf_config: str | None = None) -> int:
    """Number of tasks in TF_CONFIG's cluster (0 when unset); ValueError when malformed."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not raw.strip():
        return 0
    try:
        config = json.loads(raw)
        cluster = config["cluster"]
        tasks = sum(len(addresses) for addresses in cluster.values())
        task = config["task"]
        task_type, task_index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"TF_CONFIG is malformed ({error}); expected "
                         '{"cluster": {"worker": ["host:port", ...]}, '
                         '"task": {"type": "worker", "index": 0}}') from None
    if task_type not in cluster or not 0 <= task_index < len(cluster[task_type]):
        raise ValueError(f"TF_CONFIG task {task_type}:{task_index} is not in its cluster "
                         f"{sorted(cluster)}")
    return tasks


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


def get_distribution_strategy(num_gpus: int | None = None, multi_gpu: bool = False,
                              num_cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """The strategy for this process.

    Args:
      num_gpus: GPUs to use; None means 1 if a GPU is visible, else 0.
      multi_gpu: mirror over every visible GPU (the original's flag).
      num_cpu_replicas: with no GPU, mirror over this many logical CPU devices when > 1.

    Raises:
      ValueError: more GPUs requested than visible, or malformed TF_CONFIG.
    """
    visible = len(tf.config.list_physical_devices("GPU"))
    if multi_gpu:
        if visible == 0 and num_cpu_replicas <= 1:
            raise ValueError("--multi_gpu: no GPU is visible (use --num_gpus=0 for the CPU)")
        num_gpus = visible
    elif num_gpus is None:
        num_gpus = min(visible, 1)
    if num_gpus > visible:
        raise ValueError(f"--num_gpus={num_gpus} but {visible} GPU(s) are visible")

    if cluster_size_from_tf_config() > 1:
        # Each worker's local devices: its GPUs, else its CPU. Collective communication picks
        # NCCL on GPUs and ring all-reduce on CPUs automatically.
        return tf.distribute.MultiWorkerMirroredStrategy()

    if num_gpus == 0 and num_cpu_replicas > 1:
        configure_cpu_replicas(num_cpu_replicas)
        devices = [f"/cpu:{index}" for index in range(num_cpu_replicas)]
        return tf.distribute.MirroredStrategy(devices)
    if num_gpus == 0:
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if num_gpus == 1:
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    return tf.distribute.MirroredStrategy([f"/gpu:{index}" for index in range(num_gpus)])


def per_replica_batch_size(global_batch_size: int, num_replicas: int) -> int:
    """The batch each replica sees; ValueError when the global batch does not split evenly."""
    if global_batch_size % num_replicas:
        raise ValueError(f"--batch_size={global_batch_size} is not divisible by the "
                         f"{num_replicas} replicas; use a multiple of {num_replicas}")
    return global_batch_size // num_replicas
