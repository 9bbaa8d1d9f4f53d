"""Full-size runs: tensors streamed to and from disk, one copy of the weights, each forward once, nothing initialised.

Memory is checked as structure that holds on any machine: which tensors are kept alive, and what is mapped from which
file (never a timing, never a measured noise level)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import in_env

pytestmark = pytest.mark.slow

MAPPED_FROM = """
def mapped_from(tensor):
    address = tensor.data_ptr()
    for line in open("/proc/self/maps"):
        fields = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= address < high:
            return fields[5].strip() if len(fields) == 6 else ""
    return None
"""

def test_tensor_files_round_trip_and_read_as_safetensors(tmp_path):
    """Every dtype a dump stores, 0-d, empty, non-contiguous and storage-sharing tensors: written tensor by tensor,
    read back equal by safetensors' own loader and by parity's mapped reader, hashed as the manifest hashes them."""
    code = f"""
import json, struct, torch
from pathlib import Path
from safetensors.torch import load_file
from parity.contracts.hashing import sha256_file
from parity.runtime.tensorfile import ITEMSIZE, TensorFile, save_tensors
from parity.runtime.tensors import tensor_sha256
g = torch.Generator().manual_seed(0)
base = torch.randn(6, 5, generator=g)
tensors = {{
    "f32": torch.randn(3, 4, generator=g), "f64": torch.randn(5, dtype=torch.float64, generator=g),
    "f16": torch.randn(7, generator=g).half(), "bf16": torch.randn(3, 3, generator=g).bfloat16(),
    "i64": torch.arange(9).reshape(3, 3), "i32": torch.arange(5, dtype=torch.int32), "u8": torch.arange(11,
    dtype=torch.uint8), "bool": torch.tensor([True, False, True]), "i8": torch.tensor([-3, 4], dtype=torch.int8),
    "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4), "transposed": base.t(), "alias": base[2:4],
}}
path = Path({str(tmp_path / "t.safetensors")!r})
sha256, size = save_tensors(path, tensors, {{"format": "pt"}})
assert (sha256, size) == (sha256_file(path), path.stat().st_size)
theirs = load_file(str(path))
ours = TensorFile(path)
for name, tensor in tensors.items():
    for other in (theirs[name], ours.tensor(name)):
        assert other.dtype == tensor.dtype and other.shape == tensor.shape and torch.equal(other, tensor), name
    assert ours.sha256(name) == tensor_sha256(tensor), name
(length,) = struct.unpack("<Q", path.read_bytes()[:8])
header = json.loads(path.read_bytes()[8:8 + length])
assert length % 8 == 0 and ours.metadata == {{"format": "pt"}}
assert all(v["data_offsets"][0] % ITEMSIZE[v["dtype"]] == 0 for k, v in header.items() if k != "__metadata__")
print("ok")
"""
    assert in_env("transformers", code).strip() == "ok"


def test_damaged_tensor_files_are_one_line_errors(tmp_path):
    code = f"""
import struct, torch
from pathlib import Path
from parity.contracts.errors import ParityError
from parity.runtime.tensorfile import TensorFile, save_tensors
path = Path({str(tmp_path / "t.safetensors")!r})
save_tensors(path, {{"a": torch.ones(64), "b": torch.zeros(8)}})
data = path.read_bytes()
(length,) = struct.unpack("<Q", data[:8])
cases = {{"truncated": data[:-16], "header": struct.pack("<Q", 1 << 40) + data[8:], "short": data[:5],
          "gap": data[:8] + data[8:8 + length].replace(b'"data_offsets":[0,', b'"data_offsets":[4,')
          + data[8 + length:]}}
for name, damaged in cases.items():
    path.write_bytes(damaged)
    try:
        TensorFile(path)
    except ParityError as exc:
        assert "truncated or damaged" in str(exc) and "\\n" not in str(exc), (name, exc)
    else:
        raise AssertionError(name)
