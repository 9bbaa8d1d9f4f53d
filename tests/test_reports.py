"""Reports are rendered from report.json alone: Markdown, self-contained HTML, JUnit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from parity.contracts.io import write_model
from parity.contracts.metrics import compare, mark_first_divergence
from parity.contracts.report import ParityReport
from parity.host.render import render_html, render_junit, render_markdown
from tests.conftest import parity


def _report(verdict_bad: bool = True) -> ParityReport:
    ok = np.linspace(-1, 1, 16, dtype=np.float32)
    captures = [compare(f"enc.blocks.{i}", i, ok, ok + (0.01 if verdict_bad and i >= 2 else 0.0), 1e-5, 1e-4)
                for i in range(5)]
    first = mark_first_divergence(captures)
    return ParityReport(recipe_id="demo-tiny", recipe_hash="a" * 64, dump="/dumps/demo", dump_producer="origin",
                        port="converted", verdict="fail" if first else "pass", first_divergence=first,
                        captures=captures, durations={"total": 1.5})


def test_markdown_puts_the_first_divergence_on_top():
    text = render_markdown(_report())
    assert "**First divergence:** `enc.blocks.2`" in text
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert table[0].startswith("| `enc.blocks.2` | fail |")
    assert "(downstream)" in table[1]
    assert all("pass" in row for row in table[3:])


def test_junit_has_one_testcase_per_variant_and_carries_the_divergence():
    bad, good = _report(), _report(verdict_bad=False)
    good.recipe_id = "demo-other"
    root = ET.fromstring(render_junit([bad, good]))
    assert root.get("tests") == "2" and root.get("failures") == "1"
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert "enc.blocks.2" in cases["demo-tiny"].find("failure").get("message")
    assert cases["demo-other"].find("failure") is None


def test_html_is_self_contained_and_plots_every_capture():
    page = render_html(_report())
    assert len(re.findall(r'<circle class="capture', page)) == 5
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_report_command_rerenders_without_the_dump(tmp_path):
    write_model(_report(), tmp_path / "report.json")
    result = parity("report", str(tmp_path), check=1)
    assert "enc.blocks.2" in result.stdout
    for name in ("report.md", "report.html", "junit.xml"):
        assert (tmp_path / name).is_file()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None and not os.environ.get("PARITY_REQUIRE_CHROMIUM"),
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_report_runs_in_headless_chromium(tmp_path):
    path = tmp_path / "report.html"
    path.write_text(render_html(_report()))
    result = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                             "--v=0", "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'data-ready="5"' in result.stdout
    assert "Uncaught" not in result.stderr
