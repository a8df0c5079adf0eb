"""The training loop of every network: a custom tf.distribute loop with the Estimator's behaviour.

Sections, top to bottom: config -> data -> model/optimizer state -> restore -> loop -> export.
(Config lives in config.py, input in train_input.py, the training state and its steps in
steps.py, saving and restoring checkpoints in checkpointing.py, what a resume may change in
resume.py, the TensorBoard points, hooks and benchmark log in train_log.py, the export in
export.py.)

Which network trains is a plug-in object, `network`, with four methods:

  model_spec(num_classes, *, image_size, channels) -> networks.registry.ModelSpec
      the fully resolved network (saved in config.json; export and prediction rebuild it)
  config_entries() -> dict          anything else the network records in config.json
  learning_rate_schedule(schedule: config.ScheduleSpec) -> a Keras learning-rate schedule
      one laid over the run's length has `total_steps` and `assign(other)` (other's steps,
      in variables its traced step reads: steps.lay_over)
  build_training_state(spec, optimizer: config.OptimizerSpec, schedule, strategy, *,
                       resuming) -> steps.TrainingState
      model (through networks.registry.build_model), optimizer, step, checkpoint; `resuming`:
      model_dir has a checkpoint, restored right after (so pretrained weights are not loaded);
      anything else laid over the schedule's run is set again by the state's `lay_over`
      (the ResNet's batch-norm momentum): a budgeted run's timed copy, built over
      train_epochs, is laid over a shorter plan, and a constant of its traced step would
      keep the copy's

The TrainConfig is resolved once, in `_train`, into what each part reads: train_input.InputSpec,
config.ScheduleSpec and config.OptimizerSpec; the input, the schedule and the network plug-in
never see the whole config.

networks/resnet/train_steps.py ResNetNetwork and networks/slim/slim_train.py SlimNetwork are
the two; the loop itself knows no network.

What the Estimator did and this loop keeps: train in cycles of `epochs_between_evals`, evaluate on
the validation split after each, stop at `train_epochs` (or the steps `train_budget_seconds`
allows, at that budget if the machine slows down, later if it ran faster: budget.py),
`max_train_steps` or `stop_threshold`, resume from the latest checkpoint in `model_dir` when
restarted, export a SavedModel at the end.
A resumed run restarts the input pipeline (a fresh shuffle), not the exact batch order.

The schedule counts `train_epochs` (or the budget's steps) even when `max_train_steps` stops
earlier (as the Estimator did).

Batch norm under MirroredStrategy normalises with each replica's own batch statistics (as the
Estimator's replicated model did: "ghost batch norm"), so N replicas of batch B/N match one device
with batch B only up to those statistics. Loss and gradients are otherwise aggregated exactly: the
loss is averaged over the global batch and the replicas' gradients are summed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import shutil
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from dataset import converted, test_time
from networks import registry
from official.core import export as export_lib
from official.core import budget, checkpointing, steps, train_input, train_log
from official.core.config import (TrainConfig, TrainResult, check_run_folders,
                                  config_to_resume, resolved_config, write_config)
from official.core.resume import (SCHEDULE_SETTINGS, changes_warning, check_resume_config,
                                  frozen_settings, rendering_change, resumed_changes)
from official.modeling import ema
from official.modeling.stretchable import Stretchable
from official.utils import files
from official.utils.misc import distribution_utils, model_helpers


def train(config: TrainConfig, strategy: tf.distribute.Strategy, network) -> TrainResult:
    """Train (or resume) `network` (the plug-in, see above) in `config.model_dir`; evaluate
    each cycle; export when asked.

    Multi-worker (MultiWorkerMirroredStrategy): only the chief writes into model_dir and
    export_dir; the others write their (collective) checkpoints and summaries to a private
    temporary folder, deleted when they finish or fail. On resume the chief restores from
    model_dir and sends the state to the others, so model_dir need not be a shared filesystem.

    Raises:
      ValueError: bad configuration or data (a corrupt record: the shard is named), or a
        model_dir trained with other settings.
      FloatingPointError: the loss became NaN or Inf (the message names the step).
      ConnectionError: multi-worker: another worker died, became unreachable or got stuck.
    """
    chief = distribution_utils.is_chief(strategy)
    workers = distribution_utils.num_workers(strategy)
    check_run_folders(config)  # before hours of training, not after (and before any mkdir)
    write_dir = config.model_dir if chief else checkpointing.worker_folder()
    # A second training into the same model_dir is refused (two at once overwrote each
    # other's checkpoints and config.json, and both ended "successfully").
    held = (files.folder_held(config.model_dir, "training") if chief
            else contextlib.nullcontext())
    try:
        with held:
            if chief and files.held(config.model_dir):
                if leftovers := checkpointing.remove_leftovers(config.model_dir):
                    logging.info("removed a killed run's leftovers: %s", ", ".join(leftovers))
            return _train(config, strategy, chief, workers, write_dir, network)
    except tf.errors.DataLossError as error:
        described = converted.describe_data_loss(config.data_dir, error)
        if described is None:  # not the records: keep TensorFlow's own report
            raise
        raise ValueError(described) from None
    except distribution_utils.CLUSTER_ERRORS as error:
        if workers <= 1:
            raise
        raise ConnectionError(distribution_utils.cluster_failure_message(
            error, workers, config.model_dir)) from None
    finally:
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)


def _train(config: TrainConfig, strategy: tf.distribute.Strategy, chief: bool, workers: int,
           write_dir: str, network) -> TrainResult:
    # --- config ---
    started = budget.now()  # --train_budget_seconds counts from here
    input_spec = train_input.InputSpec.from_config(config)
    data = train_input.resolve_data(input_spec)
    num_replicas = strategy.num_replicas_in_sync
    distribution_utils.per_replica_batch_size(config.batch_size, num_replicas)
    if warning := distribution_utils.precision_warning(config.dtype, strategy):
        logging.warning(warning)
    test_time.check_num_views(config.export_tta)  # before hours of training, not after
    spec = network.model_spec(data.num_classes, image_size=config.image_size,
                              channels=config.channels)

    history = {}  # config.json's "resumed_with", once the restored step is known

    def config_json(**entries) -> dict:  # prediction renders DICOMs as the data was
        return resolved_config(config, data.class_names, spec, {
            **network.config_entries(), "dicom_rendering": data.dicom_rendering, **history,
            **entries})

    resolved = config_json()
    saved = config_to_resume(config.model_dir)
    check_resume_config(config.model_dir, None if saved is None
                        else frozen_settings(saved, registry.spec_from_config(saved), spec,
                                             data.class_names, ema_decay=config.ema_decay,
                                             batch_size=config.batch_size,
                                             dtype=config.dtype, loss_scale=config.loss_scale))
    if saved and (note := rendering_change(saved, data.dicom_rendering)):
        logging.warning(note)
    if workers > 1 and config.seed is None:
        # Splitting the input by data needs the same shuffle on every worker: a variable's
        # initial value is the chief's on every worker, so this is the chief's random seed.
        with strategy.scope():
            shared = tf.Variable(np.random.randint(2**31 - 1), dtype=tf.int64, trainable=False)
        train_input_spec = dataclasses.replace(input_spec, seed=int(shared.numpy()))
    else:
        train_input_spec = input_spec
    steps_per_epoch = model_helpers.steps_per_epoch(data.train_examples, config.batch_size)
    max_steps = total_steps = config.train_epochs * steps_per_epoch
    # Seeded before the budget's timed copy: the run may continue from it.
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if config.seed is not None or config.deterministic:
        keras.utils.set_random_seed(config.seed or 0)
    budget_entry, copy = None, {}
    if config.train_budget_seconds:

        def timed_copy():
            # Built as the real run is (pretrained weights too), over the longest schedule.
            copy["training"] = steps.training(
                config, strategy, network, spec, data.num_classes, steps_per_epoch,
                max_steps, resuming=False, stretchable=True)
            copy["iterator"] = iter(strategy.experimental_distribute_dataset(
                train_input.train_dataset(train_input_spec, data, num_workers=workers)))
            return copy["training"].train_fn, copy["iterator"]

        def can_keep(steps_taken: int, train_steps: int) -> bool:
            # The copy's steps are the run's first when the planned schedule gives them the
            # same learning rates (inside the warm-up) and the run goes on past them.
            if steps_taken >= min(train_steps, config.max_train_steps or train_steps):
                return False
            return budget.same_rates(network.learning_rate_schedule(
                config.schedule_spec(steps_per_epoch, train_steps)), copy["training"].schedule,
                steps_taken)

        total_steps, budget_entry = budget.budgeted(config, saved, strategy, timed_copy,
                                                    steps_per_epoch=steps_per_epoch,
                                                    started=started, can_keep=can_keep)
        if not budget_entry.get("kept_steps"):
            copy.clear()
            gc.collect()  # the copy's weights and slots (tf.function cycles), before the run's
        resolved = config_json(budget=budget_entry)

    benchmark_logger, hooks = train_log.run_loggers(config, chief=chief, model_name=spec.name,
                                                    resolved=resolved)

    # --- data ---
    steps_per_cycle = config.epochs_between_evals * steps_per_epoch
    last_step = min(total_steps, config.max_train_steps or total_steps)
    if copy:  # the input goes on where the kept steps left it
        train_iterator = copy.pop("iterator")
    else:
        train_iterator = iter(strategy.experimental_distribute_dataset(
            train_input.train_dataset(train_input_spec, data, num_workers=workers)))
    eval_data = train_input.eval_dataset(input_spec, data)

    # --- model, optimizer, checkpoint ---
    planned_steps = (budget_entry or {}).get("planned_steps", total_steps)
    kept = copy.pop("training", None)  # the timed copy, when the run goes on from its steps
    if kept:
        # The copy was built as this run is, over --train_epochs: it is the run, and its train
        # function, traced once, trains on (building the run anew traced it again: 2-4 s). A
        # shorter plan's schedule and batch-norm horizon are laid over it: variables of the
        # traced step.
        if planned_steps < max_steps:
            steps.lay_over(kept, config, network, steps_per_epoch, planned_steps)
        run = kept
    else:
        # resuming: no pretrained weights loaded where a checkpoint overwrites them.
        run = steps.training(
            config, strategy, network, spec, data.num_classes, steps_per_epoch, planned_steps,
            resuming=tf.train.latest_checkpoint(config.model_dir) is not None,
            stretchable=bool(budget_entry))
    schedule, state, weight_average, train_fn = (run.schedule, run.state, run.weight_average,
                                                 run.train_fn)
    if isinstance(schedule, Stretchable) and budget_entry.get("lengthened_at_step"):
        schedule.stretch(budget_entry["lengthened_at_step"], total_steps)
    manager = tf.train.CheckpointManager(state.checkpoint, write_dir,
                                         max_to_keep=config.keep_checkpoints)
    # --- restore ---
    checkpointing.restore_latest(manager, state.checkpoint)
    if saved and (changes := resumed_changes(saved, resolved)):
        restored = int(state.step.numpy())
        rates = None
        schedule_changes = {key: saved[key] for key in changes if key in SCHEDULE_SETTINGS}
        if schedule_changes and not budget_entry:  # (a budgeted run keeps its planned steps)
            started_with = dataclasses.replace(config, **schedule_changes)
            rates = [float(rate(restored)) for rate in (network.learning_rate_schedule(
                started_with.schedule_spec(steps_per_epoch)), schedule)]
        logging.warning(changes_warning(restored, changes, rates))
        history["resumed_with"] = [*saved.get("resumed_with", []),
                                   {"step": restored, "changes": changes}]
    elif saved and saved.get("resumed_with"):
        history["resumed_with"] = saved["resumed_with"]
    resolved = {**resolved, **history}
    if chief:  # after the restore: a run that cannot resume leaves the folder's record as it was
        write_config(config.model_dir, resolved)
    # The other workers' write_dir is empty: they take the chief's (restored) state.
    distribution_utils.broadcast_from_chief(strategy, steps.state_variables(state, weight_average))
    # A budget's timing ran only where no checkpoint was: a run that keeps its steps is new.
    resumed_from = 0 if kept else int(state.step.numpy())
    if kept:
        logging.info("train_budget_seconds: continuing from the timed copy's %d steps",
                     int(state.step.numpy()))
        kept = None
        gc.collect()
    evaluate_step = steps.make_eval_step(state.model, strategy, data.num_classes)

    if config.max_train_steps and resumed_from > config.max_train_steps:
        logging.warning("--max_train_steps=%d is below step %d, where %s's checkpoint is: "
                        "nothing to train (a model_dir's steps are not undone; give another "
                        "--model_dir to train a shorter run)", config.max_train_steps,
                        resumed_from, config.model_dir)
    log = train_log.TrainingLog(config.model_dir if chief else write_dir,
                                resumed_from=resumed_from, hooks=hooks,
                                benchmark_logger=benchmark_logger, model_dir=config.model_dir)

    # --- loop ---
    step = int(state.step.numpy())
    stopped_by = None  # set where the loop stops early; else train_epochs or the budget's
    eval_metrics, budget_used = None, None
    throughput = []
    deadline = budget.Deadline.for_run(
        config, budget_entry, started, strategy=strategy, steps_per_epoch=steps_per_epoch,
        train_steps=total_steps, resumed=resumed_from > 0) if budget_entry else None
    # Ctrl-C or SIGTERM between steps (or during a validation) keeps the steps since the
    # last save: a checkpoint at the step reached, which the same command resumes from, and
    # (once that is saved) the point of the train call the interrupt cut off.
    with (log.drawn_when_interrupted(manager, run.last_call, schedule, state.optimizer),
          checkpointing.saved_when_interrupted(
              manager, state.step, enabled=workers == 1,
              unsaveable=lambda: checkpointing.why_unsaveable(state.model, weight_average))):
        while step < last_step:
            cycle_start = step
            cycle_end = min((step // steps_per_cycle + 1) * steps_per_cycle, last_step)
            while step < cycle_end:
                num_steps = min(config.steps_per_loop, cycle_end - step)
                if deadline:
                    num_steps = deadline.steps_that_fit(step, num_steps)
                    if not num_steps:
                        break
                loop_started = budget.now()
                started = time.perf_counter()
                totals = {k: float(v) for k, v in train_fn(train_iterator,
                                                           tf.constant(num_steps)).items()}
                elapsed = time.perf_counter() - started
                previous, step = step, int(state.step.numpy())
                if totals["nonfinite_steps"] > 0 or not math.isfinite(totals["loss"]):
                    where = (f"step {step}" if num_steps == 1
                             else f"one of steps {previous + 1}-{step}")
                    raise FloatingPointError(
                        f"training loss became NaN/Inf at {where}; stopped without saving (last "
                        f"checkpoint: {manager.latest_checkpoint})")
                metrics = train_log.call_metrics(totals, num_steps, elapsed, schedule,
                                                 state.optimizer)
                throughput.append(metrics["examples_per_second"])
                log.train_point(step, metrics)
                every = config.checkpoint_every_steps
                if every and step // every > previous // every and step < cycle_end:
                    checkpointing.save(manager, step)
                if deadline:
                    deadline.observe(num_steps, budget.now() - loop_started)
                    budget_used = deadline.used_seconds()
                    if deadline.reached:
                        break
                    longer = deadline.lengthen(step, total_steps, schedule, budget_entry)
                    if longer > total_steps:
                        resolved = config_json(budget=budget_entry)
                        if chief:
                            write_config(config.model_dir, resolved)
                        total_steps = last_step = longer
                        cycle_end = min((cycle_start // steps_per_cycle + 1) * steps_per_cycle,
                                        last_step)
            if deadline and deadline.reached:
                logging.warning("train_budget_seconds=%g: stopping at step %d of the %d planned, "
                                "at the budget (the steps ran slower than the speed they were "
                                "planned by)",
                                config.train_budget_seconds, step, total_steps)
                last_step = step
                if step == cycle_start:  # nothing trained since the last validation and save
                    break

            # Batch-norm moving statistics are updated from each worker's own part of the batch;
            # every worker takes the chief's (what it saves and exports) before evaluating.
            distribution_utils.broadcast_from_chief(strategy, state.model.non_trainable_variables)
            eval_started = budget.now()
            with ema.averaged(weight_average):
                eval_metrics = steps.evaluate(evaluate_step, strategy, eval_data)
            if deadline:
                deadline.excluded += budget.now() - eval_started
            logging.info("step %d: %s accuracy = %.4f, loss = %.4f (%d examples)", step,
                         config.eval_split, eval_metrics["accuracy"], eval_metrics["loss"],
                         eval_metrics["examples"])
            log.eval_point(step, eval_metrics)
            checkpointing.save(manager, step)
            if model_helpers.past_stop_threshold(config.stop_threshold, eval_metrics["accuracy"]):
                stopped_by = "stop_threshold"
                break
        else:
            if config.max_train_steps and last_step < total_steps:
                stopped_by = "max_train_steps"
    if deadline and deadline.reached:
        stopped_by = "budget_deadline"
    stopped_by = stopped_by or ("train_budget_seconds" if total_steps < max_steps
                                else "train_epochs")

    if eval_metrics is None:  # resumed a finished run: report its final accuracy again
        with ema.averaged(weight_average):
            eval_metrics = steps.evaluate(evaluate_step, strategy, eval_data)
    log.end(step)

    # --- export ---
    export_path = None
    if config.export_dir and chief:
        with ema.averaged(weight_average):  # (a rerun of a finished run exports nothing)
            export_path, exported = export_lib.export_unless_done(
                state.model, {**resolved, "exported_step": step}, config.export_dir,
                tta_views=config.export_tta)
        if exported:
            logging.info("exported SavedModel to %s", export_path)
        else:
            logging.info("the newest export, %s, is already of step %d: not exported again",
                         export_path, step)
    return TrainResult(model_name=spec.name, step=step, resumed_from_step=resumed_from,
                       stopped_by=stopped_by, eval_accuracy=eval_metrics["accuracy"],
                       eval_loss=eval_metrics["loss"], eval_examples=eval_metrics["examples"],
                       examples_per_second=float(np.median(throughput[1:] or throughput))
                       if throughput else None,
                       export_path=export_path,
                       # The epochs trained: not the plan's when the run stopped short of
                       # it (the deadline, --max_train_steps, --stop_threshold).
                       budget_epochs=step / steps_per_epoch if budget_entry else None,
                       budget_seconds_used=budget_used,
                       budget_seconds=config.train_budget_seconds if budget_entry else None)

