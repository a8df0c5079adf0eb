"""--train_budget_seconds: the steps that fit, fixed at the start, kept on resume; the budget
as a deadline when the machine slows down."""

from __future__ import annotations

import json

import keras
import pytest
import tensorflow as tf

from networks.resnet import resnet_model, train_steps
from official.core import budget, steps, train_lib
from official.core.config import TrainConfig
from official.utils.logs import hooks as hooks_lib
from tests.trainer_fixtures import tiny_dataset

ONE_DEVICE = tf.distribute.OneDeviceStrategy("/cpu:0")


def _config(data_dir, model_dir, **overrides) -> TrainConfig:
    # 16 training examples / batch 8 = 2 steps per epoch.
    settings = dict(data_dir=str(data_dir), model_dir=str(model_dir), image_size=32,
                    batch_size=8, train_epochs=6, epochs_between_evals=6, hooks=(),
                    num_parallel_calls=2, seed=1, checkpoint_every_steps=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def _train(config: TrainConfig):
    return train_lib.train(config, ONE_DEVICE,
                           train_steps.ResNetNetwork(resnet_size=18, small_input=False))


def _scalars(folder, tag: str) -> dict[int, float]:
    """{step: value} of one TensorBoard scalar the trainer wrote in folder."""
    values = {}
    for path in folder.glob("events.out.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def test_plan_takes_the_steps_left_after_start_up():
    calibration = budget.Calibration(step_seconds=0.5, startup_seconds=4.0, timed_steps=20)
    # 10 steps per epoch = 5 s an epoch; 60 s - 10 s elapsed - 4 s start-up = 46 s: 92 steps,
    # 9.2 epochs (not rounded down to 9: the schedule does not care where an epoch ends).
    plan = budget.plan(60.0, 10.0, calibration, steps_per_epoch=10, max_epochs=100)
    assert (plan.train_steps, plan.epochs) == (92, pytest.approx(9.2))
    assert plan.epochs_that_fit == pytest.approx(9.2)
    assert plan.estimated_seconds == pytest.approx(10 + 4 + 46)
    # A run that keeps the timed copy's 23 steps goes on in its traced step: no start-up to pay
    # again, 50 s for 100 more steps (the start-up's 4 s were 8 of them).
    kept = budget.plan(60.0, 10.0, calibration, 10, max_epochs=100, steps_done=23)
    assert (kept.train_steps, kept.estimated_seconds) == (123, pytest.approx(10 + 50))
    assert budget.plan(60.0, 10.0, calibration, 10, max_epochs=3).train_steps == 30
    # Less than one epoch left (or none at all): one epoch, and the plan says how little fit.
    short = budget.plan(12.0, 10.0, calibration, 10, max_epochs=100)
    assert (short.train_steps, short.epochs_that_fit) == (10, 0.0)


def test_the_plan_log_says_what_each_figure_counts(caplog):
    """A fresh user's reading of one run: '37 steps' at 0.811 s and 'about 52 s' looked
    contradictory; the 20 s the timing had already used was not said."""
    calibration = budget.Calibration(step_seconds=0.811, startup_seconds=1.9, timed_steps=20)
    plan = budget.plan(30.0, 20.0, calibration, steps_per_epoch=37, max_epochs=5)
    with caplog.at_level("INFO"):
        budget.log_plan(30.0, calibration, plan, 5)
    info, warning = (record.getMessage() for record in caplog.records)
    assert ("20.0 s of the budget spent on timing and set-up; 0.27 epochs fit, training 37 "
            "steps = 1.00 of at most 5 epochs (30 s of steps; the run ends about 52 s after "
            "its start)") in info
    assert ("leaves 8 s for steps after timing and start-up, less than one epoch's 30 s on "
            "this machine: training one epoch anyway (the run ends about 52 s after its "
            "start)") in warning
    # A run that keeps the timed steps pays no start-up again, and the line does not count it.
    kept = budget.plan(30.0, 20.0, calibration, steps_per_epoch=37, max_epochs=5, steps_done=20)
    caplog.clear()
    with caplog.at_level("INFO"):
        budget.log_plan(30.0, calibration, kept, 5, kept_steps=20)
    warning = caplog.records[-1].getMessage()
    assert "leaves 10 s for steps after timing, less than one epoch's 30 s" in warning


class StepsTake:
    """A train hook (a hook runs after every loop, here of one step): each step takes
    `seconds` on the fake clock; `stop_at`: the run is killed after that step's hooks (before
    its checkpoint is written)."""

    def __init__(self, clock, seconds: float, stop_at: int | None = None):
        self.clock, self.seconds, self.stop_at = clock, seconds, stop_at

    def begin(self, model_dir):
        pass

    def after_step(self, step, metrics):
        self.clock.seconds += self.seconds
        if step == self.stop_at:
            raise KeyboardInterrupt(f"killed at step {step}")

    def end(self, step):
        pass


def test_budget_sets_the_run_length_and_a_resumed_run_keeps_it(tmp_path, monkeypatch):
    data = tiny_dataset(tmp_path / "data")
    measured = []
    clock = FakeClock()
    monkeypatch.setattr(budget, "now", clock)
    # The steps run as fast as they were timed: the plan stands (no lengthening).
    monkeypatch.setattr(hooks_lib, "get_train_hooks",
                        lambda *args, **kwargs: [StepsTake(clock, 100.0)])

    def fake_calibrate(train_fn, iterator, steps_per_loop):
        measured.append(steps_per_loop)
        # 100 s a step, 2 steps an epoch: 550 s of budget fit 5 steps, 2.5 epochs.
        return budget.Calibration(step_seconds=100.0, startup_seconds=0.0, timed_steps=20)

    monkeypatch.setattr(budget, "calibrate", fake_calibrate)
    config = _config(data, tmp_path / "model", train_budget_seconds=550.0,
                     lr_schedule="cosine")
    result = _train(config)
    assert measured == [1]  # --steps_per_loop=1
    assert (result.step, result.stopped_by, result.budget_epochs) == (
        5, "train_budget_seconds", 2.5)
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["train_epochs"] == 6 and saved["train_budget_seconds"] == 550.0
    assert (saved["budget"]["train_steps"], saved["budget"]["max_train_epochs"]) == (5, 6)
    assert saved["budget"]["epochs_that_fit"] == 2.75 and "planned_steps" not in saved["budget"]
    line = result.summary_line(eval_split="validation", model_dir="m", replicas=1)
    assert line.endswith("; 2.50 epochs in the --train_budget_seconds budget (this run used "
                         "500 s of 550)")
    # The schedule was laid over those 5 steps: the cosine reaches 0 after the last one.
    # Each step's point is the rate it trained with: the schedule's at the step before.
    planned = train_steps.learning_rate_schedule(config.schedule_spec(2, train_steps=5))
    assert float(planned(5)) == pytest.approx(0.0, abs=1e-7)
    events = _scalars(tmp_path / "model" / "train", "learning_rate")
    assert events == pytest.approx({step: float(planned(step - 1)) for step in range(1, 6)},
                                   rel=1e-5)

    # Resumed with a far bigger budget: the run keeps its length (no second measurement).
    again = _train(_config(data, tmp_path / "model", train_budget_seconds=1e6,
                           lr_schedule="cosine"))
    assert measured == [1]
    assert (again.step, again.resumed_from_step, again.budget_epochs) == (5, 5, 2.5)


def test_a_run_budgeted_in_whole_epochs_resumes_with_them(tmp_path, monkeypatch):
    """model_dirs from before the budget counted steps recorded only train_epochs."""
    data = tiny_dataset(tmp_path / "data")
    monkeypatch.setattr(budget, "calibrate", lambda *args: budget.Calibration(100.0, 0.0, 20))
    model_dir = tmp_path / "model"
    first = _train(_config(data, model_dir, train_budget_seconds=550.0, max_train_steps=1))
    # The summary counts what ran (1 step), not what the budget planned (5 steps, 2.5 epochs).
    assert (first.stopped_by, first.budget_epochs) == ("max_train_steps", 0.5)
    saved = json.loads((model_dir / "config.json").read_text())
    saved["train_epochs"] = 2  # what such a run wrote: the epochs it chose
    del saved["budget"]["train_steps"]
    (model_dir / "config.json").write_text(json.dumps(saved))
    monkeypatch.setattr(budget, "calibrate", None)  # a resumed run measures nothing
    again = _train(_config(data, model_dir, train_budget_seconds=550.0))
    assert (again.resumed_from_step, again.step, again.budget_epochs) == (1, 4, 2.0)


def test_real_calibration_times_the_step_and_counts_its_steps(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    # A budget this small fits less than an epoch: one epoch is trained anyway.
    result = _train(_config(data, tmp_path / "model", train_budget_seconds=1.0,
                            steps_per_loop=3, ema_decay=0.9))
    assert (result.step, result.budget_epochs) == (2, 1)
    entry = json.loads((tmp_path / "model" / "config.json").read_text())["budget"]
    assert entry["timed_steps"] == 21  # 7 calls of --steps_per_loop=3: at least 20 steps
    assert 0 < entry["step_seconds"] < 60 and entry["startup_seconds"] >= 0
    assert entry["epochs_that_fit"] == 0.0


def test_budget_cannot_be_added_to_a_run_started_without_one(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    _train(_config(data, tmp_path / "model", train_epochs=1, epochs_between_evals=1))
    with pytest.raises(ValueError, match=r"was started without --train_budget_seconds"):
        _train(_config(data, tmp_path / "model", train_budget_seconds=100.0))
    with pytest.raises(ValueError, match=r"--train_budget_seconds=0: must be positive"):
        _config(data, tmp_path / "other", train_budget_seconds=0)


class FakeClock:
    """budget.now for a test: time moves only when told to."""

    def __init__(self):
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


def test_deadline_grants_the_steps_that_end_in_time(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(budget, "now", clock)
    deadline = budget.Deadline(100.0, clock(), step_seconds=2.0, min_steps=10,
                               strategy=ONE_DEVICE)
    assert deadline.steps_that_fit(0, 30) == 30 and not deadline.reached  # 60 of 100 s
    clock.seconds += 60.0
    deadline.observe(30, 60.0)
    assert deadline.steps_that_fit(30, 30) == 20 and deadline.reached  # 40 s left: 20 steps
    deadline.observe(20, 60.0)  # slower now: 3 s a step
    clock.seconds += 60.0
    assert deadline.steps_that_fit(50, 30) == 0  # past the deadline
    # Validation passes do not count against the budget.
    deadline.excluded = 50.0
    assert deadline.steps_that_fit(50, 30) == 10  # 30 s left at 3 s a step
    # Never short of min_steps (the plan's one epoch), however late.
    clock.seconds += 1000.0
    assert deadline.steps_that_fit(4, 30) == 6 and deadline.reached
    assert deadline.steps_that_fit(10, 30) == 0


def test_a_run_that_falls_behind_stops_at_its_budget_and_resumes(tmp_path, monkeypatch):
    """Timed at 100 s a step, 550 s fit 5 steps; the steps then take 150 s each (a slower
    machine), so the third ends at 450 s and a fourth would end at 600: the run stops after 3
    steps, saved and validated, and a resumed run trains the remaining 2 of the plan."""
    data = tiny_dataset(tmp_path / "data")
    clock = FakeClock()
    monkeypatch.setattr(budget, "now", clock)
    monkeypatch.setattr(budget, "calibrate",
                        lambda *args: budget.Calibration(100.0, 0.0, 20))

    class SlowMachine:
        def begin(self, model_dir):
            pass

        def after_step(self, step, metrics):  # every loop (of one step) takes 150 s
            clock.seconds += 150.0

        def end(self, step):
            pass

    monkeypatch.setattr(hooks_lib, "get_train_hooks", lambda *args, **kwargs: [SlowMachine()])
    model_dir = tmp_path / "model"
    config = _config(data, model_dir, train_budget_seconds=550.0, lr_schedule="cosine")
    result = _train(config)
    assert (result.step, result.stopped_by, result.budget_epochs) == (3, "budget_deadline", 1.5)
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-3")
    assert json.loads((model_dir / "config.json").read_text())["budget"]["train_steps"] == 5
    line = result.summary_line(eval_split="validation", model_dir="m", replicas=1)
    assert "stopped by budget_deadline" in line and "1.50 epochs in the" in line
    # Only the fake clock moves: three steps of 150 s were what the budget counted.
    assert line.endswith("budget (this run used 450 s of 550)")
    # The schedule was not re-laid: step 3's learning rate is the 5-step cosine's.
    planned = train_steps.learning_rate_schedule(config.schedule_spec(2, train_steps=5))
    events = _scalars(model_dir / "train", "learning_rate")
    assert events[3] == pytest.approx(float(planned(2)), rel=1e-5) and events[3] > 0

    again = _train(_config(data, model_dir, train_budget_seconds=550.0,
                           lr_schedule="cosine"))
    assert (again.resumed_from_step, again.step, again.stopped_by) == (
        3, 5, "train_budget_seconds")
    assert again.budget_seconds_used == 300.0  # this process's two steps


def _calibrate_at_100_seconds_a_step(monkeypatch):
    """The real calibration (the copy trains its steps), its timing replaced by 100 s a step
    and no start-up, so that the plan is known; only the fake clock moves."""
    real = budget.calibrate

    def calibrate(train_fn, iterator, steps_per_loop):
        measured = real(train_fn, iterator, steps_per_loop)
        return budget.Calibration(100.0, 0.0, measured.timed_steps, measured.steps_taken)

    monkeypatch.setattr(budget, "calibrate", calibrate)
    monkeypatch.setattr(budget, "now", FakeClock())


@pytest.mark.parametrize("warmup_epochs,kept,planned", [(11, 21, 40), (0, 0, 19)])
def test_the_timed_steps_are_kept_when_the_plan_gives_them_the_same_learning_rates(
        tmp_path, monkeypatch, warmup_epochs, kept, planned):
    """2 steps an epoch, at most 30 epochs; the copy takes 1 + 20 steps (--steps_per_loop=1).
    1,900 s of budget fit 19 more steps at 100 s. Inside a 22-step warm-up the copy's
    learning rates (laid over 60 steps) are the 40-step plan's: the run goes on from step 21.
    Without warm-up the cosines differ from step 1: the copy is dropped, 19 steps from 0."""
    data = tiny_dataset(tmp_path / "data")
    _calibrate_at_100_seconds_a_step(monkeypatch)
    model_dir = tmp_path / "model"
    config = _config(data, model_dir, train_budget_seconds=1900.0, train_epochs=30,
                     epochs_between_evals=30, steps_per_loop=1, lr_schedule="cosine",
                     warmup_epochs=warmup_epochs)
    result = _train(config)
    entry = json.loads((model_dir / "config.json").read_text())["budget"]
    assert (entry["kept_steps"], entry["train_steps"]) == (kept, planned)
    assert (result.step, result.resumed_from_step, result.stopped_by) == (
        planned, 0, "train_budget_seconds")
    events = _scalars(model_dir / "train", "learning_rate")
    assert sorted(events) == list(range(kept + 1, planned + 1))  # the loop began at `kept`
    schedule = train_steps.learning_rate_schedule(config.schedule_spec(2, train_steps=planned))
    for step, value in events.items():
        assert value == pytest.approx(float(schedule(step - 1)), rel=1e-5)
    assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{planned}")


def _train_functions_made(monkeypatch) -> list:
    """The train functions (tf.functions) the trainer makes, in order."""
    made, real = [], steps.make_train_function
    monkeypatch.setattr(steps, "make_train_function",
                        lambda *args, **kwargs: made.append(real(*args, **kwargs)) or made[-1])
    return made


@pytest.mark.parametrize("train_epochs,planned", [(15, 30), (30, 40)])
def test_the_run_trains_on_with_the_timed_train_function(tmp_path, monkeypatch, train_epochs,
                                                         planned):
    """The copy takes 1 + 20 steps, all kept (a 22-step warm-up), and is the run: its train
    function goes on, traced once (the run was built again and traced the same step a second
    time, 2-4 s of every such run). When all of --train_epochs fit (1,900 s at 100 s a step: 15
    epochs = 30 steps) the copy was built over them; a shorter plan (40 of 60 steps) lays the
    schedule and the batch-norm horizon over its 40 steps, variables of the traced step (they
    were constants: that run built and traced its own, [1, 1])."""
    data = tiny_dataset(tmp_path / "data")
    _calibrate_at_100_seconds_a_step(monkeypatch)
    made = _train_functions_made(monkeypatch)
    model_dir = tmp_path / "model"
    config = _config(data, model_dir, train_budget_seconds=1900.0, train_epochs=train_epochs,
                     epochs_between_evals=train_epochs, steps_per_loop=1,
                     lr_schedule="cosine", warmup_epochs=11)
    result = _train(config)
    entry = json.loads((model_dir / "config.json").read_text())["budget"]
    assert (entry["kept_steps"], entry["train_steps"]) == (21, planned)
    assert (result.step, result.resumed_from_step) == (planned, 0)
    assert [function.experimental_get_tracing_count() for function in made] == [1]
    events = _scalars(model_dir / "train", "learning_rate")
    assert sorted(events) == list(range(22, planned + 1))  # the loop began at step 21
    schedule = train_steps.learning_rate_schedule(config.schedule_spec(2, train_steps=planned))
    for step, value in events.items():
        assert value == pytest.approx(float(schedule(step - 1)), rel=1e-5)
    assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{planned}")


def _training(config: TrainConfig, network, train_steps: int):
    spec = network.model_spec(3, image_size=32, channels=1)
    return steps.training(config, ONE_DEVICE, network, spec, 3, 2, train_steps,
                          resuming=False, stretchable=True)


def test_a_copy_laid_over_a_shorter_plan_trains_as_the_plan_built_anew(tmp_path):
    """The budget's timed copy (built over 600 steps), traced, then laid over a 400-step plan
    trains bit for bit as a training built over the 400: the same learning rates (a 10-step
    warm-up, then cosines over 600 and 400) and batch-norm momentum (1 - 20/600 and 1 - 20/400)
    in the step already traced, the same weights, moving statistics and optimizer state. The
    layers' config says the plan's momentum; the checkpoint holds what it did before (no
    variable of the schedule's or the momentum's: older model_dirs resume)."""
    config = _config(tmp_path, tmp_path / "model", lr_schedule="cosine", warmup_epochs=5)
    network = train_steps.ResNetNetwork(resnet_size=18, small_input=True)
    copy, plan = _training(config, network, 600), _training(config, network, 400)
    plan.state.model.set_weights(copy.state.model.get_weights())
    rng = tf.random.Generator.from_seed(1)
    batch = (rng.uniform((8, 32, 32, 1)), rng.uniform((8,), maxval=3, dtype=tf.int32))
    iterators = [iter(ONE_DEVICE.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch).repeat())) for _ in range(2)]
    copy.train_fn(iterators[0], tf.constant(0))  # traced over 600 steps
    bn_layers = [[layer for layer in training.state.model.layers
                  if isinstance(layer, resnet_model.FusedBatchNormalization)]
                 for training in (copy, plan)]
    assert bn_layers[0][0].momentum == pytest.approx(1 - 20 / 600)

    steps.lay_over(copy, config, network, 2, 400)
    assert copy.schedule.total_steps == 400
    assert ([float(copy.schedule(step)) for step in range(0, 600, 7)]
            == [float(plan.schedule(step)) for step in range(0, 600, 7)])
    assert ([layer.get_config() for layer in bn_layers[0]]
            == [layer.get_config() for layer in bn_layers[1]])
    assert bn_layers[0][0].momentum == 1 - 20 / 400
    for training, iterator in zip((copy, plan), iterators):
        training.train_fn(iterator, tf.constant(12))  # past the warm-up
    assert copy.train_fn.experimental_get_tracing_count() == 1
    trained = [steps.state_variables(training.state) for training in (copy, plan)]
    assert int(trained[0][-1].numpy()) == 12 and len(trained[0]) == len(trained[1])
    for ours, theirs in zip(*trained):
        assert (ours.numpy() == theirs.numpy()).all(), ours.name

    saved = copy.state.checkpoint.save(str(tmp_path / "copy" / "ckpt"))
    plain = keras.Model.from_config(copy.state.model.get_config())  # no momentum variable
    constant = keras.optimizers.schedules.PolynomialDecay(0.1, 1, 0.1)  # and no schedule's
    plain_state = steps.training_state(
        plain, lambda: keras.optimizers.SGD(constant, momentum=0.9), dtype="fp32",
        loss_scale=None)
    bare = plain_state.checkpoint.save(str(tmp_path / "bare" / "ckpt"))
    assert ([name for name, _ in tf.train.list_variables(saved)]
            == [name for name, _ in tf.train.list_variables(bare)])
