"""manifest.json's contents for a finished conversion, and the table the converter prints
from it (the local converter and the Beam one build the same manifest)."""

from __future__ import annotations

from official.utils import cli


def build_manifest(*, dataset_name: str, flags: dict, classes: list[str], variants: dict,
                   agreement: dict, staged: dict, counts: dict, skipped: list[dict],
                   warnings: list[str] | tuple = ()) -> dict:
    """The manifest: per split (in ``staged``'s order) the counts per class and the shards.

    Args:
      flags: the conversion's settings (ConvertConfig.manifest_flags()).
      classes, variants, agreement: the validation pass's (conversion_plan.Plan's names,
        variants, agreement).
      staged: split -> [shards.StagedShard] in shard order.
      counts: split -> {class name: examples}.
      warnings: the validation pass's (conversion_plan.Plan's), before those found here.
    """
    warnings = [*warnings, *(f"class {name!r} has no examples in {split}"
                             for split in staged for name in classes if not counts[split][name])]
    return {
        "format_version": 1,
        "dataset_name": dataset_name,
        "classes": classes,
        "class_variants": variants,
        "splits": {split: {"num_examples": sum(counts[split].values()),
                           "class_counts": {name: counts[split][name] for name in classes},
                           "files": [shard.manifest_entry() for shard in staged[split]]}
                   for split in staged},
        "label_tag_agreement": agreement,
        "skipped": skipped,
        "warnings": warnings,
        "flags": flags,
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
    lines.append(f"skipped {cli.count(len(manifest['skipped']), 'file')}")
    lines.extend(f"  skipped {s['path']}: {s['reason']}" for s in manifest["skipped"])
    lines.extend(f"warning: {w}" for w in manifest["warnings"])
    return "\n".join(lines)
