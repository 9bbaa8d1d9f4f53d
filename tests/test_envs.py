"""Local environments: pin hashing, the Docker-only refusal, failed builds leave nothing that looks usable."""

from __future__ import annotations

import pytest

from parity.contracts.errors import ParityError
from parity.host import envs


@pytest.fixture
def images(tmp_path, monkeypatch):
    root = tmp_path / "images"
    (root / "base").mkdir(parents=True)
    (root / "base" / "requirements.txt").write_text("# nothing: a stand-in torch layer\n")
    monkeypatch.setattr(envs, "IMAGES", root)
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    return root


def test_pin_hash_follows_the_pin_files(images):
    (images / "demo").mkdir()
    (images / "demo" / "requirements.txt").write_text("packaging==26.2\n")
    first = envs.pin_hash("demo")
    (images / "base" / "requirements.txt").write_text("# the layer changed\n")
    second = envs.pin_hash("demo")
    (images / "demo" / "requirements.txt").write_text("packaging==26.1\n")
    assert len({first, second, envs.pin_hash("demo")}) == 3
    assert envs.env_dir("demo").name == f"demo-{envs.pin_hash('demo')}"


def test_docker_only_origin_is_refused_in_one_line(images):
    (images / "upstream").mkdir()
    (images / "upstream" / "requirements.txt").write_text("")
    (images / "upstream" / "LOCAL_UNSUPPORTED").write_text("not on any package registry\n")
    with pytest.raises(ParityError, match="cannot run in a local venv here: not on any package registry; "
                                          "use --backend docker"):
        envs.ensure_env("upstream")


def test_unknown_environment(images):
    with pytest.raises(ParityError, match="no environment 'nowhere'"):
        envs.ensure_env("nowhere")


@pytest.mark.slow
def test_failed_build_names_its_log_and_leaves_nothing_usable(images):
    (images / "broken").mkdir()
    (images / "broken" / "requirements.txt").write_text("this-package-does-not-exist-anywhere==0.0.1\n")
    with pytest.raises(ParityError) as info:
        envs.ensure_env("broken")
    message = str(info.value)
    assert "installing environment broken failed" in message and "full log:" in message
    assert not envs.is_built("broken")
    assert not envs.env_dir("broken").exists()
    assert not any(p.name.endswith(".partial") for p in envs.env_dir("broken").parent.iterdir())
    assert envs.is_built("base")
