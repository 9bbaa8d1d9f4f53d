"""The house rules, checked: which side imports what, the family interface as Protocols, one step protocol."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from parity.contracts.errors import ParityError
from parity.contracts.family import OriginModule, PortModule, RecipesModule, missing_members, required_members
from parity.host.registry import check_family_modules, defined_names, families
from tests.conftest import ROOT, error_line, in_env

ORIGINAL_PACKAGES = ("segment_anything", "mmseg", "mmcv", "mmcls", "mmpretrain", "mmengine", "detectron2",
                     "mask2former", "clip", "models", "src")
PROBE = """
import importlib, json, sys
for name in {modules!r}:
    importlib.import_module(name)
{extra}
print(json.dumps(sorted(sys.modules)))
"""


def _loaded(python: str, modules: list[str], extra: str = "", env: str | None = None) -> set[str]:
    code = PROBE.format(modules=modules, extra=extra)
    if env is None:
        result = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-2000:]
        return set(json.loads(result.stdout))
    return set(json.loads(in_env(env, code)))


def _sides(loaded: set[str]) -> set[str]:
    return {name.split(".")[1] for name in loaded if name.startswith("parity.") and name.count(".") >= 1}


def _top(loaded: set[str]) -> set[str]:
    return {name.split(".")[0] for name in loaded}


def test_contracts_import_nothing_but_pydantic_and_numpy():
    modules = [f"parity.contracts.{p.stem}" for p in (ROOT / "parity" / "contracts").glob("*.py")
               if p.stem != "__init__"]
    loaded = _loaded(sys.executable, modules)
    assert _sides(loaded) <= {"contracts", "families"}, _sides(loaded)
    families_loaded = {n for n in loaded if n.startswith("parity.families.")}
    assert all(re.fullmatch(r"parity\.families\.\w+(\.spec)?", n) for n in families_loaded), families_loaded
    assert not _top(loaded) & {"torch", "transformers", "typer", "rich", "docker", *ORIGINAL_PACKAGES}


def test_host_never_imports_an_environment_side_or_torch():
    modules = ["parity.host.cli", "parity.host.pipeline", "parity.host.origins", "parity.host.render",
               "parity.host.backends.local", "parity.host.backends.docker", "parity.host.publish",
               "parity.host.progress"]
    loaded = _loaded(sys.executable, modules, extra="from parity.host.registry import all_recipes; all_recipes()")
    assert _sides(loaded) <= {"contracts", "host", "families"}, _sides(loaded)
    assert not {n for n in loaded if re.match(r"parity\.families\.\w+\.(origin|port)$", n)}
    assert not _top(loaded) & {"torch", "transformers", *ORIGINAL_PACKAGES}
    assert "huggingface_hub" not in _top(loaded), "the host imports huggingface_hub only when publishing"


@pytest.mark.slow
def test_origin_runtime_never_imports_the_port_side_the_host_or_transformers():
    modules = ["parity.origin.steps", "parity.origin.capture", "parity.origin.dump", "parity.origin.images",
               "parity.origin.redraw", "parity.origin.checkpoint"]
    modules += [f"parity.families.{name}.origin" for name in families()]
    loaded = _loaded("", modules, env="sam")
    assert _sides(loaded) <= {"contracts", "runtime", "origin", "families"}, _sides(loaded)
    assert not {n for n in loaded if re.match(r"parity\.families\.\w+\.port$", n)}
    assert "transformers" not in _top(loaded)


@pytest.mark.slow
def test_port_runtime_never_imports_the_origin_side_the_host_or_an_original_package():
    modules = ["parity.port.driver"] + [f"parity.families.{name}.port" for name in families()]
    loaded = _loaded("", modules, env="transformers")
    assert _sides(loaded) <= {"contracts", "runtime", "port", "families"}, _sides(loaded)
    assert not {n for n in loaded if re.match(r"parity\.families\.\w+\.origin$", n)}
    assert not _top(loaded) & set(ORIGINAL_PACKAGES)


def test_protocol_members_are_what_the_docs_promise():
    """docs/families.md has one table row per Protocol member (origin.py, port.py, recipes.py), and no other rows."""
    text = (ROOT / "docs" / "families.md").read_text()
    for heading, protocol in (("## origin.py", OriginModule), ("## port.py", PortModule),
                              ("## recipes.py", RecipesModule)):
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        documented = re.findall(r"^\| `(\w+)`", section, flags=re.M)
        assert documented == list(required_members(protocol)), heading


def test_every_family_satisfies_its_protocols_by_its_source():
    for name, family in families().items():
        folder = ROOT / "parity" / "families" / name
        assert missing_members(OriginModule, defined_names(folder / "origin.py")) == [], name
        assert missing_members(PortModule, defined_names(folder / "port.py")) == [], name
        assert missing_members(RecipesModule, defined_names(folder / "recipes.py")) == [], name
        reads_in_origin = "read_configuration" in defined_names(folder / "origin.py")
        assert reads_in_origin == (family.reads_configuration == "origin"), name


def test_a_family_reading_its_configuration_in_the_origin_must_define_the_reader(tmp_path):
    for name in ("origin", "port", "recipes"):
        (tmp_path / f"{name}.py").write_text((ROOT / "parity" / "families" / "sam" / f"{name}.py").read_text())
    origin = (tmp_path / "origin.py").read_text()
    (tmp_path / "origin.py").write_text(re.sub(r"\ndef read_configuration\(", "\ndef reader(", origin))
    with pytest.raises(ParityError, match=r"origin\.py lacks read_configuration \(its Family reads the configuration"):
        check_family_modules("demo", tmp_path, "origin")
    check_family_modules("demo", tmp_path, "host")


def test_a_missing_function_is_named_before_anything_runs(tmp_path):
    for name in ("origin", "port", "recipes"):
        source = (ROOT / "parity" / "families" / "sam" / f"{name}.py").read_text()
        (tmp_path / f"{name}.py").write_text(source)
    origin = (tmp_path / "origin.py").read_text()
    (tmp_path / "origin.py").write_text(re.sub(r"\ndef run_captures\(", "\ndef renamed_captures(", origin))
    with pytest.raises(ParityError, match=r"origin\.py lacks run_captures \(OriginModule\)"):
        check_family_modules("demo", tmp_path)


@pytest.mark.slow
def test_the_runtime_checks_the_imported_module_against_the_protocol():
    code = textwrap.dedent("""
        import sys, types
        from parity.contracts.errors import ParityError
        from parity.origin import steps
        from parity.host.registry import all_recipes
        fake = types.ModuleType("parity.families.sam.origin")
        fake.UPSTREAM, fake.PACKAGES = "x", ()
        fake.generate_checkpoint = fake.load_original = fake.fixture_state_dict = lambda *a: None
        sys.modules["parity.families.sam.origin"] = fake
        try:
            steps.origin_module(all_recipes()["sam-tiny-random"])
        except ParityError as exc:
            print(exc)
    """)
    assert in_env("sam", code).strip() == "parity/families/sam/origin.py lacks run_captures (OriginModule)"


def test_a_malformed_step_request_is_one_line_and_exit_2(tmp_path):
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"step": "dump", "recipe": {}}))
    result = subprocess.run([sys.executable, "-m", "parity.port", str(request)], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 2
    assert "invalid step request: field 'dump.recipe" in error_line(result)
    request.write_text(json.dumps({"step": "port", "dump": str(tmp_path), "out": str(tmp_path)}))
    result = subprocess.run([sys.executable, "-m", "parity.origin", str(request)], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 2 and "step 'port' does not run in parity.origin" in error_line(result)
