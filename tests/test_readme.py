"""The README's Quick start is exactly two commands, and CI runs the same test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quick_start_has_two_commands_main_job_then_tests():
    commands = quick_start_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert commands[0].endswith("fashionbert demo")
    assert commands[1].endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    test_command = quick_start_commands()[1].rsplit("&& ", 1)[1].replace(".venv/bin/", "")
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(test_command)}\s*$", ci, re.M), test_command
