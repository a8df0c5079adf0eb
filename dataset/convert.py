"""Converts a dataset folder into verified, sharded TFRecords (library of tf_convert_data.py).

Passes:
1. Validation (nothing written): find inputs and labels (``dataset.sources``),
   read DICOM headers (patient for grouping, BodyPartExamined for labels), assign
   splits (``dataset.splits``) and collect *every* problem. With
   ``on_error="fail"`` any problem raises ConversionError before anything is
   written; with ``"skip"`` the problem files are left out and listed in the
   manifest. Dataset-wide problems (sizes that don't fit, a class too small,
   an unwritable output folder) always fail.
2. Encode: worker processes read and validate each image (``dataset.images``)
   and serialise and frame it (``dataset.features.serialize_example``,
   ``dataset.shards.frame_record``; no TensorFlow anywhere in the converter); the
   main process appends the ordered records to staged shards (``dataset.shards``).
   Decode problems found here follow the same fail/skip rule; on failure the
   staging folder is removed.
3. Commit: shards renamed into place, ``labels.txt``, then ``manifest.json``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass

from dataset import images, shards, sources, splits
from dataset.features import serialize_example
from dataset.workers import WorkerPool

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
        if not self.output_name or "/" in self.output_name:
            raise ValueError(f"--output_name must be a plain file-name prefix; "
                             f"got {self.output_name!r}")

    def manifest_flags(self) -> dict:
        flags = dataclasses.asdict(self)
        flags.pop("show_progress")
        if self.dicom is None:  # record the defaults in force, not "None"
            from dataset.dicom_options import DicomOptions

            flags["dicom"] = dataclasses.asdict(DicomOptions())
        return flags


class ConversionError(Exception):
    """The input cannot be converted; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__(f"{len(problems)} problem(s):\n" + "\n".join(problems))
        self.problems = problems


# --- worker side (no TensorFlow) ----------------------------------------------

_WORKER = {}


def _init_worker(dicom_options, hash_key: bytes) -> None:
    _WORKER["dicom"] = dicom_options
    _WORKER["hash_key"] = hash_key


def _dicom_options():
    if _WORKER["dicom"] is None:  # None in the config means the defaults
        from dataset.dicom_options import DicomOptions

        _WORKER["dicom"] = DicomOptions()
    return _WORKER["dicom"]


def _header_task(path: str):
    try:
        return sources.read_dicom_header(path, _dicom_options(), _WORKER["hash_key"]), None
    except ValueError as error:
        return None, _without_path(str(error).splitlines()[0], path)


def _encode_task(task):
    path, relpath, kind, label, text = task
    try:
        encoded = images.load_image(path, kind, dicom_options=_dicom_options()
                                    if kind == "dicom" else None,
                                    hash_key=_WORKER["hash_key"])
    except images.ImageError as error:
        return None, _without_path(str(error), path)
    multi = len(encoded) > 1
    # Framed here, in parallel: the main process only appends bytes to the shard.
    return [shards.frame_record(serialize_example(
        encoded=image.data, image_format=image.image_format, label=label, text=text,
        height=image.height, width=image.width, channels=image.channels,
        filename=f"{relpath}#frame={image.frame}" if multi else relpath))
        for image in encoded], None


def _encode_chunk(tasks):
    """Encodes consecutive tasks of one split; returns their framed records as one blob
    plus, per task, (record sizes, error). One result per chunk keeps the main process's
    per-image work (unpickling, writing, hashing) out of the hot loop: it was the
    bottleneck when every image came back on its own."""
    blobs, items = [], []
    for task in tasks:
        records, error = _encode_task(task)
        records = records or []
        blobs.extend(records)
        items.append(([len(r) for r in records], error))
    return b"".join(blobs), items


def _without_path(message: str, path: str) -> str:
    # Problems are reported as '<relative path>: <reason>'; drop the absolute path
    # that DICOM messages start with.
    return message[len(path) + 2:] if message.startswith(path + ": ") else message


# --- validation pass ----------------------------------------------------------


def _output_problems(config: ConvertConfig, layout: str) -> list[sources.Problem]:
    output_dir = os.path.abspath(config.output_dir)
    probe = output_dir
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    problems = []
    if not os.path.isdir(probe):
        problems.append(f"cannot create it: {probe} is not a folder")
    elif not os.access(probe, os.W_OK | os.X_OK):
        problems.append(f"{probe} is not writable")
    dataset_dir = os.path.abspath(config.dataset_dir)
    if layout != "images_labels" and (output_dir + os.sep).startswith(dataset_dir + os.sep):
        problems.append("is inside --dataset_dir, where it would be read as input")
    return [sources.Problem("--output_dir", p, fatal=True) for p in problems]


