"""Every scenario of the catalogue (tests/scenario_catalogue.py) ends refused or accepted, never wrong.

The catalogue is the user's mistakes as CLI sequences; ``bench/bad_inputs.py`` prints the
same scenarios as a table with totals. Marked slow: it trains three tiny members and runs
one pipeline through kfp.local.
"""

from __future__ import annotations

import pytest

from tests.scenario_catalogue import SCENARIOS, Workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("catalogue"))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[f"{s.case}-{s.label}" for s in SCENARIOS])
def test_scenario_is_refused_or_accepted(scenario, workspace: Workspace):
    outcome = scenario.run(workspace)
    if outcome.verdict == "skipped":
        pytest.skip(outcome.detail)
    assert outcome.verdict in ("refused", "accepted"), outcome.detail
