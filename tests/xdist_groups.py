"""``@pytest.mark.xdist_group(name)`` honoured under ``pytest -n`` (pytest 9 + pytest-xdist 3.8): every test of a
group runs on one worker.

Why groups: some tests share a per-process cost that is paid once by each worker that runs one of them. The
``forkserver`` group is the multi-rank tests (tests/forked_ranks.py: about 13 s of CPU to preload the forkserver
in each worker that starts one); the ``gradio`` group is the app's tests (importing gradio is about 6 s). On 2
cores, paying them once instead of twice shortens ``make test`` by about that much.

Why not ``--dist loadgroup``: pytest-xdist 3.8 appends ``@group`` to ``item._nodeid``, which pytest 9 no longer
reads (it keeps the id in ``item._id``), so the controller never sees the groups and ``loadgroup`` behaves like
``load``. Here the grouping goes through public hooks instead: each worker, when it has collected, writes the
``{nodeid: group}`` of its marked tests into a folder the controller made (:data:`GROUPS_ENV`), and the
controller's scheduler (:class:`GroupScheduling`: xdist's load-scope scheduling with a test's scope its group,
or the test itself when unmarked) reads it. Collection is finished on every worker before the scheduler asks
for a scope, so the file is complete when it is read.

Used as a plugin (tests/conftest.py: ``pytest_plugins``); ``pytest -p tests.xdist_groups`` elsewhere.
The test modules that belong to the ``gradio`` group import gradio inside their fixtures and tests, not at
module level: collection imports every test module in every worker.

PYTEST_DONT_REWRITE (tests/conftest.py imports this module before pytest loads it as a plugin; it asserts nothing)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

GROUPS_ENV = "BOKEHDIFF_XDIST_GROUPS"  # the folder of the workers' {nodeid: group} files
MARK = "xdist_group"


def group_of(item: pytest.Item) -> str | None:
    """The ``xdist_group`` name of a test (its closest mark: a test's own overrides its module's), or None."""
    mark = item.get_closest_marker(MARK)
    if mark is None:
        return None
    name = mark.args[0] if mark.args else mark.kwargs.get("name")
    if not isinstance(name, str) or not name:
        raise pytest.UsageError(f"{item.nodeid}: write @pytest.mark.{MARK}('<name>') with a non-empty group name")
    return name


def pytest_configure(config: pytest.Config) -> None:
    """In the controller of ``pytest -n``: make the folder the workers write their groups into (inherited by the
    workers through the environment)."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return  # a worker, or a run without -n
    folder = tempfile.mkdtemp(prefix="xdist-groups-")
    os.environ[GROUPS_ENV] = folder
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


@pytest.hookimpl(trylast=True)  # after any reordering (tests/conftest.py sorts)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a worker, after collection: write this worker's ``{nodeid: group}`` (atomically) for the controller."""
    folder = os.environ.get(GROUPS_ENV)
    if not hasattr(config, "workerinput") or not folder:
        return  # not an xdist worker (a pytest a test starts inherits the environment, not the role)
    worker = config.workerinput["workerid"]
    groups = {item.nodeid: name for item in items if (name := group_of(item)) is not None}
    tmp = Path(folder) / f".{worker}.json.tmp"
    tmp.write_text(json.dumps(groups))
    os.replace(tmp, Path(folder) / f"{worker}.json")


def read_groups(folder: str | Path) -> dict[str, str]:
    """The ``{nodeid: group}`` the workers wrote (they collect the same tests; xdist checks that)."""
    groups: dict[str, str] = {}
    for path in sorted(Path(folder).glob("*.json")):
        groups.update(json.loads(path.read_text()))
    return groups


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """The controller's scheduler for ``--dist load`` (what ``-n`` selects): :class:`GroupScheduling`."""
    if config.getvalue("dist") != "load":
        return None  # another --dist chosen on the command line
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """Load scheduling in which the tests of one ``xdist_group`` are one unit of work (one worker)."""

        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:
                self._groups = read_groups(os.environ[GROUPS_ENV])
            group = self._groups.get(nodeid)
            return nodeid if group is None else f"{MARK}:{group}"

    return GroupScheduling(config, log)
