"""`scripts/bench fuzz`: counts the cases it runs and reports a broken property."""

from __future__ import annotations

from hypothesis import strategies as st

from flockd.bench import fuzz
from flockd.bench._fuzz_base import Target


def test_campaign_counts_cases_and_passes_on_a_real_target() -> None:
    lines: list[str] = []
    status = fuzz.main(["--budget", "60", "--max-cases", "30", "sync.request"], out=lines.append)
    assert status == 0
    row = next(line for line in lines if line.startswith("sync.request"))
    assert row.split()[1:3] == ["30", "0"]  # cases, failures
    assert lines[-1].split()[:3] == ["total", "30", "0"]


def test_campaign_reports_a_decoder_that_raises_an_undocumented_error() -> None:
    def decode(data: bytes) -> None:
        if len(data) > 3:
            raise TypeError("an undocumented error")

    broken = Target("broken", st.binary(max_size=8), decode)
    tally = fuzz.campaign(broken, seconds=60, max_cases=500, hang=10)
    assert len(tally.failures) == 1 and "TypeError" in tally.failures[0]
