"""For the whole suite: Hypothesis profiles, and no silently skipped integration test in CI.

Hypothesis profiles (HYPOTHESIS_PROFILE picks one; without it "ci" when CI=true, else "dev"):
  ci    derandomized: the same examples every run, so a CI result means the same each time
  dev   randomized, as many examples as ci: new examples on every local run
  long  randomized, 20 times as many examples (HYPOTHESIS_LONG_EXAMPLES); for
        scripts/hypothesis-long
Tests set no max_examples of their own, so that the profile decides.

With CI=true, an integration test that is skipped fails instead: a machine without
/dev/net/tun, `ip` or root would otherwise skip them all and the run would pass.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

EXAMPLES = 200


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


settings.register_profile("ci", derandomize=True, deadline=None, max_examples=EXAMPLES,
                          print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=EXAMPLES)
settings.register_profile("long", deadline=None, print_blob=True,
                          max_examples=int(os.environ.get("HYPOTHESIS_LONG_EXAMPLES",
                                                          20 * EXAMPLES)),
                          suppress_health_check=[HealthCheck.too_slow])
# Loaded here, before any test module is imported: a test's @settings takes what it does not
# set itself from the profile loaded when the decorator runs.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if in_ci() else "dev"))


def pytest_report_header(config: pytest.Config) -> str:
    return (f"hypothesis profile: {settings.get_current_profile_name()}; "
            f"CI={'true: skipped integration tests fail' if in_ci() else 'no'}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    # (An expected failure is reported as skipped too, with `wasxfail`: left alone.)
    if (report.skipped and in_ci() and not hasattr(report, "wasxfail")
            and item.get_closest_marker("integration") is not None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"integration test skipped under CI=true, which must run them all"
                           f" (root, /dev/net/tun, ip, curl, nc, nft): {reason}")
    return report
