"""The budget's timed copy, built over --train_epochs and laid over a shorter plan
(official/core/steps.py lay_over), trains as a run built over the plan, with the options that
read what is laid over (learning rates, batch-norm momentum) from inside the traced step."""

from __future__ import annotations

import json

import pytest
import tensorflow as tf

from networks.resnet import resnet_model, train_steps
from official.core import budget, steps
from official.core.config import TrainConfig
from official.modeling.stretchable import Stretchable
from official.utils.logs import hooks as hooks_lib
from tests.test_budget import (StepsTake, _calibrate_at_100_seconds_a_step, _config, _scalars,
                               _train)
from tests.trainer_fixtures import mirrored_strategy, tiny_dataset

STRATEGIES = {"one device": lambda: tf.distribute.OneDeviceStrategy("/cpu:0"),
              "two replicas": mirrored_strategy}


NETWORK = train_steps.ResNetNetwork(resnet_size=18, small_input=True)


def _training(config: TrainConfig, strategy, num_steps: int) -> steps.Training:
    spec = NETWORK.model_spec(3, image_size=config.image_size, channels=1)
    return steps.training(config, strategy, NETWORK, spec, 3, 2, num_steps, resuming=False,
                          stretchable=True)


def _momenta(training: steps.Training) -> set[float]:
    return {layer.momentum for layer in training.state.model.layers
            if isinstance(layer, resnet_model.FusedBatchNormalization)}


@pytest.mark.parametrize("strategy_name,options", [
    # XLA compiles the forward pass of each replica on its own device: the batch-norm
    # momentum's variable must be there too (it was on the first device only: "Trying to
    # access resource ... located in device CPU:0 from device CPU:1").
    ("two replicas", dict(jit_compile=True)),
    ("one device", dict(ema_decay=0.9, lr_schedule="piecewise")),
])
def test_a_laid_over_copy_trains_as_the_plan_built_anew(tmp_path, strategy_name, options):
    """A copy built over 600 steps, traced, laid over 400, and a training built over 400,
    from the same state: the same learning rates and momentum, and after 12 steps (past the
    10-step warm-up) the same weights, moving statistics, optimizer (and loss scale, weight
    average), bit for bit, with one trace."""
    strategy = STRATEGIES[strategy_name]()
    config = TrainConfig(data_dir=str(tmp_path), model_dir=str(tmp_path / "model"),
                         image_size=16, batch_size=8, train_epochs=300, warmup_epochs=5,
                         **{"lr_schedule": "cosine", **options})
    copy, plan = _training(config, strategy, 600), _training(config, strategy, 400)
    for into, value in zip(steps.state_variables(plan.state, plan.weight_average),
                           steps.state_variables(copy.state, copy.weight_average)):
        into.assign(tf.convert_to_tensor(value))
    rng = tf.random.Generator.from_seed(1)
    batch = (rng.uniform((8, 16, 16, 1)), rng.uniform((8,), maxval=3, dtype=tf.int32))
    iterators = [iter(strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch).repeat())) for _ in range(2)]
    copy.train_fn(iterators[0], tf.constant(0))  # traced over 600 steps
    assert _momenta(copy) == {1 - 20 / 600}

    steps.lay_over(copy, config, NETWORK, 2, 400)
    assert _momenta(copy) == _momenta(plan) == {1 - 20 / 400}
    assert ([float(copy.schedule(step)) for step in range(0, 600, 7)]
            == [float(plan.schedule(step)) for step in range(0, 600, 7)])
    for training, iterator in zip((copy, plan), iterators):
        training.train_fn(iterator, tf.constant(12))
    assert copy.train_fn.experimental_get_tracing_count() == 1
    trained = [steps.state_variables(training.state, training.weight_average)
               for training in (copy, plan)]
    assert int(copy.state.step.numpy()) == 12
    for ours, theirs in zip(*trained):
        assert (ours.numpy() == theirs.numpy()).all(), ours.name


def test_a_laid_over_run_lengthened_and_resumed_keeps_its_rates_and_momentum(tmp_path,
                                                                             monkeypatch):
    """The copy takes 1 + 20 steps inside a 22-step warm-up, timed at 100 s a step: 1,900 s
    fit 40 of the 60 steps of 30 epochs, and the copy, kept, is laid over them. The steps then
    take 60 s: past halfway, with 3 loops timed after the first, the run is lengthened to 52
    steps at step 25 and killed after step 30. The resumed run, built over config.json's
    planned steps and stretched, trains as the laid-over one did: one schedule's rates at
    every step, and both with the plan's batch-norm momentum (0.9, the floor, at this length:
    the test above tells a laid-over momentum from the copy's)."""
    data = tiny_dataset(tmp_path / "data")
    _calibrate_at_100_seconds_a_step(monkeypatch)
    monkeypatch.setattr(budget, "LENGTHEN_TIMED_STEPS", 3)
    hook = StepsTake(budget.now, 60.0, stop_at=30)
    monkeypatch.setattr(hooks_lib, "get_train_hooks", lambda *args, **kwargs: [hook])
    states, build = [], train_steps.ResNetNetwork.build_training_state
    monkeypatch.setattr(train_steps.ResNetNetwork, "build_training_state",
                        lambda *args, **kwargs: states.append(build(*args, **kwargs))
                        or states[-1])
    model_dir = tmp_path / "model"
    config = _config(data, model_dir, train_budget_seconds=1900.0, train_epochs=30,
                     epochs_between_evals=30, steps_per_loop=1, lr_schedule="cosine",
                     warmup_epochs=11, checkpoint_every_steps=1)
    with pytest.raises(KeyboardInterrupt):
        _train(config)
    entry = json.loads((model_dir / "config.json").read_text())["budget"]
    assert (entry["kept_steps"], entry["planned_steps"], entry["lengthened_at_step"],
            entry["train_steps"]) == (21, 40, 25, 52)
    hook.stop_at = None
    result = _train(config)
    assert (result.resumed_from_step, result.step) == (30, 52)
    assert len(states) == 2  # the copy (the first run), the resumed run

    def momenta(state):
        layers = [layer for layer in state.model.layers
                  if isinstance(layer, resnet_model.FusedBatchNormalization)]
        return ({layer.momentum for layer in layers},
                layers[0].momentum_variable.pair.numpy().tolist())

    planned = train_steps.batch_norm_momentum(None, 40)
    assert momenta(states[0]) == momenta(states[1]) == (
        {planned}, tf.constant([planned, 1 - planned]).numpy().tolist())
    expected = Stretchable(train_steps.learning_rate_schedule(config.schedule_spec(2, 40)))
    expected.stretch(25, 52)
    events = _scalars(model_dir / "train", "learning_rate")
    assert sorted(events) == list(range(22, 53))
    for step, value in events.items():
        assert value == pytest.approx(float(expected(step - 1)), rel=1e-6, abs=1e-9), step
