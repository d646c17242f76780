"""A plain (non-editable) install holds every module, and runs from the repository root as the GPU check does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _source_modules() -> set[str]:
    """Every module file of the project, as its path inside the installed ``rap_deploy`` package."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {pkg: ROOT / setup["package-dir"].get(pkg, pkg.replace(".", "/")) for pkg in
               ("rap_deploy", "rap_deploy.train", "rap_deploy.export", "rap_deploy.engines")}
    found = set()
    for pkg, folder in folders.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder)
            if pkg == "rap_deploy" and rel.parts[0] in ("train", "export", "engines"):
                continue
            found.add("/".join([*pkg.split("."), *rel.parts]))
    return found


def test_a_plain_install_holds_every_module_and_runs_from_the_checkout(tmp_path):
    import shutil

    source, target = tmp_path / "src", tmp_path / "site"  # a copy: setuptools would reuse the checkout's build/
    for name in ("rap_deploy", "train", "export", "engines"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                    "--no-cache-dir", "--target", str(target), str(source)], check=True, timeout=600,
                   capture_output=True)
    installed = {p.relative_to(target).as_posix() for p in (target / "rap_deploy").rglob("*.py")}
    missing = _source_modules() - installed
    assert not missing, f"pyproject.toml's packages leave out {sorted(missing)[:5]}"
    assert (target / "rap_deploy" / "engines" / "serving" / "page.html").is_file()
    # the device command: python3 -P -m ... in the checkout's root (-P: the source tree must not shadow the install)
    run = subprocess.run([sys.executable, "-P", "-c", "import rap_deploy.engines.gpu_check as g, "
                          "rap_deploy.library.search; print(g.__file__)"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)}, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().startswith(str(target)), run.stderr[-2000:]


def test_the_suite_removes_a_passing_tests_temporary_folder_and_keeps_a_failing_ones(tmp_path):
    """The project's pytest settings keep /tmp small: the full suite writes about 3.3 GB of temporary files."""
    (tmp_path / "test_probe.py").write_text(
        "def test_passes(tmp_path):\n    (tmp_path / 'big.bin').write_bytes(b'x' * 1024)\n\n"
        "def test_fails(tmp_path):\n    (tmp_path / 'kept.bin').write_bytes(b'x')\n    assert False\n"
    )
    basetemp = tmp_path / "basetemp"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), "-n", "0",
         "-p", "no:cacheprovider", "-q", f"--basetemp={basetemp}", str(tmp_path / "test_probe.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    left = sorted(p.relative_to(basetemp).as_posix() for p in basetemp.rglob("*.bin"))
    assert left == ["test_fails0/kept.bin"], left
