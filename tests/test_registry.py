"""Who owns what: the model registry, the import rules and the config.json formats.

The structural checks read the source (ast), import nothing, and each is also run on a small
made-up project that breaks its rule, so a check that can no longer fail is noticed.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from dataset import test_time
from networks import registry
from networks.resnet import resnet_model
from networks.slim import nets
from official.core import config as config_lib
from official.core import resume
from official.core import train_lib
from official.utils.flags import core as flags_core
from tests.conftest import REPO_ROOT

# The command-line programs: TensorFlow-heavy imports inside main() only (official/utils/cli.py).
CLI_MODULES = ("tf_convert_data.py", "networks/resnet/dicom_main.py",
               "networks/resnet/dicom_eval.py", "networks/resnet/dicom_predict.py",
               "networks/resnet/dicom_export.py",
               "networks/slim/train_image_classifier.py",
               "networks/slim/eval_image_classifier.py", "benchmarks/train_bench.py",
               "benchmarks/pipeline_bench.py", "benchmarks/stress_eval.py",
               "benchmarks/mirror_audit.py", "benchmarks/slice_groups.py",
               "benchmarks/holdout_report.py", "benchmarks/blind_review.py")
# Every other import inside a function, by (file, function), and why.
FUNCTION_IMPORTS = {
    ("dataset/features.py", "feature_spec"): "the converter never imports TensorFlow",
    ("dataset/features.py", "parse_example"): "the converter never imports TensorFlow",
    ("dataset/images.py", "load_image"): "pydicom (1 s to import) only once a DICOM file is met",
    ("dataset/sources.py", "read_dicom_header"): "pydicom only once a DICOM file is met",
    ("dataset/duplicates.py", "pixel_digest_task"): "pydicom only once a compressed DICOM "
                                                    "file is met",
    ("official/utils/logs/logger.py", "require_bigquery"): "an optional dependency",
    ("official/utils/cli.py", "report_left"): "the evaluators' Ctrl-C line: matplotlib "
                                              "(report.py) not at every program's start",
    ("scripts/collect_results.py", "_scalars"): "a program: TensorFlow after its flags, only "
                                                "for runs with event files",
    ("scripts/collect_results.py", "_params_and_step"): "a program: TensorFlow after its "
                                                        "flags, only for checkpoints",
    ("networks/slim/train_image_classifier.py", "configs_from_flags"): "a program: Keras "
                                                                       "after its flags",
    ("networks/slim/train_image_classifier.py", "run"): "a program: TensorFlow after its flags",
    ("benchmarks/convert_bench.py", "naive"): "each peer imports its framework in its own "
                                              "timed process; ours runs without TensorFlow",
    ("benchmarks/convert_bench.py", "ours"): "each peer imports in its own timed process",
    ("benchmarks/convert_bench.py", "child"): "each peer imports in its own timed process",
}
REGISTRY = "networks/registry.py"


def project_files(root: Path) -> list[Path]:
    """Every Python file of the project but the tests."""
    files = [root / "tf_convert_data.py"] if (root / "tf_convert_data.py").exists() else []
    for folder in ("dataset", "networks", "official", "scripts", "benchmarks"):
        files.extend(sorted((root / folder).rglob("*.py")))
    return files


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def function_imports(root: Path, cli_modules=CLI_MODULES,
                     allowed=FUNCTION_IMPORTS) -> list[str]:
    """Imports inside functions that neither rule nor FUNCTION_IMPORTS allows."""
    found = []
    for path in project_files(root):
        relative = path.relative_to(root).as_posix()

        def visit(node, outer):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    visit(child, outer or child.name)
                elif isinstance(child, ast.ClassDef):
                    visit(child, outer)
                elif isinstance(child, (ast.Import, ast.ImportFrom)) and outer:
                    cli_main = relative in cli_modules and outer == "main"
                    if not cli_main and (relative, outer) not in allowed:
                        found.append(f"{relative}:{child.lineno} in {outer}()")
                else:
                    visit(child, outer)

        visit(ast.parse(path.read_text()), None)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Project module -> the project modules it imports (at the top or in a function)."""
    paths = {module_name(root, path): path for path in project_files(root)}
    graph = {}
    for name, path in paths.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t if t in paths else node.module for t in targets]
            else:
                continue
            edges.update(t for t in targets if t in paths and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def official_imports_of_networks(graph: dict[str, set[str]]) -> list[str]:
    return [f"{module} imports {target}" for module, targets in sorted(graph.items())
            if module.startswith("official.") for target in sorted(targets)
            if target.startswith("networks.") and target != "networks.registry"]


def _mentions_architecture(node) -> bool:
    if isinstance(node, ast.Name):
        return node.id == "architecture"
    if isinstance(node, ast.Attribute):
        return node.attr == "architecture"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "architecture"
    if isinstance(node, ast.Call):  # config.get("architecture", ...)
        return any(isinstance(arg, ast.Constant) and arg.value == "architecture"
                   for arg in node.args)
    return isinstance(node, ast.Constant) and node.value == registry.RESNET


def architecture_dispatch(root: Path) -> list[str]:
    """Comparisons of an architecture (or with "resnet") outside networks/registry.py."""
    found = []
    for path in project_files(root):
        relative = path.relative_to(root).as_posix()
        if relative == REGISTRY:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(
                    _mentions_architecture(operand) for operand in [node.left, *node.comparators]):
                found.append(f"{relative}:{node.lineno}")
    return found


# --- the project ------------------------------------------------------------------------------

def test_no_imports_inside_functions_but_the_documented_ones():
    assert function_imports(REPO_ROOT) == []
    graph_files = {path.relative_to(REPO_ROOT).as_posix() for path in project_files(REPO_ROOT)}
    stale = [key for key in FUNCTION_IMPORTS if key[0] not in graph_files]
    assert stale == [], "FUNCTION_IMPORTS names files that are gone"
    unused = [key for key in FUNCTION_IMPORTS
              if key not in {tuple(k) for k in _allowed_in_use(REPO_ROOT)}]
    assert unused == [], "FUNCTION_IMPORTS names functions that no longer import"


def _allowed_in_use(root: Path) -> list[tuple[str, str]]:
    lines = function_imports(root, allowed={})
    return [(line.split(":")[0], line.split(" in ")[1][:-2]) for line in lines]


def test_no_import_cycles():
    graph = import_graph(REPO_ROOT)
    assert "networks.registry" in graph["official.core.train_lib"]  # the graph sees imports
    assert cycles(graph) == []


def test_official_reaches_networks_only_through_the_registry():
    graph = import_graph(REPO_ROOT)
    assert any(module.startswith("official.core.") for module in graph)
    assert official_imports_of_networks(graph) == []


def test_build_model_is_the_only_dispatch_on_architecture():
    assert architecture_dispatch(REPO_ROOT) == []
    assert "architecture ==" not in "".join(
        path.read_text() for path in project_files(REPO_ROOT)
        if path.relative_to(REPO_ROOT).as_posix() != REGISTRY)


def test_flag_choices_agree_with_their_owners():
    assert [int(size) for size in flags_core.RESNET_SIZE_CHOICES] == sorted(
        resnet_model.RESNET_SIZES)
    assert config_lib.MAX_TEST_TIME_VIEWS == len(test_time.TTA_VIEWS)  # the --tta bound


# --- each check fails on a project that breaks its rule -------------------------------------

def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checks_catch_what_they_are_for(tmp_path):
    broken = _write(tmp_path, {
        "networks/registry.py": "def build_model(spec):\n    return spec.architecture == 'x'\n",
        "networks/resnet/model.py": "import networks.slim.nets\n",
        "networks/slim/nets.py": "def f():\n    import networks.resnet.model\n",
        "official/core/loop.py": "from networks.resnet import model\n"
                                 "def f(config):\n    return config['architecture'] != 'resnet'\n",
        "networks/resnet/cli.py": "def main():\n    import os\n",
    })
    assert function_imports(broken, cli_modules=("networks/resnet/cli.py",)) == [
        "networks/slim/nets.py:2 in f()"]
    assert function_imports(broken, cli_modules=()) == [
        "networks/resnet/cli.py:2 in main()", "networks/slim/nets.py:2 in f()"]
    graph = import_graph(broken)
    assert cycles(graph) == [["networks.resnet.model", "networks.slim.nets",
                              "networks.resnet.model"]]
    assert official_imports_of_networks(graph) == [
        "official.core.loop imports networks.resnet.model"]
    assert architecture_dispatch(broken) == ["official/core/loop.py:3"]


# --- ModelSpec and config.json --------------------------------------------------------------

def test_an_old_config_json_loads_into_the_right_spec(tmp_path):
    """Runs from before "model" existed: top-level keys, no "architecture" = a ResNet."""
    old = {"resnet_size": 18, "version": 1, "num_classes": 3, "class_names": ["A", "B", "C"],
           "image_size": 32, "channels": 1, "small_input": True, "data_format": "channels_last",
           "batch_size": 8, "dtype": "fp32"}
    config_lib.write_config(str(tmp_path / "resnet"), old)
    spec = registry.spec_from_config(config_lib.read_config(str(tmp_path / "resnet")))
    assert spec == registry.ModelSpec(architecture="resnet", num_classes=3, image_size=32,
                                      channels=1, resnet_size=18, version=1, small_input=True,
                                      data_format="channels_last")
    assert spec.name == "resnet18_v1"
    # An old Slim run recorded the ResNet defaults too; they are not the network's.
    old_slim = {**old, "resnet_size": 50, "version": 2, "architecture": "inception_v3",
                "image_size": 75}
    config_lib.write_config(str(tmp_path / "slim"), old_slim)
    spec = registry.spec_from_config(config_lib.read_config(str(tmp_path / "slim")))
    assert spec == registry.ModelSpec(architecture="inception_v3", num_classes=3,
                                      image_size=75, channels=1)


def test_a_slim_spec_carries_no_resnet_fields():
    spec = registry.ModelSpec(architecture="inception_v4", num_classes=2, image_size=75)
    saved = spec.to_dict()
    assert saved == {"architecture": "inception_v4", "num_classes": 2, "image_size": 75,
                     "channels": 1}
    assert registry.spec_from_config({"model": saved}) == spec
    with pytest.raises(ValueError, match="ResNet's fields"):
        registry.ModelSpec(architecture="inception_v4", num_classes=2, image_size=75,
                           resnet_size=50, version=2)
    with pytest.raises(ValueError, match="resnet_size=19"):
        registry.ModelSpec(architecture="resnet", num_classes=2, image_size=32, resnet_size=19,
                           version=2, small_input=False, data_format="channels_last")
    with pytest.raises(ValueError, match="architecture='alexnet'"):
        registry.ModelSpec(architecture="alexnet", num_classes=2, image_size=224)


def test_config_json_records_the_spec_under_model_and_at_the_top():
    spec = registry.ModelSpec(architecture="densenet_121", num_classes=2, image_size=32)
    resolved = config_lib.resolved_config(config_lib.TrainConfig(model_dir="m"), ("A", "B"),
                                         spec, {"slim": {"model_name": "densenet_121"}})
    assert resolved["model"] == spec.to_dict()
    assert "resnet_size" not in resolved and "version" not in resolved
    assert resolved["architecture"] == "densenet_121" and resolved["class_names"] == ["A", "B"]
    assert registry.spec_from_config(json.loads(json.dumps(resolved))) == spec
    # The data as a full path (evaluation tells the training data from other data by it,
    # from any working directory); a URL as given.
    for given, recorded in (("records", os.path.abspath("records")),
                            ("gs://bucket/records", "gs://bucket/records"), (None, None)):
        assert config_lib.resolved_config(config_lib.TrainConfig(model_dir="m", data_dir=given),
                                          ("A", "B"), spec, {})["data_dir"] == recorded


def test_a_resume_names_what_it_changes_and_not_a_data_dir_made_absolute():
    """config.json's data_dir was recorded as given (relative) before it became a full path:
    the first resume after that is not a change of data."""
    saved = {"data_dir": "records", "label_smoothing": 0.0, "train_epochs": 8}
    resolved = {"data_dir": os.path.abspath("records"), "label_smoothing": 0.1,
                "train_epochs": 8}
    assert resume.resumed_changes(saved, resolved) == {"label_smoothing": [0.0, 0.1]}
    assert resume.resumed_changes(saved, {**resolved, "data_dir": "/other"})[
        "data_dir"] == ["records", "/other"]


@pytest.mark.parametrize("spec", [
    registry.ModelSpec(architecture="resnet", num_classes=3, image_size=32, resnet_size=18,
                       version=2, small_input=True, data_format="channels_last"),
    registry.ModelSpec(architecture=next(iter(nets.NETWORKS)), num_classes=3, image_size=75),
], ids=lambda spec: spec.name)
def test_build_model_builds_each_family(spec):
    model = registry.build_model(spec, batch_norm_momentum=0.9)
    assert model.output_shape == (None, 3)
    assert model.input_shape == (None, spec.image_size, spec.image_size, spec.channels)
