"""Converts a dataset folder into verified, sharded TFRecords (library of tf_convert_data.py).

Passes:
1. Validation (nothing written): find inputs and labels (``dataset.sources``),
   read DICOM headers (patient for grouping, BodyPartExamined for labels), find copies
   of one image (``dataset.duplicates``: kept in one split), assign
   classes, groups and splits (``dataset.assignment``, ``dataset.splits``) and collect
   *every* problem. ``dataset.conversion_plan``
   decides what they mean: with ``on_error="fail"`` any problem raises
   ConversionError before anything is written; with ``"skip"`` the problem files
   are left out and listed in the manifest. Dataset-wide problems (sizes that
   don't fit, a class too small, an unwritable output folder) always fail, and so
   does skipping that leaves no file, or a class too small (checked again after
   the encode pass).
2. Encode: worker processes run ``dataset.tasks.encode_file`` on every file
   task: read and validate the image (``dataset.images``), serialise and frame it
   (no TensorFlow anywhere in the converter); the main process appends the
   ordered records to staged shards (``dataset.shards``). ``dataset.beam_convert``
   runs this pass (the same per-file function) as an Apache Beam pipeline.
   Decode problems found here follow the same fail/skip rule; on failure the
   staging folder is removed.
3. Commit: shards renamed into place, ``labels.txt``, then ``manifest.json``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass

from dataset import assignment, duplicates, shards, sources, splits
from dataset.conversion_plan import Plan, fail_or_skip, write_order
from dataset.dicom_options import DicomOptions
from dataset.groups_csv import read_groups_rows
from dataset.manifest import build_manifest
from dataset.tasks import encode_chunk, encode_task, header_task, init_worker
from dataset.workers import WorkerPool
from official.utils import files
from official.utils import progress as reporting

ON_ERROR = ("fail", "skip")
LABEL_SOURCES = ("labels", "tag")
DEFAULT_HASH_KEY = b"body-part-classifier/patient-grouping/v1"


@dataclass(frozen=True)
class ConvertConfig:
    dataset_name: str
    dataset_dir: str
    output_dir: str
    output_name: str = "data"
    need_split: str = "None"
    validation_size: float = 0.1
    test_size: float = 0.1
    seed: int = 0
    layout: str = "auto"
    groups_csv: str | None = None
    shard_size_mb: float = 128.0
    num_workers: int = 0  # 0: every CPU core
    on_error: str = "fail"
    label_source: str = "labels"
    dicom: object | None = None  # dataset.dicom.DicomOptions; None means its defaults
    hash_key_env: str = "BODY_PART_HASH_KEY"
    show_progress: bool = True

    def __post_init__(self):
        for name, allowed in (("need_split", splits.SPLIT_MODES), ("layout", sources.LAYOUTS),
                              ("on_error", ON_ERROR), ("label_source", LABEL_SOURCES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {', '.join(allowed)}; "
                                 f"got {getattr(self, name)!r}")
        if (self.need_split == "predefined") != (self.layout == "predefined") \
                and self.layout != "auto":
            raise ValueError("--layout=predefined and --need_split=predefined go together; got "
                             f"--layout={self.layout} --need_split={self.need_split}")
        if self.shard_size_mb <= 0:
            raise ValueError(f"--shard_size_mb must be > 0; got {self.shard_size_mb}")
        if self.num_workers < 0:
            raise ValueError(f"--num_workers must be >= 0 (0: all cores); got {self.num_workers}")
        if not self.output_dir:  # e.g. --output_dir=$OUT with OUT unset: not the current folder
            raise ValueError("--output_dir is empty")
        if not self.output_name or "/" in self.output_name:
            raise ValueError(f"--output_name must be a plain file-name prefix; "
                             f"got {self.output_name!r}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            # The manifest records these as UTF-8 text, and is written after the earlier
            # output is removed: a name it cannot hold must fail here.
            if isinstance(value, str) and not sources.is_utf8(value):
                raise ValueError(f"--{field.name}={sources.escape_non_utf8(value)} is not valid "
                                 "UTF-8 (manifest.json records it as UTF-8 text)")

    def manifest_flags(self) -> dict:
        flags = dataclasses.asdict(self)
        flags.pop("show_progress")
        # Absolute: a report names files relative to it (evaluation.source_dir), read from
        # any working directory.
        flags["dataset_dir"] = os.path.abspath(self.dataset_dir)
        if self.dicom is None:  # record the defaults in force, not "None"
            flags["dicom"] = dataclasses.asdict(DicomOptions())
        return flags


# --- validation pass ----------------------------------------------------------


def _output_problems(config: ConvertConfig, layout: str) -> list[sources.Problem]:
    output_dir = os.path.abspath(config.output_dir)
    probe = files.nearest_existing(output_dir)
    problems = []
    if not os.path.isdir(probe):
        problems.append(f"cannot create it: {probe} is not a folder")
    elif not os.access(probe, os.W_OK | os.X_OK):
        problems.append(f"{probe} is not writable")
    dataset_dir = os.path.abspath(config.dataset_dir)
    # The images/ + labels/ layout reads only those two folders: output beside them is fine.
    read = ([os.path.join(dataset_dir, "images"), os.path.join(dataset_dir, "labels")]
            if layout == "images_labels" else [dataset_dir])
    inside = [folder for folder in read
              if (output_dir + os.sep).startswith(folder + os.sep)]
    if inside:
        where = "--dataset_dir" if inside[0] == dataset_dir else inside[0]
        problems.append(f"is inside {where}, where it would be read as input")
    return [sources.Problem("--output_dir", p, fatal=True) for p in problems]


@dataclass
class _Headers:
    values: dict  # relpath -> (body_part, patient_key, modality)
    errors: set
    pixel_data: dict  # relpath -> where its pixel data's value is (DicomInfo.pixel_data)
    layouts: dict  # relpath -> a compressed pixel data's layout (DicomInfo.pixel_layout)


def _read_headers(workers, discovery, problems) -> _Headers:
    dicoms = [f for f in discovery.files if f.kind == "dicom"]
    headers = _Headers({}, set(), {}, {})
    results = workers.imap(header_task, [f.path for f in dicoms], chunksize=8)
    for item, (value, error) in zip(dicoms, results):
        if error:
            problems.append(sources.Problem(item.relpath, error))
            headers.errors.add(item.relpath)
        else:
            headers.values[item.relpath] = value[:3]
            if value[3] is not None:
                headers.pixel_data[item.relpath] = value[3]
            if value[4] is not None:
                headers.layouts[item.relpath] = value[4]
    return headers


def hash_key(config: ConvertConfig) -> bytes:
    """The key of the patient hash (``config.hash_key_env``, else the built-in one)."""
    return os.environ.get(config.hash_key_env, "").encode() or DEFAULT_HASH_KEY


def plan_conversion(config: ConvertConfig, workers: WorkerPool,
                    hold: contextlib.ExitStack) -> Plan:
    """The validation pass: inputs, DICOM headers (read in ``workers``), labels, splits.

    ``hold``: where the output folder's lock goes, for the caller's whole conversion, once
    the folder is known to be usable: before the headers are read (minutes for a large DICOM
    set), so that a second conversion into the folder is refused at its start, not after
    its planning. A folder made by the lock and left empty (a failed run) goes with it.

    Raises:
      ValueError: invalid configuration or dataset folder, a --groups_csv that cannot be
        read, or an output folder another conversion holds.
    """
    discovery = sources.discover(config.dataset_dir, config.layout,
                                 need_labels=config.label_source == "labels",
                                 dicom_force=bool(config.dicom and config.dicom.force))
    if config.need_split == "predefined" and discovery.layout != "predefined":
        raise ValueError(f"--need_split=predefined needs {config.dataset_dir} in the layout "
                         "train/<Class>/..., val|validation/<Class>/..., test/<Class>/...")
    if discovery.layout == "predefined" and config.need_split != "predefined":
        raise ValueError(f"{config.dataset_dir} is already split into train/val/test "
                         "folders: use --need_split=predefined")
    # Read before the headers (minutes for a large DICOM set): a CSV that cannot be read
    # stops the run at once; its bad rows are listed with the other problems (assign).
    groups_rows = read_groups_rows(config.groups_csv) if config.groups_csv else ({}, [])
    output_problems = _output_problems(config, discovery.layout)
    if not output_problems:
        hold.enter_context(files.folder_held(config.output_dir, "conversion"))
    problems = list(discovery.problems) + output_problems
    headers = _read_headers(workers, discovery, problems)
    identical = duplicates.identical_files({f.relpath: f.path for f in discovery.files},
                                           workers.imap, parts=headers.pixel_data,
                                           layouts=headers.layouts, dicom_options=config.dicom)
    return assignment.assign(config, discovery, headers, problems, identical, groups_rows)


@contextlib.contextmanager
def staging_area(output_dir: str):
    """A fresh staging folder in ``output_dir``, removed on exit. The caller holds the folder
    (``plan_conversion``'s ``hold``): one conversion into a folder at a time, so a staging
    folder found is a killed run's, and is removed."""
    shards.clean_stale_staging(output_dir)
    try:
        # Inside the try: a Ctrl-C just after the folder is made (before its name is
        # returned) left it behind.
        yield shards.make_staging_dir(output_dir)
    finally:
        shards.clean_stale_staging(output_dir)


def commit(config: ConvertConfig, staging: str, plan: Plan,
           staged: dict[str, list[shards.StagedShard]], counts: dict[str, dict[str, int]],
           skipped: list[dict]) -> dict:
    """Moves the staged shards into place, then writes labels.txt and manifest.json (built
    here from the plan, the shards, `counts` per split and class, and `skipped`); returns
    the manifest."""
    manifest = build_manifest(
        dataset_name=config.dataset_name, flags=config.manifest_flags(), classes=plan.names,
        variants=plan.variants, agreement=plan.agreement, staged=staged, counts=counts,
        skipped=skipped, warnings=plan.warnings)
    shards.commit(os.path.abspath(config.output_dir), staging,
                  [shard for split in staged for shard in staged[split]],
                  list(splits.SPLIT_NAMES) + [config.output_name],
                  "".join(f"{index}:{name}\n" for index, name in enumerate(plan.names)),
                  json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


# --- the local conversion -------------------------------------------------------


def convert_dataset(config: ConvertConfig) -> dict:
    """Converts ``config.dataset_dir`` into ``config.output_dir``; returns the manifest.

    Raises:
      ConversionError: one or more problems (nothing written, or with
        on_error="skip" only dataset-wide problems).
      ValueError: invalid configuration.
    """
    # Workers start first so that their start-up overlaps the folder walk.
    workers = WorkerPool(config.num_workers or os.cpu_count() or 1, init_worker,
                         (config.dicom, hash_key(config)))
    try:
        with contextlib.ExitStack() as hold:
            return _convert(config, workers, plan_conversion(config, workers, hold))
    finally:
        workers.close()


def _convert(config: ConvertConfig, workers: WorkerPool, plan: Plan) -> dict:
    """The encode pass of a planned conversion, then the commit (or the problems)."""
    problems = list(plan.problems)
    if plan.failing(config.on_error):
        # Failing anyway: decode the rest too (writing nothing), so that one run
        # lists every problem rather than one kind at a time.
        # By path, as every other list of problems (the tasks are in split order).
        problems += sorted((sources.Problem(task.relpath, error) for task, (_, error)
                            in zip(plan.tasks, workers.imap(encode_task, plan.tasks,
                                                            chunksize=8)) if error),
                           key=lambda problem: problem.path)
    skipped = fail_or_skip(config.on_error, config.dataset_dir, plan, problems)
    return _encode_and_commit(config, workers, plan, write_order(plan.tasks, skipped),
                              skipped)


def _encode_and_commit(config, workers, plan, tasks, skipped) -> dict:
    # Only a plan without output problems gets here: plan_conversion's hold has the folder.
    with staging_area(config.output_dir) as staging:
        split_order = list(dict.fromkeys(task.split for task in tasks))
        writers = {split: shards.SplitWriter(staging, split, int(config.shard_size_mb * 2**20))
                   for split in split_order}
        counts = {split: collections.Counter() for split in split_order}
        problems = []
        size = 8 if any(task.kind == "dicom" for task in tasks) else 64
        chunks = []  # up to `size` consecutive tasks of one split
        for task in tasks:
            if not chunks or chunks[-1][0].split != task.split or len(chunks[-1]) == size:
                chunks.append([])
            chunks[-1].append(task)
        results = workers.imap(encode_chunk, chunks, chunksize=1)
        progress = reporting.progress(len(tasks), unit="files", desc="converting",
                                      enabled=config.show_progress)
        for chunk, (blob, items) in zip(chunks, results):
            progress.update(len(chunk))
            for task, (sizes, error) in zip(chunk, items):
                if error:
                    problems.append(sources.Problem(task.relpath, error))
                counts[task.split][task.text] += len(sizes)
            writers[chunk[0].split].write_framed(blob, [n for sizes, _ in items for n in sizes])
        progress.close()
        problems.sort(key=lambda problem: problem.path)  # found in write order
        skipped = fail_or_skip(config.on_error, config.dataset_dir, plan, problems, skipped)
        staged = {split: writers[split].close() for split in split_order}
        return commit(config, staging, plan, staged, counts, skipped)
