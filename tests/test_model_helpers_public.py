"""The helpers other modules call are public, documented functions: no module (tests included) imports a private name
from clip_loader or asa, and no source module imports one from train/loop.py or the report modules (engines/reports.py,
bench_format.py, report_format.py; training_run.py and bench_table.py once did), so a change to a module's private
helpers cannot silently break a caller elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = {"rap_deploy.model.clip_loader": ("register_packaged_configs", "quiet_loading_logs"),
          "rap_deploy.model.asa": ("off_integers",)}
#: Modules whose private names only tests (their own unit tests) may import; the source tree calls public names.
SOURCE_SHARED = {"rap_deploy.train.loop": ("autocast_dtype", "evaluate_model", "plain_data", "metrics_record",
                                           "rng_state", "restore_rng_state", "write_metrics"),
                 "rap_deploy.engines.reports": ("print_verify", "skipped_line", "verify_markdown", "plot_verify"),
                 "rap_deploy.engines.bench_format": ("adapter_line", "bench_rows", "load_line", "search_lines",
                                                     "bench_markdown", "plot_bench"),
                 "rap_deploy.engines.report_format": ("format_value", "ms_cell", "signed_cell", "md_table",
                                                      "natural_width", "wide_console", "pyplot", "save_png")}
SOURCE_TOPS = ("rap_deploy", "train", "engines", "export")


def _private_imports_from(modules: set[str], tops: tuple[str, ...] = (*SOURCE_TOPS, "tests")) -> list[str]:
    """``file:line module.name`` for each ``from MODULE import _name`` of one of ``modules`` under ``tops``."""
    found = []
    for top in tops:
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module in modules:
                    found += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
                              for alias in node.names if alias.name.startswith("_")]
    return found


def test_no_module_imports_a_private_helper_of_clip_loader_or_asa():
    assert _private_imports_from(set(SHARED)) == []


def test_no_source_module_imports_a_private_helper_of_the_training_loop_or_the_reports():
    assert _private_imports_from(set(SOURCE_SHARED), SOURCE_TOPS) == []


def test_the_renamed_helpers_are_imported_under_no_private_name_anywhere():
    """Tests may import their module's private units, but not the old names of the helpers made public."""
    old_names = {"rap_deploy.train.loop": ("_amp_dtype", "_evaluate", "_plain", "_record", "_rng_state",
                                           "_set_rng_state", "_write_metrics"),
                 "rap_deploy.engines.reports": ("_adapter_line", "_fmt", "_natural_width", "_wide_console")}
    old = {f"{module}.{name}" for module, names in old_names.items() for name in names}
    assert [hit for hit in _private_imports_from(set(old_names)) if hit.split(" ")[1] in old] == []


def test_the_shared_helpers_are_public_and_documented():
    import importlib

    for module, names in {**SHARED, **SOURCE_SHARED}.items():
        for name in names:
            func = getattr(importlib.import_module(module), name)
            assert (func.__doc__ or "").strip(), f"{module}.{name} has no docstring"
