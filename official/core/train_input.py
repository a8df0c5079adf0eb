"""Training and evaluation input: the converter's shards through dataset.reader, or synthetic data.

Example counts and class names come from the converter's manifest.json.
"""

from __future__ import annotations

import dataclasses
import math
import os

import tensorflow as tf

from dataset import augment, preprocess, reader
from official.core.config import SYNTHETIC_BATCHES_PER_EPOCH, TrainConfig


@dataclasses.dataclass(frozen=True)
class DataSpec:
    class_names: tuple[str, ...]
    train: reader.SplitInfo | None  # None with synthetic data and no manifest
    eval: reader.SplitInfo | None
    train_examples: int
    eval_examples: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def resolve_data(config: TrainConfig) -> DataSpec:
    """Class names and example counts from the manifest (or synthetic stand-ins)."""
    has_manifest = bool(config.data_dir) and os.path.isfile(
        os.path.join(config.data_dir, reader.MANIFEST))
    if config.use_synthetic_data and not has_manifest:
        names = tuple(f"class_{index}" for index in range(config.synthetic_num_classes))
        examples = SYNTHETIC_BATCHES_PER_EPOCH * config.batch_size
        return DataSpec(names, None, None, examples, config.batch_size * 4)
    if not config.data_dir:
        raise ValueError("--data_dir is required (a folder written by tf_convert_data.py)")
    train = reader.split_info(config.data_dir, config.train_split)
    evaluation = reader.split_info(config.data_dir, config.eval_split)
    for info in (train, evaluation):
        if not config.use_synthetic_data and (info.num_examples <= 0 or not info.files):
            raise ValueError(f"--data_dir={config.data_dir}: split {info.split!r} has no records")
        missing = [path for path in info.files if not os.path.isfile(path)]
        if missing and not config.use_synthetic_data:
            raise ValueError(f"--data_dir={config.data_dir}: shard {missing[0]} is missing")
    if len(train.class_names) < 2:
        raise ValueError(f"--data_dir={config.data_dir}: needs at least 2 classes, found "
                         f"{list(train.class_names)}")
    return DataSpec(tuple(train.class_names), train, evaluation,
                    max(train.num_examples, 1), max(evaluation.num_examples, 1))


def _synthetic_dataset(config: TrainConfig, num_classes: int, batch_size: int):
    # One random batch repeated: no input pipeline at all, which is the point of the flag.
    shape = (batch_size, config.image_size, config.image_size, config.channels)
    images = tf.random.uniform(shape, -1.0, 1.0, seed=config.seed)
    labels = tf.random.uniform((batch_size,), 0, num_classes, tf.int32, seed=config.seed)
    return tf.data.Dataset.from_tensors((images, labels)).repeat()


def _reader_parallelism(config: TrainConfig):
    # The reader uses one value for its shard interleave (whose cycle is min(shards, 8), and
    # tf.data rejects a fixed parallelism above the cycle) and its decode map; AUTOTUNE is valid
    # for both. --num_parallel_calls applies to the preprocessing map below.
    return tf.data.AUTOTUNE


def shard_policy(num_files: int, num_workers: int) -> tf.data.experimental.AutoShardPolicy:
    """How workers split the training input: by file when every worker gets at least one shard
    (each reads only its files), else by data (each reads everything, keeps its part of each
    global batch; identical shuffles then matter, hence a seed common to all workers)."""
    if num_workers <= 1:
        return tf.data.experimental.AutoShardPolicy.OFF
    if num_files >= num_workers:
        return tf.data.experimental.AutoShardPolicy.FILE
    return tf.data.experimental.AutoShardPolicy.DATA


def _with_shard_policy(dataset: tf.data.Dataset, policy) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)


