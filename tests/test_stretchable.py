"""official/modeling/stretchable.py: the schedule a budgeted run stretches when it is
lengthened follows the plan, then ends at the new last step, and reads back from its config."""

from __future__ import annotations

import json

import keras
import pytest

from networks.resnet import train_steps
from official.core.config import TrainConfig
from official.modeling.stretchable import Stretchable


@pytest.mark.parametrize("name", ["cosine", "piecewise"])
def test_a_stretched_schedule_follows_the_plan_then_ends_at_the_new_last_step(name):
    spec = TrainConfig(data_dir="d", model_dir="m", lr_schedule=name, warmup_epochs=1,
                       train_epochs=10).schedule_spec(10, train_steps=100)
    planned = train_steps.learning_rate_schedule(spec)
    stretched = Stretchable(planned)
    assert stretched.total_steps == 100
    rates = lambda schedule, steps: [float(schedule(s)) for s in steps]  # noqa: E731
    assert rates(stretched, range(0, 130, 7)) == rates(planned, range(0, 130, 7))  # as is
    stretched.stretch(40, 160)  # 60 planned steps left become 120
    assert rates(stretched, range(41)) == rates(planned, range(41))
    for step in (40, 70, 100, 130, 160):
        assert float(stretched(step)) == pytest.approx(float(planned(40 + (step - 40) / 2)),
                                                       rel=1e-6)
    if name == "cosine":
        assert float(stretched(160)) == pytest.approx(0.0, abs=1e-7)
        assert float(stretched(159)) > 0
    else:  # the plan's decays at 60 and 80 (30% and 60% of 100) move to 80 and 120
        assert float(stretched(79)) == float(planned(0.0 + 59)) > float(stretched(80))
        assert float(stretched(119)) > float(stretched(120)) == float(planned(80))
    # Serialized as Keras serializes an optimizer's schedule, it reads back the same rates.
    schedules = keras.optimizers.schedules
    read_back = schedules.deserialize(json.loads(json.dumps(schedules.serialize(stretched))))
    assert isinstance(read_back, Stretchable)
    assert rates(read_back, range(0, 170, 3)) == rates(stretched, range(0, 170, 3))
