"""Benchmark logger: run information and metrics as JSON lines, optionally to BigQuery.

Files (names as in TF official's BenchmarkFileLogger), in `--benchmark_log_dir`:
  benchmark_run.log  one JSON object per line, one per run (a resumed run adds its own, so
                     every run_id in metric.log has its record): model, flags/config,
                     TensorFlow version, machine;
  metric.log         one JSON object per line: {"name", "value", "unit", "global_step",
                     "timestamp", "extras"}.
With `--gcp_project`, the same records are also inserted into BigQuery
(`<bigquery_data_set>.<bigquery_run_table>` / `<bigquery_metric_table>`), which needs the
google-cloud-bigquery package.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import uuid

import tensorflow as tf

RUN_LOG = "benchmark_run.log"
METRIC_LOG = "metric.log"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def require_bigquery():
    """The bigquery module, or ValueError naming the missing package."""
    try:
        # An optional dependency: imported only when asked for (tests/test_registry.py).
        from google.cloud import bigquery  # noqa: PLC0415
    except ImportError:
        raise ValueError("--gcp_project: uploading to BigQuery needs the google-cloud-bigquery "
                         "package (pip install google-cloud-bigquery)") from None
    return bigquery


class BenchmarkLogger:
    """Writes run info once and metrics as they come; no-op when no destination is set."""

    def __init__(self, log_dir: str | None = None, *, gcp_project: str | None = None,
                 bigquery_data_set: str = "test_benchmark",
                 bigquery_run_table: str = "benchmark_run",
                 bigquery_metric_table: str = "benchmark_metric"):
        self.log_dir = log_dir
        self.run_id = str(uuid.uuid4())
        self._bigquery = None
        if gcp_project:
            bigquery = require_bigquery()
            self._bigquery = bigquery.Client(project=gcp_project)
            self._run_table = f"{gcp_project}.{bigquery_data_set}.{bigquery_run_table}"
            self._metric_table = f"{gcp_project}.{bigquery_data_set}.{bigquery_metric_table}"
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)

    def log_run_info(self, model_name: str, config: dict) -> None:
        record = {"model_name": model_name, "run_id": self.run_id, "run_date": _now(),
                  "tensorflow_version": {"version": tf.version.VERSION,
                                         "git_hash": tf.version.GIT_VERSION},
                  "machine_config": {"platform": platform.platform(),
                                     "cpu_count": os.cpu_count(),
                                     "gpus": len(tf.config.list_physical_devices("GPU"))},
                  "run_parameters": config}
        if self.log_dir:
            with open(os.path.join(self.log_dir, RUN_LOG), "a") as f:
                f.write(json.dumps(record, default=str) + "\n")
        if self._bigquery is not None:
            self._insert(self._run_table, {**record, "run_parameters": json.dumps(config,
                                                                                  default=str)})

    def log_metric(self, name: str, value: float, *, unit: str | None = None,
                   global_step: int | None = None, extras: dict | None = None) -> None:
        record = {"name": name, "value": float(value), "unit": unit, "global_step": global_step,
                  "timestamp": _now(), "extras": extras or {}, "run_id": self.run_id}
        if self.log_dir:
            with open(os.path.join(self.log_dir, METRIC_LOG), "a") as f:
                f.write(json.dumps(record) + "\n")
        if self._bigquery is not None:
            self._insert(self._metric_table, {**record, "extras": json.dumps(record["extras"])})

    def _insert(self, table: str, row: dict) -> None:
        errors = self._bigquery.insert_rows_json(table, [row])
        if errors:
            raise RuntimeError(f"BigQuery insert into {table} failed: {errors}")
