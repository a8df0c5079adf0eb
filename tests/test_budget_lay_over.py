"""The budget's timed copy, built over --train_epochs and laid over a shorter plan
(official/core/steps.py lay_over), trains as a run built over the plan, with the options that
read what is laid over (learning rates, batch-norm momentum) from inside the traced step."""

from __future__ import annotations

import pytest
import tensorflow as tf

from networks.resnet import resnet_model, train_steps
from official.core import steps
from official.core.config import TrainConfig

STRATEGIES = {"one device": lambda: tf.distribute.OneDeviceStrategy("/cpu:0"),
              # tests/conftest.py sets up the two logical CPUs
              "two replicas": lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])}


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
