"""The pytest plugin as a project installing this package meets it: test files run by a pytest of their
own (a subprocess), finding the fixtures through the ``pytest11`` entry point alone."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

FRESH_PER_TEST = '''
    def test_first_writes(sandbox_inprocess):
        made = sandbox_inprocess.session().post(f"{sandbox_inprocess.api}/accounts", json={"name": "Only Here"})
        assert made.status_code == 204
        assert sandbox_inprocess.data_dir.name.startswith("sandbox")

    def test_second_starts_fresh(sandbox_inprocess):
        rows = sandbox_inprocess.session().get(f"{sandbox_inprocess.api}/accounts?$filter=name eq 'Only Here'")
        assert rows.json()["value"] == []
        assert len(sandbox_inprocess.session().get(f"{sandbox_inprocess.api}/accounts").json()["value"]) == 40
        assert sandbox_inprocess.journal.count() == 2  # this test's two reads only
'''

SHARED_KEEPS_DATA = '''
    import pytest

    pytestmark = pytest.mark.sandbox(fixture=None, data={"dataverse": {"accounts": [{"name": "Seeded"}]}})

    def test_first_writes(sandbox_inprocess_module):
        assert sandbox_inprocess_module.session().post(f"{sandbox_inprocess_module.api}/accounts",
                                                       json={"name": "Kept"}).status_code == 204
        sandbox_inprocess_module.controls["dataverse"].set_faults(error_rate=1.0)

    def test_second_sees_it_with_a_clean_journal_and_no_faults(sandbox_inprocess_module):
        names = {r["name"] for r in sandbox_inprocess_module.session().get(
            f"{sandbox_inprocess_module.api}/accounts?$select=name").json()["value"]}
        assert names == {"Seeded", "Kept"}
        assert [r.method for r in sandbox_inprocess_module.journal.requests()] == ["GET"]
'''

SHARED_RESET_DATA = '''
    import pytest

    pytestmark = pytest.mark.sandbox(reset="data", data={"bc": {"customers": [{"displayName": "Seeded"}]}})

    def test_first_writes(sandbox_live):
        assert sandbox_live.ca_bundle and sandbox_live.api.startswith("https://127.0.0.1:")
        company = sandbox_live.companies[0]
        made = sandbox_live.bc_session().post(f"{sandbox_live.bc_api}/companies({company})/customers",
                                              json={"displayName": "Gone Next Test"})
        assert made.status_code == 201

    def test_second_sees_the_seed_again(sandbox_live):
        company = sandbox_live.companies[0]
        names = [c["displayName"] for c in sandbox_live.bc_session().get(
            f"{sandbox_live.bc_api}/companies({company})/customers?$filter=displayName eq 'Gone Next Test' "
            f"or displayName eq 'Seeded'").json().get("value", [])]
        assert names == ["Seeded"]
'''

MISUSED = '''
    import pytest

    @pytest.mark.sandbox(fixture=None)
    def test_per_test_options_on_a_shared_sandbox(sandbox_live):
        pass
'''


def test_fixtures_found_through_the_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fresh=textwrap.dedent(FRESH_PER_TEST), test_shared=textwrap.dedent(SHARED_KEEPS_DATA),
                        test_reset=textwrap.dedent(SHARED_RESET_DATA))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=6)


def test_options_of_one_test_on_a_shared_sandbox_are_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_misused=textwrap.dedent(MISUSED))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*sandbox_live is shared by the module*"])