print("ok")
"""
    assert in_env("transformers", code).strip() == "ok"


def test_capture_log_keeps_no_capture_in_memory(tmp_path):
    """A recorded tensor is not kept alive by the log (its bytes went to the spool), later in-place changes do not
    leak into the dump, and the log writes exactly what was recorded, in order, with the manifest's hashes."""
    code = f"""
import weakref, torch
from pathlib import Path
from safetensors.torch import load_file
from parity.origin.capture import CaptureLog
from parity.runtime.tensorfile import spool_in
from parity.runtime.tensors import tensor_sha256
with spool_in(Path({str(tmp_path)!r})):
    log = CaptureLog()
    for i in range(8):
        tensor = torch.full((2, 1024, 1024), float(i))
        alive = weakref.ref(tensor)
        log.add(f"c{{i}}", tensor, module="test")
        tensor.add_(1000)
        del tensor
        assert alive() is None
    small = torch.arange(6).reshape(2, 3)
    log.add("small", small)
    log.write(Path({str(tmp_path / "refs.safetensors")!r}))
written = load_file({str(tmp_path / "refs.safetensors")!r})
assert [e.name for e in log.entries] == [f"c{{i}}" for i in range(8)] + ["small"]
assert [e.execution_index for e in log.entries] == list(range(9))
assert all(written[f"c{{i}}"].eq(i).all() for i in range(8)) and torch.equal(written["small"], small)
assert all(e.sha256 == tensor_sha256(written[e.name]) for e in log.entries)
assert torch.equal(log.read("c7"), torch.full((2, 1024, 1024), 7.0))
print("ok")
"""
    assert in_env("sam", code).strip() == "ok"


def test_forward_hooks_spool_large_outputs_to_the_output_folder(tmp_path):
    """A large recorded output is not kept alive by the hooks: what they keep is a mapping of a spool in the spool
    folder, equal to it; small outputs are kept as they are."""
    code = MAPPED_FROM + f"""
import weakref, torch
from pathlib import Path
from parity.port.hooks import ForwardHooks
from parity.runtime.tensorfile import spool_in
model = torch.nn.Sequential(*[torch.nn.Identity() for _ in range(8)], torch.nn.Linear(2, 2))
with spool_in(Path({str(tmp_path)!r})):
    hooks = ForwardHooks(model, [str(i) for i in range(8)])
    with torch.no_grad():
        for i in range(8):
            tensor = torch.full((2, 1024, 1024), float(i))
            alive = weakref.ref(tensor)
            model[i](tensor)
            del tensor
            assert alive() is None
    small = ForwardHooks(model, ["8"])
    output = model(torch.ones(1, 2))
big = hooks.outputs["5"][0]
assert torch.equal(big, torch.full((2, 1024, 1024), 5.0))
assert mapped_from(big).startswith({str(tmp_path)!r}) and mapped_from(big).endswith("(deleted)")
assert small.outputs["8"][0] is output
print("ok")
"""
    assert in_env("transformers", code).strip() == "ok"


def test_the_sam_image_encoder_runs_once_and_both_prompt_paths_equal_sam_forward(tmp_path):
    """The origin encodes the image once; the first case goes through Sam.forward, the others through
    SamPredictor.predict_torch, and every case's outputs are bit-identical to calling Sam.forward for that case alone
    (as the golden fixture was made)."""
    code = f"""
import numpy as np, torch
from pathlib import Path
from safetensors.torch import load_file
from parity.families.sam import origin
from parity.host.registry import all_recipes
from parity.origin.images import synthetic_image
from parity.origin.redraw import redraw
from parity.runtime.setup import set_determinism
recipe = all_recipes()["sam-tiny-random"]
set_determinism("cpu", 1)
sam = origin.build_original(recipe.original_config)
redraw(sam, 11, origin.redraw_rule)
spec = recipe.inputs.images[0]
image = synthetic_image(spec.seed, spec.height, spec.width)
calls = []
handle = sam.image_encoder.register_forward_hook(lambda *_: calls.append(1))
inputs, refs = origin.run_captures(recipe, sam, {{"image": image}}, "cpu")
handle.remove()
refs.write(Path({str(tmp_path / "refs.safetensors")!r}))
inputs.write(Path({str(tmp_path / "inputs.safetensors")!r}))
ours, fed = load_file({str(tmp_path / "refs.safetensors")!r}), load_file({str(tmp_path / "inputs.safetensors")!r})
modules = {{e.name: e.module for e in refs.entries}}
cases = list(recipe.spec.prompts)
assert modules[f"{{cases[0]}}.return.low_res_logits"].startswith("Sam.forward")
assert all(modules[f"{{c}}.return.low_res_logits"].startswith("SamPredictor.predict_torch") for c in cases[1:])
for case in cases:
    entry = {{"image": fed["image"], "original_size": image.shape[:2]}}
    for key, name in (("point_coords", "point_coords"), ("boxes", "boxes"), ("mask_inputs", "mask_inputs")):
        if f"{{case}}.{{name}}" in fed:
            entry[key] = fed[f"{{case}}.{{name}}"]
    if "point_coords" in entry:
        entry["point_labels"] = fed[f"{{case}}.point_labels"].int()
    alone = sam([entry], multimask_output=True)[0]
    assert torch.equal(alone["low_res_logits"], ours[f"{{case}}.return.low_res_logits"]), case
    assert torch.equal(alone["iou_predictions"], ours[f"{{case}}.return.iou_predictions"]), case
print(len(calls))
"""
    assert in_env("sam", code).strip() == "1"