def _plan(config, discovery, headers, problems):
    """Labels, groups and splits for every usable file; appends problems found.

    Returns (class names, class variants, [(split, order key, task)], agreement).
    """
    files = [f for f in discovery.files if f.relpath not in headers.errors]
    raw_labels = [f.label for f in files if f.label is not None]
    if headers.values:
        from dataset.body_parts import canonical_body_part, normalize_body_part
    if config.label_source == "tag" and not raw_labels:  # classes: the defined terms seen
        raw_labels = [canonical_body_part(h[0]) or h[0] for h in headers.values.values() if h[0]]
    names, canonical, variants = sources.canonical_classes(raw_labels)
    labelled, agreement = [], collections.defaultdict(collections.Counter)
    for item in files:
        label = canonical.get(item.label.casefold()) if item.label is not None else None
        body_part, patient, modality = headers.values.get(item.relpath, (None, None, None))
        tag_class = (normalize_body_part(body_part, names, modality=modality)
                     if body_part else None)
        if label is not None and body_part:
            agreement[label][tag_class or f"unmatched: {body_part}"] += 1
        if config.label_source == "tag" and item.kind == "dicom":
            if tag_class is None:
                reason = (f"BodyPartExamined {body_part!r} matches no class" if body_part
                          else "no BodyPartExamined tag (--label_source=tag)")
                problems.append(sources.Problem(item.relpath, reason))
                continue
            label = tag_class
        labelled.append((item, label, patient))
    groups_csv = sources.read_groups_csv(config.groups_csv) if config.groups_csv else {}
    total = len(labelled)
    try:
        fractions = splits.split_fractions(config.need_split, config.validation_size,
                                           config.test_size, total)
    except ValueError as error:
        problems.append(sources.Problem("--need_split", str(error), fatal=True))
        fractions = {}
    plan, groups_by_class = [], collections.defaultdict(set)
    for item, label, patient in labelled:
        stem = os.path.splitext(os.path.basename(item.relpath))[0]
        csv_group = groups_csv.get(item.relpath) or groups_csv.get(stem)
        group = (f"csv:{csv_group}" if csv_group
                 else f"patient:{patient}" if patient else f"stem:{stem}")
        groups_by_class[label].add(group)
        if config.need_split == "predefined":
            split = item.split
        elif config.need_split == "None":
            split = config.output_name
        else:
            split = splits.assign_split(config.seed, group, fractions)
        task = (item.path, item.relpath, item.kind, names.index(label), label)
        plan.append((split, splits.order_key(config.seed, item.relpath), task))
    if fractions:
        problems.extend(sources.Problem("--need_split", message, fatal=True) for message in
                        splits.small_classes(groups_by_class, len(fractions) + 1))
    agreement = {label: dict(sorted(row.items())) for label, row in sorted(agreement.items())}
    return names, variants, plan, agreement


@dataclass
class _Headers:
    values: dict  # relpath -> (body_part, patient_key, modality)
    errors: set


def _read_headers(workers, discovery, problems) -> _Headers:
    dicoms = [f for f in discovery.files if f.kind == "dicom"]
    headers = _Headers({}, set())
    results = workers.imap(_header_task, [f.path for f in dicoms], chunksize=8)
    for item, (value, error) in zip(dicoms, results):
        if error:
            problems.append(sources.Problem(item.relpath, error))
            headers.errors.add(item.relpath)
        else:
            headers.values[item.relpath] = value
    return headers


def _decode_problems(workers, plan) -> list[sources.Problem]:
    tasks = [task for _, _, task in plan]
    return [sources.Problem(task[1], error) for task, (_, error)
            in zip(tasks, workers.imap(_encode_task, tasks, chunksize=8)) if error]


def _fail_or_skip(config, problems) -> list[dict]:
    fatal = [p for p in problems if p.fatal]
    if fatal or (problems and config.on_error == "fail"):
        raise ConversionError([p.line() for p in problems])
    return [{"path": p.path, "reason": p.reason} for p in problems]


# --- the conversion -----------------------------------------------------------


def convert_dataset(config: ConvertConfig) -> dict:
    """Converts ``config.dataset_dir`` into ``config.output_dir``; returns the manifest.

    Raises:
      ConversionError: one or more problems (nothing written, or with
        on_error="skip" only dataset-wide problems).
      ValueError: invalid configuration.
    """
    hash_key = os.environ.get(config.hash_key_env, "").encode() or DEFAULT_HASH_KEY
    # Workers start first so that their start-up overlaps the folder walk.
    workers = WorkerPool(config.num_workers or os.cpu_count() or 1, _init_worker,
                         (config.dicom, hash_key))
    try:
        discovery = sources.discover(config.dataset_dir, config.layout,
                                     need_labels=config.label_source == "labels")
        if config.need_split == "predefined" and discovery.layout != "predefined":
            raise ValueError(f"--need_split=predefined needs {config.dataset_dir} in the layout "
                             "train/<Class>/..., val|validation/<Class>/..., test/<Class>/...")
        if discovery.layout == "predefined" and config.need_split != "predefined":
            raise ValueError(f"{config.dataset_dir} is already split into train/val/test "
                             "folders: use --need_split=predefined")
        problems = list(discovery.problems) + _output_problems(config, discovery.layout)
        headers = _read_headers(workers, discovery, problems)
        names, variants, plan, agreement = _plan(config, discovery, headers, problems)
        if any(p.fatal for p in problems) or (problems and config.on_error == "fail"):
            # Failing anyway: decode the rest too (writing nothing), so that one run
            # lists every problem rather than one kind at a time.
            problems += _decode_problems(workers, plan)
        skipped = _fail_or_skip(config, problems)
        skipped_paths = {s["path"] for s in skipped}
        plan = sorted((p for p in plan if p[2][1] not in skipped_paths),
                      key=lambda p: (_split_rank(p[0]), p[1]))
        return _encode_and_commit(config, workers, names, variants, plan, agreement, skipped)
    finally:
        workers.close()


