"""scripts/unasync.py: the sync client is generated from the asyncio source, and --check catches
a generated module that was edited by hand or left behind its source."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync", ROOT / "scripts" / "unasync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


unasync = load_script()


def copy_of_the_project(tmp_path: Path) -> Path:
    """The generated code's sources and outputs, at their paths under a root of their own."""
    for directory in unasync.SOURCES:
        source = ROOT / directory
        shutil.copytree(source.parent, tmp_path / directory.rsplit("/", 1)[0], dirs_exist_ok=True)
    return tmp_path


def test_the_generated_sync_code_is_current() -> None:
    assert unasync.main(["--check"]) == 0


def test_check_fails_on_a_generated_module_edited_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_of_the_project(tmp_path)
    generated = root / "src/jobstore/client/_sync/driver.py"
    generated.write_text(generated.read_text().replace('"complete"', '"completed"', 1))
    assert unasync.main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "src/jobstore/client/_sync/driver.py" in err and "run python scripts/unasync.py" in err


def test_check_fails_on_a_source_changed_without_regenerating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_of_the_project(tmp_path)
    source = root / "src/jobstore/client/_async/watch.py"
    source.write_text(source.read_text().replace("idle: float,", "idle: float = 1.0,", 1))
    assert unasync.main(["--check", "--root", str(root)]) == 1
    assert "src/jobstore/client/_sync/watch.py" in capsys.readouterr().err
    assert unasync.main(["--root", str(root)]) == 0  # regenerated
    assert unasync.main(["--check", "--root", str(root)]) == 0


def test_async_words_and_directives_become_their_sync_twins() -> None:
    source = (
        "from ._async.x import y\n"
        "class W:\n"
        "    async def __aenter__(self) -> AsyncGenerator[Record, None]:\n"
        "        # unasync: self.start()\n"
        "        async for r in await self.rows():\n"
        "            return await anext(r)\n"
        "    # unasync: begin async-only\n"
        "    def __await__(self) -> None: ...\n"
        "    # unasync: end async-only\n"
        "    async def anextra(self) -> None: ...\n"
    )
    assert unasync.unasync(source) == (
        "from ._sync.x import y\n"
        "class W:\n"
        "    def __enter__(self) -> Generator[Record, None, None]:\n"
        "        self.start()\n"
        "        for r in self.rows():\n"
        "            return next(r)\n"
        "    def anextra(self) -> None: ...\n"
    )