def train_dataset(config: TrainConfig, data: DataSpec, num_workers: int = 1) -> tf.data.Dataset:
    """Endless, shuffled, augmented batches of the global batch size (sharded across
    `num_workers` by tf.distribute according to `shard_policy`)."""
    if config.use_synthetic_data:
        # Every worker feeds its share of the one random batch; nothing to split.
        return _with_shard_policy(_synthetic_dataset(config, data.num_classes,
                                                     config.batch_size),
                                  tf.data.experimental.AutoShardPolicy.OFF)
    # Out of order only when nobody needs the order: then a slow record (a large film) never
    # holds up the batch. Splitting by data across workers needs the same order everywhere.
    deterministic = True if config.deterministic or num_workers > 1 else False
    dataset = reader.make_dataset(data.train.files, channels=config.channels, shuffle_files=True,
                                  seed=config.seed,
                                  num_parallel_calls=_reader_parallelism(config),
                                  deterministic=deterministic)
    if config.cache:
        dataset = dataset.cache()  # decoded uint8, before the random augmentation
    dataset = dataset.shuffle(min(data.train_examples, 10_000), seed=config.seed,
                              reshuffle_each_iteration=True).repeat()
    dataset = dataset.map(
        lambda image, label: (augment_for_train(image, config), label),
        num_parallel_calls=config.num_parallel_calls, deterministic=deterministic)
    # drop_remainder: every step sees the full global batch, so every replica gets its share.
    dataset = dataset.batch(config.batch_size, drop_remainder=True)
    if config.mixup_alpha or config.cutmix_alpha:
        # Mixed over the global batch, before it is split across replicas.
        dataset = dataset.map(lambda images, labels: mix_batch(images, labels, config,
                                                               data.num_classes),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return _with_shard_policy(dataset, shard_policy(len(data.train.files), num_workers))


def augment_spec(config: TrainConfig) -> augment.AugmentSpec:
    """The --augment_* flags as dataset/augment.py's spec."""
    return augment.AugmentSpec(scale=config.augment_scale, translate=config.augment_translate,
                               rotate_degrees=config.augment_rotate, noise=config.augment_noise,
                               invert=config.augment_invert)


def augment_for_train(image: tf.Tensor, config: TrainConfig) -> tf.Tensor:
    """One decoded image -> the training input: --augment_* transforms on the full image,
    then the random resized crop (and --color_jitter, --random_flip) and normalisation."""
    spec = augment_spec(config)
    if spec.active:
        image = augment.augment_image(tf.cast(image, tf.float32), spec, preprocess.fresh_seed())
    return preprocess.preprocess_for_train(image, image_size=config.image_size,
                                           random_flip=config.random_flip,
                                           color_jitter=config.color_jitter)


def mix_batch(images: tf.Tensor, labels: tf.Tensor, config: TrainConfig, num_classes: int
              ) -> tuple[tf.Tensor, tf.Tensor]:
    """mixup or cutmix on one batch; labels become probabilities [N, num_classes]."""
    targets = tf.one_hot(labels, num_classes)
    choice_seed, mix_seed = tf.unstack(tf.random.experimental.stateless_split(preprocess.fresh_seed(), 2))
    if config.mixup_alpha and config.cutmix_alpha:
        use_mixup = tf.random.stateless_uniform((), choice_seed) < 0.5
        return tf.cond(use_mixup,
                       lambda: augment.mixup(images, targets, config.mixup_alpha, mix_seed),
                       lambda: augment.cutmix(images, targets, config.cutmix_alpha, mix_seed))
    if config.mixup_alpha:
        return augment.mixup(images, targets, config.mixup_alpha, mix_seed)
    return augment.cutmix(images, targets, config.cutmix_alpha, mix_seed)


PADDING_LABEL = -1  # marks the filler examples of the last evaluation batch


def eval_dataset(config: TrainConfig, data: DataSpec) -> tf.data.Dataset:
    """Every evaluation example once, deterministic preprocessing, in full global batches.

    The last batch is filled up with blank images labelled PADDING_LABEL, which the eval step
    ignores: every replica then always gets a non-empty batch of the same shape (a partial last
    batch can leave a replica an empty one, which batch norm on CPU rejects) and the step is
    traced once.
    """
    if config.use_synthetic_data:
        batches = math.ceil(data.eval_examples / config.batch_size)
        return _synthetic_dataset(config, data.num_classes, config.batch_size).take(batches)
    dataset = reader.make_dataset(data.eval.files, channels=config.channels,
                                  num_parallel_calls=_reader_parallelism(config),
                                  deterministic=True)
    dataset = dataset.map(
        lambda image, label: (preprocess.preprocess_for_eval(
            image, image_size=config.image_size), label),
        num_parallel_calls=config.num_parallel_calls)
    if config.cache:
        dataset = dataset.cache()
    filler = -data.eval_examples % config.batch_size
    if filler:
        blank = tf.zeros((config.image_size, config.image_size, config.channels), tf.float32)
        padding = tf.data.Dataset.from_tensors((blank, tf.constant(PADDING_LABEL, tf.int32)))
        dataset = dataset.concatenate(padding.repeat(filler))
    # By data, always: workers run in lock-step, so each must get the same number of batches,
    # which splitting by file (shards of different sizes) would not guarantee.
    dataset = dataset.batch(config.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return _with_shard_policy(dataset, tf.data.experimental.AutoShardPolicy.DATA)


