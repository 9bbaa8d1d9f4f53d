"""Progress without a terminal: one plain line per step with the elapsed time; environment builds say what they
install and roughly how long it takes."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from parity.contracts.errors import ParityError
from parity.host import envs
from parity.host.progress import PLAIN_LINE, StepProgress
from tests.conftest import parity, stderr_without_progress


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=80), buffer


def test_without_a_terminal_each_new_message_is_one_plain_line_with_the_elapsed_time():
    console, buffer = _console(terminal=False)
    with StepProgress(console, "sam-tiny-random") as progress:
        progress.update("original forward in the sam origin")
        progress.update("original forward in the sam origin")
        progress.update("converting [strict] the state dict")
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2
    assert all(PLAIN_LINE.match(line) for line in lines)
    assert lines[0].endswith("] sam-tiny-random: original forward in the sam origin")
    assert lines[1].endswith("] sam-tiny-random: converting [strict] the state dict")


def test_without_a_terminal_nothing_is_printed_before_the_first_message_unless_announced():
    console, buffer = _console(terminal=False)
    with StepProgress(console, "x"):
        pass
    assert buffer.getvalue() == ""
    with StepProgress(console, "x", announce="generating a checkpoint with the original code"):
        pass
    assert buffer.getvalue().splitlines()[0].endswith("] x: generating a checkpoint with the original code")


def test_on_a_terminal_the_status_line_is_redrawn_not_appended():
    console, buffer = _console(terminal=True)
    with StepProgress(console, "x") as progress:
        for i in range(3):
            progress.update(f"step {i}")
    assert not any(PLAIN_LINE.match(line) for line in buffer.getvalue().splitlines())


@pytest.fixture
def images(tmp_path, monkeypatch):
    root = tmp_path / "images"
    for name, pins in (("base", "torch==2.14.1\ntorchvision==0.29.1 # the layer\n"),
                       ("demo", "# port\ndemo==1.2.0\npackaging==26.2\nsix==1.0\nsafetensors==0.8.0\nregex==1\n")):
        (root / name).mkdir(parents=True)
        (root / name / "requirements.txt").write_text(pins)
    monkeypatch.setattr(envs, "IMAGES", root)
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    return root


def test_a_build_announces_its_pins_and_an_estimate_then_the_measured_time(images):
    layer = envs.build_announcement("base")
    assert "torch layer" in layer and "torch==2.14.1, torchvision==0.29.1" in layer and "~2.5 min" in layer
    demo = envs.build_announcement("demo")
    assert "demo==1.2.0, packaging==26.2, six==1.0, safetensors==0.8.0 and 1 more pins" in demo
    assert "usually ~1 min" in demo and "torch==" not in demo
    envs._remember_build_time("demo@1.3.0", 95.0)
    assert "the last build took 1.6 min" in envs.build_announcement("demo")


def test_a_derived_environment_replaces_one_pin_and_has_its_own_hash(images):
    pins = envs.pin_files("demo@1.3.0")
    derived = pins[1].read_text().splitlines()
    original = (images / "demo" / "requirements.txt").read_text().splitlines()
    assert [d for d, o in zip(derived, original) if d != o] == ["demo==1.3.0"]
    assert pins[0] == images / "base" / "requirements.txt"
    assert envs.pin_hash("demo@1.3.0") not in (envs.pin_hash("demo"), envs.pin_hash("demo@1.4.0"))
    assert envs.env_dir("demo@1.3.0").name == f"demo-1.3.0-{envs.pin_hash('demo@1.3.0')}"
    assert envs.pinned_version("demo") == "1.2.0"


@pytest.mark.parametrize(("name", "message"), [
    ("demo@1.x", "'1.x' is not a release version of demo"),
    ("demo@>=1.0", "is not a release version of demo"),
    ("base@2.0.0", "the torch layer cannot be re-pinned"),
    ("nowhere@1.0.0", "no environment 'nowhere'"),
])
def test_a_bad_derived_environment_is_a_one_line_error(images, name, message):
    with pytest.raises(ParityError, match=message):
        envs.pin_files(name)


def test_a_derived_environment_needs_a_pin_to_replace(images):
    (images / "loose").mkdir()
    (images / "loose" / "requirements.txt").write_text("loose>=1\n")
    with pytest.raises(ParityError, match="pins no loose==VERSION"):
        envs.pin_files("loose@1.0.0")


@pytest.mark.slow
def test_a_build_without_a_terminal_prints_plain_lines(images, tmp_path):
    """A real (tiny) build through the CLI's progress: the announcement, pip's install line, the measured time."""
    console, buffer = _console(terminal=False)
    (images / "base" / "requirements.txt").write_text("# nothing: a stand-in torch layer\n")
    (images / "demo" / "requirements.txt").write_text("packaging\n")
    with StepProgress(console) as progress:
        envs.ensure_env("demo", progress.update)
    lines = buffer.getvalue().splitlines()
    assert all(PLAIN_LINE.match(line) for line in lines), lines
    text = "\n".join(lines)
    assert "building the torch layer every environment shares" in text
    assert "building environment demo on the torch layer: packaging (usually ~1 min" in text
    assert "installing environment demo: installing packaging" in text
    assert "environment demo built in" in text
    assert "the last build took" in envs.build_announcement("demo")


@pytest.mark.slow
def test_cli_progress_is_plain_lines_when_stderr_is_a_pipe(tmp_path):
    result = parity("generate", "sam-tiny-random", "--out", str(tmp_path / "c.pth"), check=0)
    progress = [ln for ln in result.stderr.splitlines() if PLAIN_LINE.match(ln)]
    assert progress and progress[0].endswith("] sam-tiny-random: generating a checkpoint with the original code")
    assert stderr_without_progress(result) == []
    assert result.stdout.strip() == str(tmp_path / "c.pth")
