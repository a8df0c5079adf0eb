"""TensorBoard event files: the mark each training run writes where it starts, and scalars
read back as TensorBoard draws them (scripts/collect_results.py)."""

from __future__ import annotations

import glob
import os
import time

import tensorflow as tf
from tensorflow.python.ops import summary_ops_v2


def mark_start(writer, step: int) -> None:
    """Tells TensorBoard that a run starts (or resumes) from ``step``, as the Estimator did (a
    SessionLog START event at each start): when a resumed run marks its start, TensorBoard
    drops the points a killed run wrote after the checkpoint it resumes from, instead of
    drawing two at each step trained again. (``step``'s own points, written before its
    checkpoint, stay. TensorBoard takes a run's first mark for its start, not a restart.)"""
    event = tf.compat.v1.Event(wall_time=time.time(), step=step + 1,
                               session_log=tf.compat.v1.SessionLog(
                                   status=tf.compat.v1.SessionLog.START))
    with writer.as_default():
        # tf.summary has no public call for an event that is not a summary; this is the op
        # TensorFlow's own summary code writes whole Event protos with.
        summary_ops_v2.import_event(tf.constant(event.SerializeToString()))
    writer.flush()


def read_scalars(folder: str, tag: str, *, first_of_each_run: bool = True
                 ) -> list[tuple[int, float]]:
    """(step, value) of one scalar in a folder of event files, in step order. A start mark at
    step S (mark_start) drops the points written earlier at S or later: a killed run's,
    trained again once resumed. (TensorBoard does the same from a run's second mark on; it
    takes the first for the run's start, so a run begun before the marks keeps both.)
    ``first_of_each_run=False`` leaves out each run's first point (a speed's, which includes
    the tracing of the run's functions)."""
    values = []
    skip = not first_of_each_run
    # Event files are named by their creation time: in name order, the runs in their order.
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in _events(path):
            if event.session_log.status == tf.compat.v1.SessionLog.START:
                values = [(step, number) for step, number in values if step < event.step]
                skip = not first_of_each_run
            for value in event.summary.value:
                if value.tag == tag and skip:
                    skip = False
                elif value.tag == tag:
                    number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                              else float(value.simple_value))
                    values.append((event.step, number))
    return sorted(values, key=lambda point: point[0])


def _events(path: str):
    """The events of one file, up to a record cut short or damaged, as TensorBoard reads it:
    a run still training (or killed) can leave half a record at the end of its file, which
    stopped scripts/collect_results.py with DataLossError's traceback."""
    # Not tf.compat.v1.train.summary_iterator: deprecated, it prints a note on every run.
    records = iter(tf.data.TFRecordDataset(path))
    while True:
        try:
            record = next(records)
        except (StopIteration, tf.errors.DataLossError):
            return
        yield tf.compat.v1.Event.FromString(record.numpy())
