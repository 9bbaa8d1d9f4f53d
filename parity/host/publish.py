"""`parity publish`: ship a proven port to the Hugging Face Hub with its proof attached.

The folder that is uploaded is staged first, always, under OUT/<id>/publish/: `repo/` holds the saved model and
processor (hf/), a model card generated from report.json (and the dump manifest and conversion record it refers to),
and the proof itself under `parity/`; `operations.json` lists every commit operation (path in the repo, local file,
size, sha256) plus the repository settings. `--dry-run` stops there, with no network; a real run executes exactly that
list as ONE commit (create_repo, then create_commit). huggingface_hub is imported only here, only when needed, and the
token comes from its usual places (HF_TOKEN, the token file of `hf auth login`); it is never printed.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from parity import __version__
from parity.contracts.base import Sha256, Strict
from parity.contracts.errors import ParityError
from parity.contracts.hashing import sha256_file
from parity.contracts.io import load_model, write_model
from parity.contracts.manifests import DumpManifest, EnvironmentRecord
from parity.contracts.report import CaptureResult, ParityReport, Verdict

CARD = "README.md"
PROOF = "parity"
"""Folder in the repository holding the proof: the reports, the conversion record and the dump manifest."""
PROOF_FILES = ("report.json", "report.md", "report.html", "junit.xml", "conversion.json")
PUBLISH = "publish"
"""OUT/<id>/publish/: repo/ (the exact folder uploaded) and operations.json."""
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class PlannedFile(Strict):
    path_in_repo: str
    """Where the file lands in the repository."""
    local_path: Path
    """The staged file that is uploaded."""
    bytes: int = Field(ge=0)
    """Its size."""
    sha256: Sha256
    """Its sha256 (what the Hub stores for large files as well)."""


class PublishPlan(Strict):
    """Everything one publish sends: what a dry run writes as operations.json and what a real run executes."""

    repo_id: str = Field(pattern=REPO_ID.pattern)
    """Target repository, ORG/NAME."""
    repo_type: Literal["model"] = "model"
    """Hub repository type."""
    private: bool
    """Create the repository private (applies when it does not exist yet)."""
    revision: str | None
    """Branch to commit to (created when missing); None for the default branch."""
    create_pr: bool
    """Open a pull request on the existing repository instead of committing to the branch."""
    commit_message: str
    """Commit title: the verdict and the variant."""
    commit_description: str
    """Commit body: how to re-verify."""
    recipe_id: str
    """The variant published."""
    verdict: Verdict
    """The report's verdict (fail only with --allow-fail)."""
    folder: Path
    """The staged folder, uploaded as it is."""
    operations: list[PlannedFile]
    """One add operation per file of the folder, in one commit."""


def publish_dir(out: Path) -> Path:
    return out / PUBLISH


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id or repo_id.endswith((".", "-")):
        raise ParityError(f"--repo-id {repo_id!r} is not a Hub repository id (ORG/NAME: letters, digits, '-', '_', "
                          "'.'; no '--' or '..')")
    return repo_id


def load_proof(out: Path, *, allow_fail: bool) -> tuple[ParityReport, DumpManifest]:
    """The variant's latest report and the dump manifest it refers to, refused unless they prove what is published."""
    report_file = out / "report.json"
    if not report_file.is_file():
        raise ParityError(f"no report at {report_file}: run `parity convert {out.name}` first")
    report = load_model(ParityReport, report_file)
    if report.verdict == "error":
        raise ParityError(f"{report.recipe_id}: the latest report is an error ({report.error}); nothing to publish")
    if report.verdict == "fail" and not allow_fail:
        raise ParityError(f"{report.recipe_id}: the latest report FAILED at {report.first_divergence}; publish refuses "
                          "a failing port (--allow-fail publishes it with the failure in the card)")
    if report.port != "converted" or report.conversion is None:
        raise ParityError(f"{report_file} re-checks an existing port ({report.port}), it did not convert one: publish "
                          "the output of `parity convert`")
    if not (out / "hf" / "config.json").is_file():
        raise ParityError(f"{out / 'hf'} has no config.json: the converted model was not saved (run `parity convert "
                          f"{report.recipe_id}` again)")
    manifest_file = _dump_folder(report, out) / "manifest.json"
    manifest = load_model(DumpManifest, manifest_file)
    if manifest.recipe_hash != report.recipe_hash:
        raise ParityError(f"{manifest_file} belongs to another recipe than {report_file} (recipe hash differs)")
    return report, manifest


