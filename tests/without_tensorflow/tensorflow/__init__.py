"""A stand-in TensorFlow that cannot be imported (tests/trainer_fixtures.py without_tensorflow):
a program run with it ahead on its path proves it reported its error before importing the
real one."""

raise ImportError("tensorflow imported: this run was to end before TensorFlow was needed")