def _split_rank(split: str) -> int:
    return splits.SPLIT_NAMES.index(split) if split in splits.SPLIT_NAMES else -1


def _encode_and_commit(config, workers, names, variants, plan, agreement, skipped) -> dict:
    from tqdm import tqdm

    output_dir = os.path.abspath(config.output_dir)
    created = not os.path.exists(output_dir)
    shards.clean_stale_staging(output_dir)
    staging = shards.make_staging_dir(output_dir)
    committed = False
    try:
        split_order = list(dict.fromkeys(split for split, _, _ in plan))
        writers = {split: shards.SplitWriter(staging, split, int(config.shard_size_mb * 2**20))
                   for split in split_order}
        counts = {split: collections.Counter() for split in split_order}
        problems = []
        size = 8 if any(task[2] == "dicom" for _, _, task in plan) else 64
        chunks = []  # (split, tasks): up to `size` consecutive tasks of one split
        for split, _, task in plan:
            if not chunks or chunks[-1][0] != split or len(chunks[-1][1]) == size:
                chunks.append((split, []))
            chunks[-1][1].append(task)
        results = workers.imap(_encode_chunk, [tasks for _, tasks in chunks], chunksize=1)
        progress = tqdm(total=len(plan), unit="img", desc="converting",
                        disable=not config.show_progress, mininterval=0.5)
        for (split, tasks), (blob, items) in zip(chunks, results):
            progress.update(len(tasks))
            for task, (sizes, error) in zip(tasks, items):
                if error:
                    problems.append(sources.Problem(task[1], error))
                counts[split][task[4]] += len(sizes)
            writers[split].write_framed(blob, [n for sizes, _ in items for n in sizes])
        progress.close()
        skipped = skipped + _fail_or_skip(config, problems)
        staged = {split: writers[split].close() for split in split_order}
        manifest = _manifest(config, names, variants, staged, counts, agreement, skipped)
        shards.commit(output_dir, staging, [s for split in split_order for s in staged[split]],
                      list(splits.SPLIT_NAMES) + [config.output_name],
                      "".join(f"{index}:{name}\n" for index, name in enumerate(names)),
                      json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        committed = True
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not committed and not os.listdir(output_dir):
            os.rmdir(output_dir)  # a failed run leaves no trace, not even the folder


def _manifest(config, names, variants, staged, counts, agreement, skipped) -> dict:
    warnings = [f"class {name!r} has no examples in {split}"
                for split in staged for name in names if not counts[split][name]]
    return {
        "format_version": 1,
        "dataset_name": config.dataset_name,
        "classes": names,
        "class_variants": variants,
        "splits": {split: {"num_examples": sum(counts[split].values()),
                           "class_counts": {name: counts[split][name] for name in names},
                           "files": [shard.manifest_entry() for shard in staged[split]]}
                   for split in staged},
        "label_tag_agreement": agreement,
        "skipped": skipped,
        "warnings": warnings,
        "flags": config.manifest_flags(),
    }


def format_summary(manifest: dict) -> str:
    """The final table: examples per split x class, then skipped files and warnings."""
    split_names = list(manifest["splits"])
    width = max([len(n) for n in manifest["classes"]] + [len("total"), 5])
    columns = [max(len(s), 7) for s in split_names]
    lines = ["class".ljust(width) + "".join(f"  {s:>{c}}" for s, c in zip(split_names, columns))]
    for name in manifest["classes"] + ["total"]:
        cells = [manifest["splits"][s]["class_counts"].get(name, 0) if name != "total"
                 else manifest["splits"][s]["num_examples"] for s in split_names]
        lines.append(name.ljust(width) + "".join(f"  {v:>{c}}" for v, c in zip(cells, columns)))
    for name, spellings in manifest["class_variants"].items():
        lines.append(f"class {name!r} also spelled: {', '.join(spellings)}")
    if manifest["label_tag_agreement"]:
        lines.append("label file x BodyPartExamined tag:")
        for label, row in manifest["label_tag_agreement"].items():
            lines.append(f"  {label}: " + ", ".join(f"{tag}={n}" for tag, n in row.items()))
    lines.append(f"skipped {len(manifest['skipped'])} file(s)")
    lines.extend(f"  skipped {s['path']}: {s['reason']}" for s in manifest["skipped"])
    lines.extend(f"warning: {w}" for w in manifest["warnings"])
    return "\n".join(lines)
