"""A conversion's plan and what its problems mean (library of dataset.convert and
dataset.beam_convert): fail, or skip the files and go on, and in which order the rest is
written. No I/O: the problems and the plan come in, the manifest's ``skipped`` entries or a
ConversionError go out.

--on_error=fail stops at any problem. --on_error=skip leaves out the files with a problem,
but never a dataset-wide one (``Problem.fatal``: sizes that don't fit, a class too small, an
unwritable output folder), and never so many that no file, or a class in fewer groups than
splits, is left: committing that would replace an earlier output with an unusable one.
"""

from __future__ import annotations

import dataclasses

from dataset import sources, splits
from dataset.tasks import FileTask


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything decided before the encode pass (the validation pass's result; only a
    compressed DICOM that may be a copy in another transfer syntax, or by another JPEG
    baseline encoder, is decoded in it)."""

    names: list[str]  # class names; a record's label is an index into this list
    variants: dict[str, list[str]]  # class name -> spellings seen, where several
    tasks: list[FileTask]  # every usable file, in discovery order
    agreement: dict  # label -> {tag class: count}
    problems: list[sources.Problem]  # found so far, in the order they are reported
    groups: dict[str, str]  # relative path -> group (the files of a group share a split)
    num_splits: int  # splits drawn by group (tt_split 2, tvt_split 3), else 0
    warnings: list[str] = dataclasses.field(default_factory=list)  # for the manifest

    def failing(self, on_error: str) -> bool:
        """True when the problems found already make the conversion fail."""
        return any(p.fatal for p in self.problems) or bool(self.problems and on_error == "fail")


class ConversionError(Exception):
    """The input cannot be converted; ``problems`` holds one line per problem that stops it;
    ``skippable``: rerunning with on_error="skip" would convert the rest; ``would_skip``
    (on_error="skip"): the files' problems that were not what stopped it, one line each."""

    def __init__(self, problems: list[str], skippable: bool = False,
                 would_skip: list[str] | tuple = ()):
        super().__init__(f"{len(problems)} problem(s):\n" + "\n".join(problems))
        self.problems = problems
        self.skippable = skippable
        self.would_skip = list(would_skip)


def fail_or_skip(on_error: str, dataset_dir: str, plan: Plan, problems: list[sources.Problem],
                 skipped: list[dict] | tuple = ()) -> list[dict]:
    """The manifest's ``skipped`` entries: ``skipped`` (found earlier), then one per problem.

    Args:
      on_error: "fail" or "skip" (--on_error); dataset_dir: named when nothing is left.

    Raises:
      ConversionError: a fatal problem, any problem with on_error="fail", or skipped
        files that leave too few to convert (``too_few_left``).
    """
    fatal = [p for p in problems if p.fatal]
    skipped = [*skipped, *({"path": p.path, "reason": p.reason} for p in problems)]
    left_problems = too_few_left(dataset_dir, plan, skipped)
    if problems and on_error == "fail":
        raise ConversionError([p.line() for p in problems],
                              skippable=not fatal and not left_problems)
    # A skip run that fails says which problems stopped it and which it would have skipped.
    would_skip = [f"{s['path']}: {s['reason']}" for s in skipped
                  if s["path"] not in {p.path for p in fatal}]
    if fatal:
        raise ConversionError([p.line() for p in fatal], would_skip=would_skip)
    if left_problems:  # each says what failed: listing every skipped file would bury it
        raise ConversionError(left_problems)
    return skipped


def too_few_left(dataset_dir: str, plan: Plan, skipped: list[dict]) -> list[str]:
    """Problem lines for skipped files that leave no file to convert, or a class in
    fewer groups than splits. The validation pass fails such input when nothing is
    skipped, and committing it would replace an earlier output with an empty or
    unusable one."""
    if not skipped:
        return []
    skipped_paths = {s["path"] for s in skipped}
    left = [task for task in plan.tasks if task.relpath not in skipped_paths]
    if not left:
        # Counted and quoted among the images: a stray notes.txt is skipped too, but it is
        # not why nothing is left.
        tasks = {task.relpath for task in plan.tasks}
        failed = [s for s in skipped if s["path"] in tasks] or skipped
        first = failed[0]
        return [f"{dataset_dir}: all {len(failed)} input file(s) failed, none left "
                f"to convert (first: {first['path']}: {first['reason']})"]
    files_by_class = {task.text: {} for task in plan.tasks}  # the classes assign() checked
    for task in left:
        files_by_class[task.text][task.relpath] = plan.groups[task.relpath]
    if not plan.num_splits:  # one output: a class must keep a file (a class no image taught)
        reasons = {s["path"]: s["reason"] for s in skipped}
        lines = []
        for name in (name for name, files in files_by_class.items() if not files):
            failed = [task.relpath for task in plan.tasks if task.text == name]
            lines.append(f"--on_error=skip: after skipping, class {name!r} has no file left "
                         f"(all {len(failed)} failed; first: {failed[0]}: "
                         f"{reasons[failed[0]]})")
        return lines
    return [f"--need_split: after skipping, {message}"
            for message in splits.small_classes(files_by_class, plan.num_splits)]


def write_order(tasks: list[FileTask], skipped: list[dict]) -> list[FileTask]:
    """The tasks still to convert, in output order: by split, then by their order key."""
    skipped_paths = {s["path"] for s in skipped}
    return sorted((t for t in tasks if t.relpath not in skipped_paths),
                  key=lambda t: (_split_rank(t.split), t.order))


def _split_rank(split: str) -> int:
    return splits.SPLIT_NAMES.index(split) if split in splits.SPLIT_NAMES else -1