def _dump_folder(report: ParityReport, out: Path) -> Path:
    """The dump the report was made against: as recorded, else beside the report (a moved output folder)."""
    recorded = Path(report.dump)
    for candidate in (recorded, out / "dump"):
        if (candidate / "manifest.json").is_file():
            return candidate
    raise ParityError(f"the dump {recorded} that {out / 'report.json'} was made against is gone: the card needs its "
                      "manifest (run `parity convert` again)")


def stage(out: Path, repo_id: str, *, allow_fail: bool = False, private: bool = False, revision: str | None = None,
          create_pr: bool = False) -> PublishPlan:
    """Write OUT/publish/{repo/, operations.json} atomically (staged beside, renamed into place) and return the plan."""
    check_repo_id(repo_id)
    report, manifest = load_proof(out, allow_fail=allow_fail)
    card = render_card(report, manifest, repo_id)
    validate_card(card, card_metadata(report, manifest, repo_id))
    final = publish_dir(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{PUBLISH}.", dir=out))
    try:
        repo = staging / "repo"
        shutil.copytree(out / "hf", repo)
        (repo / CARD).write_text(card)
        proof = repo / PROOF
        proof.mkdir()
        for name in PROOF_FILES:
            if (out / name).is_file():
                shutil.copy2(out / name, proof / name)
        shutil.copy2(_dump_folder(report, out) / "manifest.json", proof / "manifest.json")
        files = sorted(p for p in repo.rglob("*") if p.is_file())
        operations = [PlannedFile(path_in_repo=p.relative_to(repo).as_posix(),
                                  local_path=final.resolve() / "repo" / p.relative_to(repo), bytes=p.stat().st_size,
                                  sha256=sha256_file(p)) for p in files]
        worst = max((c.max_abs or 0.0 for c in report.captures), default=0.0)
        plan = PublishPlan(
            repo_id=repo_id, private=private, revision=revision, create_pr=create_pr, recipe_id=report.recipe_id,
            verdict=report.verdict, folder=final.resolve() / "repo", operations=operations,
            commit_message=f"parity {report.verdict.upper()}: {report.recipe_id} "
                           f"({_passed(report.captures)}/{len(report.captures)} captures, worst max-abs {worst:.2e})",
            commit_description=f"Converted and checked capture by capture against the original implementation with "
                               f"parity {__version__}; proof in {PROOF}/. Re-verify:\n\n"
                               f"    {reverify_command(manifest, repo_id)}\n")
        write_model(plan, staging / "operations.json")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return plan


def upload(plan: PublishPlan) -> str:
    """Execute the plan as one commit on the Hub; returns the commit (or pull request) URL."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = get_token()
    if not token:
        raise ParityError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run)")
    for planned in plan.operations:
        if not planned.local_path.is_file() or planned.local_path.stat().st_size != planned.bytes:
            raise ParityError(f"{planned.local_path} changed since it was staged: publish again")
    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=p.path_in_repo, path_or_fileobj=str(p.local_path))
                  for p in plan.operations]
    try:
        if plan.create_pr:
            if not api.repo_exists(plan.repo_id, repo_type=plan.repo_type):
                raise ParityError(f"--open-pr updates an existing repository, and {plan.repo_id} does not exist")
        else:
            api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=plan.private, exist_ok=True)
            if plan.revision:
                api.create_branch(plan.repo_id, repo_type=plan.repo_type, branch=plan.revision, exist_ok=True)
        info = api.create_commit(plan.repo_id, operations, repo_type=plan.repo_type, revision=plan.revision,
                                 commit_message=plan.commit_message, commit_description=plan.commit_description,
                                 create_pr=plan.create_pr)
    except HfHubHTTPError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ParityError(f"the Hub refused the upload to {plan.repo_id}: {first}") from None
    except (OSError, ValueError) as exc:
        raise ParityError(f"uploading to {plan.repo_id} failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                          ) from None
    return info.pr_url or info.commit_url


# --- the model card ---------------------------------------------------------------------------------------------


def card_metadata(report: ParityReport, manifest: DumpManifest, repo_id: str) -> dict:
    """The card's YAML block, by the Hub's model card conventions."""
    recipe = manifest.recipe
    metadata: dict = {"library_name": "transformers"}
    if recipe.license:
        metadata["license"] = recipe.license
    if recipe.hf.pipeline_tag:
        metadata["pipeline_tag"] = recipe.hf.pipeline_tag
    if recipe.hub_id and recipe.hub_id.lower() != repo_id.lower():
        metadata["base_model"] = recipe.hub_id
    metadata["tags"] = ["parity", f"parity-{report.verdict}", recipe.family.replace("_", "-"), "vision"]
    return metadata


def validate_card(text: str, expected: dict) -> None:
    """huggingface_hub's own parsing of a model card, offline: the YAML block must be found, be a mapping, build a
    ModelCardData without metadata errors and read back exactly as written. (The Hub's server-side check runs on
    upload: create_commit validates README.md before it sends anything.)"""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except ValueError as exc:
        raise ParityError(f"the generated model card is invalid: {exc}") from None
    found = card.data.to_dict()
    if found != expected:
        raise ParityError(f"the generated model card's metadata reads back as {found}, not {expected}")


def _passed(captures: list[CaptureResult]) -> int:
    return sum(c.verdict == "pass" for c in captures)


def _cell(text: str) -> str:
    """Free text inside a markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _num(value: float | None) -> str:
    if value is None:
        return "–"
    return "0" if value == 0 else f"{value:.2e}"


def stage_of(capture: str) -> str:
    """A capture's stage: the first component of its name (an original top-level module, a prompt case, `return`)."""
    return capture.split(".", 1)[0]


def stage_rows(captures: list[CaptureResult]) -> list[str]:
    """One markdown row per stage, in origin execution order: captures, passes, worst max-abs and where."""
    stages: dict[str, list[CaptureResult]] = {}
    for capture in sorted(captures, key=lambda c: c.execution_index):
        stages.setdefault(stage_of(capture.name), []).append(capture)
    rows = []
    for name, members in stages.items():
        worst = max(members, key=lambda c: (c.max_abs is not None, c.max_abs or 0.0))
        failing = [c for c in members if c.verdict != "pass"]
        verdict = "pass" if not failing else failing[0].verdict + (" (downstream)" if failing[0].downstream else "")
        rows.append(f"| `{name}` | {len(members)} | {_passed(members)} | {_num(worst.max_abs)} | `{worst.name}` | "
                    f"{_num(max((c.atol_needed or 0.0) for c in members))} | {verdict} |")
    return rows


def _environment(record: EnvironmentRecord | None) -> str:
    if record is None:
        return "not recorded"
    packages = ", ".join(f"{name} {version}" for name, version in record.packages.items())
    cuda = f", CUDA {record.cuda}" if record.cuda else ""
    return f"Python {record.python}, torch {record.torch}{cuda} on {record.device}; {packages}"


def _checkpoint_source(manifest: DumpManifest) -> str:
    """Where the original checkpoint came from, without local directories (a card is public)."""
    recipe, source = manifest.recipe, manifest.checkpoint.source
    if re.match(r"^https?://", source) or source.startswith(("generated", "fixture ")):
        return source
    local = Path(source.removeprefix("file ")).name
    if recipe.checkpoint.kind == "url" and recipe.checkpoint.url:
        return f"{recipe.checkpoint.url} (loaded from a local copy, {local})"
    return f"local file {local}"


def reverify_command(manifest: DumpManifest, repo_id: str) -> str:
    if manifest.producer == "fixture":
        return f"parity diff --dump ../shared/fixtures/{manifest.recipe.checkpoint.fixture} --port {repo_id}"
    return f"parity diff --dump out/{manifest.recipe.id}/dump --port {repo_id}"


def _dump_command(manifest: DumpManifest) -> str:
    """How to make the references again with the original code."""
    recipe, checkpoint = manifest.recipe, manifest.checkpoint
    if manifest.producer == "fixture":
        return f"# the references: golden fixture {recipe.checkpoint.fixture}, made by the upstream code"
    if re.match(r"^https?://", checkpoint.source) or checkpoint.source.startswith(("generated", "fixture ")):
        return f"parity dump {recipe.id}"
    local = Path(checkpoint.source.removeprefix("file ")).name
    return f"parity dump {recipe.id} --checkpoint {local} --sha256 {checkpoint.sha256}"


def render_card(report: ParityReport, manifest: DumpManifest, repo_id: str) -> str:
    """The model card: metadata block, then the proof (verdict, per-stage worst errors, first divergence, tolerances
    and their reasons, provenance, environments) and how to re-verify."""
    from huggingface_hub import ModelCardData

    recipe = manifest.recipe
    metadata = ModelCardData(**card_metadata(report, manifest, repo_id)).to_yaml()
    worst = max((c.max_abs or 0.0 for c in report.captures), default=0.0)
    verdict = report.verdict.upper()
    lines = [f"# {repo_id}", "",
             f"A 🤗 transformers port (`{recipe.hf.model_class}`) of **{recipe.id}** — {recipe.description}. It was "
             f"converted from the original checkpoint with strict weight accounting and checked capture by capture "
             f"against the ORIGINAL implementation running in its own environment, by parity {__version__}.", ""]
    if report.verdict == "fail":
        lines += [f"> **Warning: parity FAILED.** The first divergence from the original is `{report.first_divergence}`"
                  f"; later failures may be consequences of it. This port was published with `--allow-fail`.", ""]
    lines += [f"## Parity: {verdict}", "",
              f"- verdict: **{verdict}** — {_passed(report.captures)}/{len(report.captures)} captures within "
              f"tolerance, "
              f"worst max-abs error {_num(worst)}",
              f"- first divergence: {f'`{report.first_divergence}`' if report.first_divergence else 'none'}"]
    if report.conversion:
        c = report.conversion
        lines.append(f"- weights: {c.source_keys} original tensors → {c.target_keys} port tensors, every key accounted "
                     f"for by a declared rule ({len(c.mappings)} mappings; [`{PROOF}/conversion.json`]"
                     f"({PROOF}/conversion.json))")
    if report.processor:
        p = report.processor
        lines.append(f"- preprocessing (`{p.processor}` vs the original pipeline, judged separately): "
                     f"{p.verdict.upper()}" + (f" — {p.note}" if p.note else ""))
    lines.append(f"- references: {manifest.producer} dump of {len(manifest.references)} tensors, compared on "
                 f"{report.device}")
    lines += ["", "### Worst error per stage", "",
              "| stage | captures | pass | worst max-abs | at | atol needed | verdict |",
              "|---|---|---|---|---|---|---|",
              *stage_rows(report.captures), "",
              f"Every capture with max abs / max rel / cosine / mismatch fraction and the smallest passing tolerance: "
              f"[`{PROOF}/report.md`]({PROOF}/report.md) (HTML with the error across depth: "
              f"[`{PROOF}/report.html`]({PROOF}/report.html); machine-readable: [`{PROOF}/report.json`]"
              f"({PROOF}/report.json)).", ""]
    lines += _tolerance_lines(report, manifest)
    checkpoint = manifest.checkpoint
    lines += ["## Provenance", "", "| | |", "|---|---|",
              f"| original checkpoint | {_checkpoint_source(manifest)} |",
              f"| checkpoint sha256 | `{checkpoint.sha256}` ({checkpoint.bytes} bytes, {checkpoint.container}, "
              f"{checkpoint.n_tensors} tensors) |",
              f"| original code | {manifest.environment.upstream or 'not recorded'} |",
              f"| origin environment | {_environment(manifest.environment)} |",
              f"| port environment | {_environment(report.port_environment)} |",
              f"| parity | {__version__} |",
              f"| recipe | `{recipe.id}`, sha256 `{report.recipe_hash}` (in [`{PROOF}/manifest.json`]"
              f"({PROOF}/manifest.json)) |",
              f"| license | {recipe.license or 'not declared by the recipe: check the original checkpoint’s terms'} |",
              ""]
    pinned = (report.port_environment.packages.get("transformers") if report.port_environment else None) or "X.Y.Z"
    lines += ["## Re-verify", "",
              "The references come from the original code; the port is loaded as published (no conversion):", "",
              "```bash", f"{_dump_command(manifest)}", reverify_command(manifest, repo_id),
              f"parity recheck {recipe.id} --port {repo_id} --transformers {pinned},OTHER   # other releases", "```",
              ""]
    return f"---\n{metadata}\n---\n\n" + "\n".join(lines)


def _tolerance_lines(report: ParityReport, manifest: DumpManifest) -> list[str]:
    policy = manifest.recipe.tolerance
    applied = sorted({(c.atol, c.rtol, c.tolerance_reason) for c in report.captures},
                     key=lambda t: (t[2] is not None, t[0]))
    lines = ["### Tolerances", "",
             f"Profile `{policy.profile}` on {report.device}; a capture passes when |port − original| ≤ atol + rtol · "
             f"|original| everywhere. Loosened only with a written, measured reason:", "",
             "| atol | rtol | captures | reason |", "|---|---|---|---|"]
    for atol, rtol, reason in applied:
        count = sum(1 for c in report.captures if (c.atol, c.rtol, c.tolerance_reason) == (atol, rtol, reason))
        lines.append(f"| {_num(atol)} | {_num(rtol)} | {count} | {_cell(reason or 'profile default')} |")
    return lines + [""]
