"""The edge deployment of deploy/edge (`edge.py`), started for each test that asks for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.edge import Edge, edge_from_the_deploy_files


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    """deploy/edge's hub and site, running from a project folder of the test's, the site's link made through a
    relay the test may cut."""
    with edge_from_the_deploy_files(tmp_path / "project") as running:
        yield running
