"""The README's contract-testing examples, run as a user runs them: each ``# test_*.py`` block is a
test file of its own, run by a pytest of its own (finding the fixtures through the entry point), and
the outside-pytest snippet runs as a script. An example that stops working fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = README.read_text(encoding="utf-8").split("## Contract testing", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, re.S)
TEST_FILES = {m.group(1): block for block in BLOCKS if (m := re.match(r"# (test_\w+\.py)\n", block))}
SCRIPTS = [block for block in BLOCKS if not block.startswith("# test_")]


def test_the_section_has_the_three_examples_and_a_script() -> None:
    assert sorted(TEST_FILES) == ["test_copy_customers.py", "test_job_under_faults.py", "test_with_the_sdk.py"]
    assert len(SCRIPTS) == 1


def test_readme_test_files_pass(pytester: pytest.Pytester) -> None:
    for name, code in TEST_FILES.items():
        pytester.makepyfile(**{name.removesuffix(".py"): code})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=len(TEST_FILES))


def test_readme_script_runs(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPTS[0])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"[0-9a-f-]{36}\n", done.stdout)