def test_the_port_is_built_without_random_draws_from_the_mapped_dump(tiny_run):
    """Building the port consumes no random number, renamed weights are mappings of the dump's state dict file, and
    the saved model equals the converted weights."""
    code = MAPPED_FROM + f"""
import torch
from safetensors.torch import load_file
from parity.port.driver import port_module
from parity.port.dump import Dump
from parity.port.model import build_converted_model
dump = Dump({str(tiny_run / "dump")!r})
family = port_module(dump.recipe)
state = torch.get_rng_state()
model, record = build_converted_model(family, dump.recipe, dump.state_dict())
assert record.ok and torch.equal(state, torch.get_rng_state())
weight = model.vision_encoder.layers[1].mlp.lin1.weight
assert mapped_from(weight).endswith("state_dict.safetensors"), mapped_from(weight)
saved = load_file({str(tiny_run / "hf" / "model.safetensors")!r})
params = dict(model.state_dict())
assert all(torch.equal(saved[k], params[k]) for k in saved) and len(saved) >= len(params) - 1
print("ok")
"""
    assert in_env("transformers", code).strip() == "ok"


def test_reading_a_dump_maps_references_only_while_they_are_used(tiny_run):
    """The port opens a dump by hashing every reference from disk; afterwards no reference is resident until asked
    for, and each one asked for is a mapping of reference.safetensors."""
    code = MAPPED_FROM + f"""
from parity.port.dump import Dump
dump = Dump({str(tiny_run / "dump")!r})
names = list(dump.references)
assert names == [e.name for e in dump.manifest.references]
tensor = dump.references[names[3]]
assert mapped_from(tensor).endswith("reference.safetensors")
print(len(names))
"""
    manifest = json.loads((tiny_run / "dump" / "manifest.json").read_text())
    assert int(in_env("transformers", code).strip()) == len(manifest["references"])


RESIDENT = """
def resident(name):
    total, current = 0, None
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            current = fields[5] if len(fields) >= 6 else ""
        elif fields[0] == "Rss:" and current.endswith(name):
            total += int(fields[1]) * 1024
    return total
"""


def test_weights_mapped_from_a_file_are_paged_per_module_and_compute_the_same(tmp_path):
    """A model whose weights are mappings of a file holds none of their pages after a forward with paging attached
    (and all of them after one without), computes bit-identical outputs, and still reads the file's bytes afterwards;
    weights in anonymous memory or in a shared mapping are never registered, so they are never given back (which would
    zero or write them)."""
    code = MAPPED_FROM + RESIDENT + f"""
import torch
from pathlib import Path
from parity.runtime.paging import PagedWeights
from parity.runtime.tensorfile import TensorFile, save_tensors
torch.manual_seed(0)
def net():
    return torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.LayerNorm(1024),
                               torch.nn.Linear(1024, 512))
anon = net().eval()
path = Path({str(tmp_path / "w.safetensors")!r})
save_tensors(path, anon.state_dict())
with torch.device("meta"):
    mapped = net().eval()
file = TensorFile(path)
mapped.load_state_dict({{k: file.tensor(k) for k in file.slots}}, assign=True)
assert all(mapped_from(p).endswith("w.safetensors") for p in mapped.parameters())
weight_bytes = sum(p.nbytes for p in mapped.parameters())
x = torch.randn(4, 512)
with torch.no_grad():
    expected = anon(x)
    unpaged = mapped(x)
assert resident("w.safetensors") >= weight_bytes
paged = PagedWeights(mapped).attach(mapped)
assert len(paged.ranges) == 6 and paged.nbytes >= weight_bytes
assert resident("w.safetensors") == 0
seen = []
mapped[0].register_forward_hook(lambda *_: seen.append(resident("w.safetensors")), prepend=True)
with torch.no_grad():
    out = mapped(x)
assert resident("w.safetensors") == 0
assert mapped[0].weight.nbytes <= seen[0] < weight_bytes
assert torch.equal(out, expected) and torch.equal(unpaged, expected)
assert all(torch.equal(a, b) for a, b in zip(mapped.state_dict().values(), anon.state_dict().values()))
paged.remove()
with torch.no_grad():
    mapped(x)
assert resident("w.safetensors") >= weight_bytes
before = [t.clone() for t in anon.state_dict().values()]
assert not PagedWeights(anon).ranges
PagedWeights(anon).attach(anon)
with torch.no_grad():
    anon(x)
assert all(torch.equal(a, b) for a, b in zip(before, anon.state_dict().values()))
shared_path = Path({str(tmp_path / "shared.bin")!r})
shared_path.write_bytes(anon[0].weight.detach().numpy().tobytes())
shared = torch.nn.Linear(512, 1024, bias=False)
shared.weight = torch.nn.Parameter(torch.from_file(str(shared_path), shared=True, size=512 * 1024).view(1024, 512))
assert mapped_from(shared.weight).endswith("shared.bin") and not PagedWeights(shared).ranges
print("ok")
"""
    assert in_env("transformers", code).strip() == "ok"


