"""The edge soak at its quick size (`bench/edge_soak.py`, one fault of each kind: the leaf link cut, a hub node
killed, a site loader restarted) against a real three-node hub, a real edge site and real loaders.

It asserts behaviour only, never a timing: no request lost (each one answered, or answered with a contract
error), every version the hub acknowledged in the hub's index and in the site's mirror once it has caught up,
each one announced once by each auto-updating loader, and no byte served that is not what was signed. A version
is not announced with reason `published` by a loader that was stopped while it and a newer version of the same
extension reached the site (the README's rule), nor by one whose automatic load waited for the archive mirror
while a newer version arrived (the retry loads the latest only) or while a request loaded it first (that request
announced it): the soak counts those apart, and nothing else may be missing.
"""

from __future__ import annotations

from pathlib import Path

from bench.edge_soak import QUICK, run


def test_the_quick_edge_soak_loses_nothing_and_announces_each_version_once(tmp_path: Path) -> None:
    result = run(QUICK, tmp_path / "edge_soak.json", log_dir=tmp_path / "logs")

    assert result["faults"] == {"link_cut": 1, "hub_node_kill": 1, "loader_restart": 1}
    requests = result["requests"]
    assert requests["lost"] == 0, requests["lost_requests"]
    assert requests["sent"] == requests["answered"] + requests["contract_errors"] > 0
    assert set(requests["contract_errors_by_code"]) <= {"not_found", "version_not_found", "unavailable"}

    published = result["published"]
    assert published["live"] > 0 and published["gave_up"] == 0 and published["missing_at_hub"] == 0
    assert result["mirror"]["missing_at_site"] == 0, result["mirror"]["missing"]

    assert set(result["announcements"]) == {"site-a", "site-b"}
    for name, judged in result["announcements"].items():
        assert judged["expected"] == published["live"], name
        assert (judged["duplicates"], judged["missed"], judged["unexpected"]) == (0, 0, 0), (name, judged)
        apart = ("superseded_while_down", "superseded_while_its_archive_was_awaited")
        accounted = judged["once"] + sum(judged[kind] for kind in apart)
        assert accounted == judged["expected"], (name, judged)

    checks = result["checks"]
    assert checks["bad_digests"] == []
    assert checks["audit"]["untrusted_or_invalid"] == 0, checks["audit"]["refused"]
    assert checks["sweep"]["ok"] == checks["sweep"]["versions"] == published["live"] + published["base"]
    assert result["wrong"] == []
    assert "lost" in (tmp_path / "edge_soak.md").read_text()
