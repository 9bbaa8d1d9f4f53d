"""`parity publish`: the staged folder and commit operations (--dry-run, no network), the card generated from the
report and validated by huggingface_hub offline, the refusals, and the real upload path against a local stand-in for
the Hub's HTTP API that records the actual requests."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import pytest

from parity.contracts.io import load_model, write_model
from parity.contracts.manifests import DumpManifest
from parity.contracts.report import ParityReport
from parity.host.publish import stage_of
from tests.conftest import error_line, parity, read_json, stderr_without_progress
from tests.fakehub import FakeHub

REPO = "my-org/sam-tiny-random"
TOKEN = "hf_parity_test_token_never_printed"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _card(path: Path):
    from huggingface_hub import ModelCard

    return ModelCard(path.read_text(), ignore_metadata_errors=False)


@pytest.fixture
def converted(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny conversion (publish writes OUT/<id>/publish/)."""
    out = tmp_path / "out" / "sam-tiny-random"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("publish", "recheck"))
    return out


def _hub_env(hub: FakeHub, tmp_path: Path, token: str | None = TOKEN) -> dict[str, str]:
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_OFFLINE": "0", "HF_TOKEN": token or ""}
    return env


def test_bad_repo_id_and_missing_report_are_one_line_errors(tmp_path):
    for repo_id in ("no-org", "org/na me", "org/../x", "a/b/c"):
        result = parity("publish", "sam-tiny-random", "--repo-id", repo_id, "--dry-run", "--out", str(tmp_path),
                        check=2)
        assert "is not a Hub repository id" in error_line(result)
    result = parity("publish", "sam-tiny-random", "--repo-id", REPO, "--dry-run", "--out", str(tmp_path), check=2)
    assert "no report at" in error_line(result) and "parity convert sam-tiny-random" in error_line(result)
    assert stderr_without_progress(result) == [error_line(result)]
    assert "is not one variant id" in error_line(parity("publish", "sam", "--repo-id", REPO, "--dry-run", check=2))


@pytest.mark.slow
def test_dry_run_stages_the_exact_folder_and_its_commit_operations(converted):
    result = parity("publish", "sam-tiny-random", "--repo-id", REPO, "--dry-run", "--out",
                    str(converted.parent), check=0)
    folder = converted / "publish" / "repo"
    plan = read_json(converted / "publish" / "operations.json")
    assert result.stdout.strip() == str((converted / "publish" / "operations.json").resolve())
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert [op["path_in_repo"] for op in plan["operations"]] == files
    for op in plan["operations"]:
        assert _sha256(Path(op["local_path"])) == op["sha256"] and Path(op["local_path"]).stat().st_size == op["bytes"]
    for name in (p.name for p in (converted / "hf").iterdir()):
        assert _sha256(folder / name) == _sha256(converted / "hf" / name)
    for name in ("report.json", "report.md", "report.html", "junit.xml", "conversion.json"):
        assert _sha256(folder / "parity" / name) == _sha256(converted / name)
    assert _sha256(folder / "parity" / "manifest.json") == _sha256(converted / "dump" / "manifest.json")
    assert plan["repo_id"] == REPO and plan["verdict"] == "pass" and not plan["create_pr"] and not plan["private"]
    assert plan["commit_message"].startswith("parity PASS: sam-tiny-random")


@pytest.mark.slow
def test_card_is_generated_from_the_report_and_passes_huggingface_hub_validation(converted):
    parity("publish", "sam-tiny-random", "--repo-id", REPO, "--dry-run", "--out", str(converted.parent), check=0)
    report = load_model(ParityReport, converted / "report.json")
    manifest = load_model(DumpManifest, converted / "dump" / "manifest.json")
    card = _card(converted / "publish" / "repo" / "README.md")
    assert card.data.to_dict() == {"library_name": "transformers", "license": "apache-2.0",
                                   "pipeline_tag": "mask-generation",
                                   "tags": ["parity", "parity-pass", "sam", "vision"]}
    text = card.text
    assert "## Parity: PASS" in text and "first divergence: none" in text
    for stage in {stage_of(c.name) for c in report.captures}:
        members = [c for c in report.captures if stage_of(c.name) == stage]
        worst = max(members, key=lambda c: c.max_abs or 0.0)
        shown = "0" if worst.max_abs == 0 else f"{worst.max_abs:.2e}"
        assert f"| `{stage}` | {len(members)} | {len(members)} | {shown} | `{worst.name}` |" in text
    assert manifest.checkpoint.sha256 in text and manifest.environment.upstream in text
    assert f"transformers {report.port_environment.packages['transformers']}" in text
    assert f"parity diff --dump out/sam-tiny-random/dump --port {REPO}" in text
    assert f"| 1.00e-05 | 1.00e-04 | {len(report.captures)} | profile default |" in text


@pytest.mark.slow
def test_the_dry_run_folder_reverifies_with_diff_port(converted, tmp_path):
    parity("publish", "sam-tiny-random", "--repo-id", REPO, "--dry-run", "--out", str(converted.parent), check=0)
    parity("diff", "--dump", str(converted / "dump"), "--port", str(converted / "publish" / "repo"), "--out",
           str(tmp_path / "verify"), check=0)
    report = read_json(tmp_path / "verify" / "report.json")
    assert report["verdict"] == "pass" and report["conversion"] is None
    assert report["port"] == str((converted / "publish" / "repo").resolve())