def test_both_sides_page_full_size_weights_from_their_files(tiny_run, tmp_path):
    """The SAM origin assigns the memory-mapped checkpoint's tensors (nothing copied into random ones) and the port's
    converted weights are mappings of the dump, so each side can page every weight it loaded."""
    origin_code = MAPPED_FROM + f"""
import torch
from pathlib import Path
from parity.families.sam import origin
from parity.host.registry import all_recipes
from parity.runtime.paging import PagedWeights
recipe = all_recipes()["sam-tiny-random"]
checkpoint = Path({str(tmp_path / "sam.pth")!r})
origin.generate_checkpoint(recipe, checkpoint)
model, state = origin.load_original(recipe, checkpoint)
loaded = torch.load(checkpoint, weights_only=True)
assert all(torch.equal(state[k], v) for k, v in loaded.items()) and set(state) >= set(loaded)
params = list(model.parameters())
assert all(mapped_from(p) == str(checkpoint) for p in params)
paged = PagedWeights(model)
assert {{p.untyped_storage().data_ptr() for p in params}} <= set(paged.ranges)
print("ok")
"""
    port_code = f"""
from parity.port.driver import port_module
from parity.port.dump import Dump
from parity.port.model import build_converted_model
from parity.runtime.paging import PagedWeights
dump = Dump({str(tiny_run / "dump")!r})
model, record = build_converted_model(port_module(dump.recipe), dump.recipe, dump.state_dict())
renamed = [n for n, p in model.named_parameters() if p.untyped_storage().data_ptr() in PagedWeights(model).ranges]
print(len(renamed), len(list(model.parameters())))
"""
    assert in_env("sam", origin_code).strip() == "ok"
    paged, total = map(int, in_env("transformers", port_code).split())
    assert paged >= 0.9 * total


def test_one_unmapped_read_hashes_a_tensor_file_and_counts_nan_inf_per_tensor(tmp_path):
    """The port's state-dict check reads the file once, in blocks that split tensors (forced small here), never
    mapping it: the file's sha256, and NaN/Inf counted per tensor across block boundaries, as a whole-tensor count
    gives; a file shorter than its header says is an error, not a partial count."""
    code = MAPPED_FROM + f"""
import torch
from pathlib import Path
from parity.contracts.errors import ParityError
from parity.contracts.hashing import sha256_file
from parity.runtime import tensorfile
from parity.runtime.tensorfile import TensorFile, save_tensors
from parity.runtime.tensors import NonfiniteTally
tensorfile.SCAN_BLOCK = 64
g = torch.Generator().manual_seed(0)
a = torch.randn(100, generator=g); a[15] = a[16] = float("nan"); a[80] = float("inf")
b = torch.randn(7, 9, generator=g).double(); b[6, 8] = float("-inf")
c = torch.randn(33, generator=g).bfloat16(); c[0] = float("nan")
tensors = {{"a": a, "b": b, "c": c, "finite": torch.randn(50, generator=g), "ids": torch.arange(40)}}
path = Path({str(tmp_path / "s.safetensors")!r})
save_tensors(path, tensors)
tally, seen = NonfiniteTally(), []
def each(name, block):
    seen.append(name)
    assert mapped_from(block) != str(path)
    tally.add(name, block)
assert TensorFile(path).scan(each) == sha256_file(path)
assert seen.count("a") > 1
whole = NonfiniteTally()
for name, tensor in tensors.items():
    whole.add(name, tensor)
assert tally.found == whole.found == {{"a": (3, {{"nan", "inf"}}), "b": (1, {{"-inf"}}), "c": (1, {{"nan"}})}}
big = NonfiniteTally()
big.add("huge", torch.full((4,), 3e38))
assert big.found == {{}}
file = TensorFile(path)
with open(path, "r+b") as fh:
    fh.truncate(path.stat().st_size - 8)
try:
    file.scan()
    raise SystemExit("a truncated file was scanned")
except ParityError as exc:
    assert "ends early" in str(exc)
print("ok")
"""
    assert in_env("transformers", code).strip() == "ok"
