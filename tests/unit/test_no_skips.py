"""A skipped test fails the run (tests/support/no_skips.py), so CI cannot
pass without a check because its tool was missing."""

from __future__ import annotations

import pytest

from tests.support.gateway import ROOT


@pytest.fixture(autouse=True)
def _importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the plugin, from the pytester's own folder


def test_a_skipped_test_fails_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_needs_a_tool():
            pytest.skip("tool not installed")

        def test_passes():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "tests.support.no_skips")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*1 test(s) skipped, and a skip fails the run*"])


def test_a_run_without_skips_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_passes():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "tests.support.no_skips")
    assert result.ret == pytest.ExitCode.OK