def _make_failing(out: Path) -> str:
    """The same conversion's report, as if its forward had diverged at the neck (the gate reads report.json)."""
    report = load_model(ParityReport, out / "report.json")
    first = "image_encoder.neck"
    captures = [c.model_copy(update={"verdict": "fail"} if c.name == first else {}) for c in report.captures]
    write_model(report.model_copy(update={"verdict": "fail", "first_divergence": first, "captures": captures}),
                out / "report.json")
    return first


@pytest.mark.slow
def test_a_failing_report_is_refused_unless_allow_fail_puts_the_failure_in_the_card(converted):
    first = _make_failing(converted)
    result = parity("publish", "sam-tiny-random", "--repo-id", REPO, "--dry-run", "--out", str(converted.parent),
                    check=2)
    assert f"FAILED at {first}" in error_line(result) and "--allow-fail" in error_line(result)
    assert not (converted / "publish").exists()
    parity("publish", "sam-tiny-random", "--repo-id", REPO, "--dry-run", "--allow-fail", "--out",
           str(converted.parent), check=0)
    card = _card(converted / "publish" / "repo" / "README.md")
    assert "parity-fail" in card.data.tags and "parity-pass" not in card.data.tags
    assert "## Parity: FAIL" in card.text and f"The first divergence from the original is `{first}`" in card.text
    assert read_json(converted / "publish" / "operations.json")["verdict"] == "fail"


@pytest.mark.slow
def test_an_error_report_or_a_recheck_report_is_never_published(converted, tmp_path):
    report = load_model(ParityReport, converted / "report.json")
    write_model(report.model_copy(update={"port": "/some/port", "conversion": None}), converted / "report.json")
    line = error_line(parity("publish", str(converted), "--repo-id", REPO, "--dry-run", check=2))
    assert "re-checks an existing port" in line
    write_model(ParityReport(**{**report.model_dump(), "verdict": "error", "error": "boom", "captures": []}),
                converted / "report.json")
    line = error_line(parity("publish", str(converted), "--repo-id", REPO, "--dry-run", "--allow-fail", check=2))
    assert "the latest report is an error (boom)" in line
    assert not (converted / "publish").exists()


@pytest.mark.slow
def test_upload_sends_the_staged_folder_in_one_commit(converted, tmp_path):
    with FakeHub() as hub:
        result = parity("publish", "sam-tiny-random", "--repo-id", REPO, "--revision", "parity-check", "--private",
                        "--out", str(converted.parent), env=_hub_env(hub, tmp_path), check=0)
    plan = read_json(converted / "publish" / "operations.json")
    assert hub.calls() == [("POST", "/api/repos/create"), ("POST", f"/api/models/{REPO}/branch/parity-check"),
                           ("POST", "/api/validate-yaml"), ("POST", f"/api/models/{REPO}/preupload/parity-check"),
                           ("POST", f"/api/models/{REPO}/commit/parity-check")]
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in hub.requests)
    assert TOKEN not in result.stdout + result.stderr
    create = hub.requests[0].json()
    assert (create["organization"], create["name"], create["type"]) == ("my-org", "sam-tiny-random", "model")
    assert create.get("private") is True or create.get("visibility") == "private"
    card = (converted / "publish" / "repo" / "README.md").read_text()
    assert hub.requests[2].json()["content"] == card
    header, *files = hub.requests[4].ndjson()
    assert header["value"]["summary"] == plan["commit_message"]
    assert "parity diff --dump out/sam-tiny-random/dump --port my-org/sam-tiny-random" in header["value"]["description"]
    sent = {f["value"]["path"]: base64.b64decode(f["value"]["content"]) for f in files}
    assert sorted(sent) == [op["path_in_repo"] for op in plan["operations"]]
    for op in plan["operations"]:
        assert hashlib.sha256(sent[op["path_in_repo"]]).hexdigest() == op["sha256"]
    assert result.stdout.strip() == f"{hub.url}/{REPO}/commit/{'1' * 40}"


@pytest.mark.slow
def test_open_pr_needs_an_existing_repository_and_opens_one(converted, tmp_path):
    with FakeHub() as hub:
        line = error_line(parity("publish", "sam-tiny-random", "--repo-id", REPO, "--open-pr", "--out",
                                 str(converted.parent), env=_hub_env(hub, tmp_path), check=2))
        assert "does not exist" in line and not any(m == "POST" for m, _ in hub.calls())
        hub.existing.add(REPO)
        result = parity("publish", "sam-tiny-random", "--repo-id", REPO, "--open-pr", "--out", str(converted.parent),
                        env=_hub_env(hub, tmp_path), check=0)
    commit = [r for r in hub.requests if r.path.split("?")[0].endswith("/commit/main")]
    assert len(commit) == 1 and "create_pr=1" in commit[0].path
    assert ("POST", "/api/repos/create") not in hub.calls()
    assert result.stdout.strip() == f"{hub.url}/{REPO}/discussions/1"


@pytest.mark.slow
def test_without_a_token_nothing_is_sent(converted, tmp_path):
    with FakeHub() as hub:
        result = parity("publish", "sam-tiny-random", "--repo-id", REPO, "--out", str(converted.parent),
                        env=_hub_env(hub, tmp_path, token=None), check=2)
    assert "no Hugging Face token" in error_line(result) and hub.requests == []
