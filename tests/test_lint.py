"""The lint and type gates run as tests, so the README's one test command covers them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_clean() -> None:
    result = run("ruff", "check", "proxy", "protocols", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_clean() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_sans_io_packages_import_no_io() -> None:
    """protocols/ and proxy/crypto/ never import asyncio, sockets, aiohttp, redis or botocore."""
    forbidden = ("asyncio", "socket", "aiohttp", "redis", "aiobotocore", "botocore", "ssl")
    offenders = []
    for base in (ROOT / "protocols", ROOT / "proxy" / "crypto"):
        for path in base.rglob("*.py"):
            for line in path.read_text().splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] in ("import", "from"):
                    top = words[1].split(".")[0]
                    if top in forbidden:
                        offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not offenders, offenders


def test_readme_opens_with_the_two_setup_commands() -> None:
    """The README's first block: install-and-demo, then the test command `.ci/run` executes."""
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert block == [
        "pip install -e '.[demo]' && veil demo",
        "python3 -m pip install -e '.[test,dev,demo]' && python3 -m pytest -q",
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q --disable-pip-version-check -e '.[test,dev,demo]'" in ci
    assert ci.rstrip().splitlines()[-1] == "exec python3 -m pytest -q"
