"""Training and evaluation input: the converter's shards through dataset.reader, or synthetic data.

Example counts and class names come from the converter's manifest.json. What the input reads of
the run is an InputSpec, built once from the TrainConfig (InputSpec.from_config).
"""

from __future__ import annotations

import dataclasses
import math
import os

from absl import logging
import tensorflow as tf

from dataset import augment, converted, preprocess, reader
from official.core.config import (SYNTHETIC_BATCHES_PER_EPOCH, TrainConfig,
                                  flip_crosses_sides, mirror_partners, mirror_swap_partners)


# The reader uses one value for its shard interleave (whose cycle is min(shards, 8), and tf.data
# rejects a fixed parallelism above the cycle) and its decode map; AUTOTUNE is valid for both.
# --num_parallel_calls applies to the preprocessing map.
READER_PARALLELISM = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Everything the training and evaluation input read of the run."""
    data_dir: str | None
    train_split: str
    eval_split: str
    use_synthetic_data: bool
    synthetic_num_classes: int
    image_size: int
    channels: int
    batch_size: int  # global
    seed: int | None
    deterministic: bool
    cache: bool
    num_parallel_calls: int
    random_flip: bool
    mirror_swap: float
    mirror_axis: str
    color_jitter: float
    augment: augment.AugmentSpec  # the --augment_* flags
    mixup_alpha: float
    cutmix_alpha: float

    @classmethod
    def from_config(cls, config: TrainConfig) -> InputSpec:
        return cls(data_dir=config.data_dir, train_split=config.train_split,
                   eval_split=config.eval_split, use_synthetic_data=config.use_synthetic_data,
                   synthetic_num_classes=config.synthetic_num_classes,
                   image_size=config.image_size, channels=config.channels,
                   batch_size=config.batch_size, seed=config.seed,
                   deterministic=config.deterministic, cache=config.cache,
                   num_parallel_calls=config.num_parallel_calls,
                   random_flip=config.random_flip, mirror_swap=config.mirror_swap,
                   mirror_axis=config.mirror_axis, color_jitter=config.color_jitter,
                   augment=augment.AugmentSpec(
                       scale=config.augment_scale, translate=config.augment_translate,
                       rotate_degrees=config.augment_rotate, noise=config.augment_noise,
                       invert=config.augment_invert, gamma=config.augment_gamma,
                       blur=config.augment_blur, rot90=config.augment_rot90,
                       frame=config.augment_frame),
                   mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    class_names: tuple[str, ...]
    train: converted.SplitInfo | None  # None with synthetic data and no manifest
    eval: converted.SplitInfo | None
    train_examples: int
    eval_examples: int
    dicom_rendering: dict | None = None  # converted.dicom_rendering: recorded in config.json

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def resolve_data(spec: InputSpec) -> DataSpec:
    """Class names and example counts from the manifest (or synthetic stand-ins)."""
    has_manifest = bool(spec.data_dir) and os.path.isfile(
        os.path.join(spec.data_dir, converted.MANIFEST))
    if spec.use_synthetic_data and not has_manifest:
        names = tuple(f"class_{index}" for index in range(spec.synthetic_num_classes))
        examples = SYNTHETIC_BATCHES_PER_EPOCH * spec.batch_size
        return DataSpec(names, None, None, examples, spec.batch_size * 4)
    if not spec.data_dir:
        raise ValueError("--data_dir is required (a folder written by tf_convert_data.py)")
    train = converted.split_info(spec.data_dir, spec.train_split)
    evaluation = converted.split_info(spec.data_dir, spec.eval_split)
    shared = set(train.split.split(",")) & set(evaluation.split.split(","))
    if shared:
        # The splits, not the flags, are named: the Slim trainer's flags are other names.
        logging.warning("the evaluation split %s is also trained on (training splits: %s): its "
                        "accuracy is not that of unseen images", spec.eval_split,
                        spec.train_split)
    for info in (train, evaluation):
        if not spec.use_synthetic_data and (info.num_examples <= 0 or not info.files):
            raise ValueError(f"{spec.data_dir}: split {info.split!r} has no records")
        missing = [path for path in info.files if not os.path.isfile(path)]
        if missing and not spec.use_synthetic_data:
            raise ValueError(f"{spec.data_dir}: shard {missing[0]} is missing")
    unlearnt = [name for name in train.class_names if not train.class_counts.get(name)]
    if unlearnt and not spec.use_synthetic_data:
        # The converter warned too; a run may come much later. The class keeps its output
        # (the model's classes are the data's), but no step ever trains it.
        logging.warning("%s: class(es) %s have no example in the training split %s: "
                        "the model will never predict them, and their images in other splits "
                        "are all errors", spec.data_dir, ", ".join(map(repr, unlearnt)),
                        spec.train_split)
    if not spec.use_synthetic_data:
        _warn_of_images(spec, reader.sample_images(train.files))
    if len(train.class_names) < 2:
        raise ValueError(f"{spec.data_dir}: needs at least 2 classes, found "
                         f"{list(train.class_names)}")
    if spec.mirror_swap:
        # before anything is written to model_dir (dicom_main.py has checked already)
        mirror_swap_partners(spec.mirror_swap, spec.data_dir, train.class_names)
    elif spec.random_flip and (
            crossing := flip_crosses_sides(spec.mirror_axis, spec.augment.rot90,
                                           spec.augment.rotate_degrees)):
        partners = mirror_partners(train.class_names)
        sided = [name for index, name in enumerate(train.class_names)
                 if partners[index] != index]
        if sided:
            # The flip mirrors without relabelling: where the columns carry left and right
            # (or a quarter turn has laid them there), a flipped kidney-left is a
            # kidney-right's image labelled left.
            logging.warning("--random_flip with left/right classes (%s): %s, so the flip "
                            "can mirror the patient's left and right and keep the label; drop "
                            "--random_flip (--mirror_swap mirrors and relabels)",
                            ", ".join(sided), crossing)
    return DataSpec(tuple(train.class_names), train, evaluation,
                    max(train.num_examples, 1), max(evaluation.num_examples, 1),
                    converted.dicom_rendering(spec.data_dir))


def _synthetic_dataset(spec: InputSpec, num_classes: int):
    # One random batch repeated: no input pipeline at all, which is the point of the flag.
    shape = (spec.batch_size, spec.image_size, spec.image_size, spec.channels)
    images = tf.random.uniform(shape, -1.0, 1.0, seed=spec.seed)
    labels = tf.random.uniform((spec.batch_size,), 0, num_classes, tf.int32, seed=spec.seed)
    return tf.data.Dataset.from_tensors((images, labels)).repeat()


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


def train_dataset(spec: InputSpec, data: DataSpec, num_workers: int = 1) -> tf.data.Dataset:
    """Endless, shuffled, augmented batches of the global batch size (sharded across
    `num_workers` by tf.distribute according to `shard_policy`)."""
    if spec.use_synthetic_data:
        # Every worker feeds its share of the one random batch; nothing to split.
        return _with_shard_policy(_synthetic_dataset(spec, data.num_classes),
                                  tf.data.experimental.AutoShardPolicy.OFF)
    # Out of order only when nobody needs the order: then a slow record (a large film) never
    # holds up the batch. Splitting by data across workers needs the same order everywhere.
    deterministic = True if spec.deterministic or num_workers > 1 else False
    dataset = reader.make_dataset(data.train.files, channels=spec.channels, shuffle_files=True,
                                  seed=spec.seed,
                                  num_parallel_calls=READER_PARALLELISM,
                                  deterministic=deterministic)
    if spec.cache:
        dataset = dataset.cache()  # decoded uint8, before the random augmentation
    dataset = dataset.shuffle(min(data.train_examples, 10_000), seed=spec.seed,
                              reshuffle_each_iteration=True).repeat()
    if spec.mirror_swap:
        partners = tf.constant(
            mirror_swap_partners(spec.mirror_swap, spec.data_dir, data.class_names), tf.int32)

        def augment_pair(image, label):
            image, label = augment.mirror_swap(image, label, partners, spec.mirror_swap,
                                               spec.mirror_axis, preprocess.fresh_seed())
            return augment_for_train(image, spec), label
    else:
        def augment_pair(image, label):
            return augment_for_train(image, spec), label
    dataset = dataset.map(augment_pair, num_parallel_calls=spec.num_parallel_calls,
                          deterministic=deterministic)
    # drop_remainder: every step sees the full global batch, so every replica gets its share.
    dataset = dataset.batch(spec.batch_size, drop_remainder=True)
    if spec.mixup_alpha or spec.cutmix_alpha:
        # Mixed over the global batch, before it is split across replicas.
        dataset = dataset.map(lambda images, labels: mix_batch(
                                  images, labels, num_classes=data.num_classes,
                                  mixup_alpha=spec.mixup_alpha,
                                  cutmix_alpha=spec.cutmix_alpha),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return _with_shard_policy(dataset, shard_policy(len(data.train.files), num_workers))


def _warn_of_images(spec: InputSpec, sample: reader.ImageSample) -> None:
    """What the model will see differently from a person looking at the files."""
    if sample.colour and spec.channels == 1:
        logging.warning("%s: %d of %d training images sampled are in colour (e.g. "
                        "%s); --channels=1 reads them as grey: --channels=3 keeps their colour",
                        spec.data_dir, sample.colour, sample.sampled, sample.colour_example)
    if sample.turned:
        # TensorFlow's decoders ignore EXIF, in training and prediction alike: the model is
        # consistent, but a photo of a film taken on its side is learnt on its side.
        logging.warning("%s: %d of %d training images sampled are JPEGs with an "
                        "EXIF orientation (e.g. %s): a viewer shows them turned, the model "
                        "reads them as stored", spec.data_dir, sample.turned, sample.sampled,
                        sample.turned_example)


def augment_for_train(image: tf.Tensor, spec: InputSpec) -> tf.Tensor:
    """One decoded image -> the training input: --augment_* transforms on the full image,
    then the random resized crop (and --color_jitter, --random_flip) and normalisation."""
    if spec.augment.active:
        image = augment.augment_image(tf.cast(image, tf.float32), spec.augment,
                                      preprocess.fresh_seed())
    return preprocess.preprocess_for_train(image, image_size=spec.image_size,
                                           random_flip=spec.random_flip,
                                           color_jitter=spec.color_jitter)


def mix_batch(images: tf.Tensor, labels: tf.Tensor, *, num_classes: int, mixup_alpha: float,
              cutmix_alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """mixup or cutmix (each batch one of the two when both alphas are set) on one batch;
    labels become probabilities [N, num_classes]."""
    targets = tf.one_hot(labels, num_classes)
    choice_seed, mix_seed = tf.unstack(
        tf.random.experimental.stateless_split(preprocess.fresh_seed(), 2))
    if mixup_alpha and cutmix_alpha:
        use_mixup = tf.random.stateless_uniform((), choice_seed) < 0.5
        return tf.cond(use_mixup,
                       lambda: augment.mixup(images, targets, mixup_alpha, mix_seed),
                       lambda: augment.cutmix(images, targets, cutmix_alpha, mix_seed))
    if mixup_alpha:
        return augment.mixup(images, targets, mixup_alpha, mix_seed)
    return augment.cutmix(images, targets, cutmix_alpha, mix_seed)


PADDING_LABEL = -1  # marks the filler examples of the last evaluation batch


def eval_dataset(spec: InputSpec, data: DataSpec) -> tf.data.Dataset:
    """Every evaluation example once, deterministic preprocessing, in full global batches.

    The last batch is filled up with blank images labelled PADDING_LABEL, which the eval step
    ignores: every replica then always gets a non-empty batch of the same shape (a partial last
    batch can leave a replica an empty one, which batch norm on CPU rejects) and the step is
    traced once.
    """
    if spec.use_synthetic_data:
        batches = math.ceil(data.eval_examples / spec.batch_size)
        return _synthetic_dataset(spec, data.num_classes).take(batches)
    dataset = reader.make_dataset(data.eval.files, channels=spec.channels,
                                  num_parallel_calls=READER_PARALLELISM,
                                  deterministic=True)
    dataset = dataset.map(
        lambda image, label: (preprocess.preprocess_for_eval(
            image, image_size=spec.image_size), label),
        num_parallel_calls=spec.num_parallel_calls)
    if spec.cache:
        dataset = dataset.cache()
    filler = -data.eval_examples % spec.batch_size
    if filler:
        blank = tf.zeros((spec.image_size, spec.image_size, spec.channels), tf.float32)
        padding = tf.data.Dataset.from_tensors((blank, tf.constant(PADDING_LABEL, tf.int32)))
        dataset = dataset.concatenate(padding.repeat(filler))
    # By data, always: workers run in lock-step, so each must get the same number of batches,
    # which splitting by file (shards of different sizes) would not guarantee.
    dataset = dataset.batch(spec.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return _with_shard_policy(dataset, tf.data.experimental.AutoShardPolicy.DATA)


