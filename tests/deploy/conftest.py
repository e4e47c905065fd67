"""Puts this folder's helpers (deploy_support.py) on the import path; fixtures of the deploy tests.

The ``deploy`` marker (registered in pyproject.toml) marks the tests that start real
Flower processes; ``pytest -m "not deploy"`` leaves them out. Those tests start them
through :class:`fedlm.deploy.processes.Processes`, which stops them on SIGTERM, SIGHUP,
Ctrl-C and interpreter exit, and gives each a parent-death signal; :func:`_no_orphans`
checks after each test that nothing it started is still running.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def task_identity():
    """What flwr's Message needs to build a message outside a Flower process (a ServerApp's ids)."""
    pytest.importorskip("flwr")
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(autouse=True)
def _no_orphans(request, tmp_path):
    """After a ``deploy`` test: stop and report any process still running from its work directory."""
    yield
    if request.node.get_closest_marker("deploy") is None:
        return
    from fedlm.deploy.processes import marked, stop_tree

    left = set()
    for home in tmp_path.glob("**/flwr-home"):
        left |= marked("FLWR_HOME", str(home))
    if left:
        stop_tree(sorted(left))
        pytest.fail(f"processes {sorted(left)} outlived the test that started them")
