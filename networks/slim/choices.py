"""The Slim trainer's optimizer and decay names: slim_train.py validates them, and
train_image_classifier.py offers them as flag choices before TensorFlow is imported (so its
--help answers at once)."""

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
DECAY_TYPES = ("fixed", "exponential", "polynomial")
