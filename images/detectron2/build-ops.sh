#!/bin/sh
# Builds detectron2 (pip, PEP 517, no build isolation: its setup.py imports torch) and Mask2Former's
# MultiScaleDeformableAttention op inside images/detectron2, then import-checks both and records what was built in
# /opt/parity-upstream.json (notes `ops.*`).
#   CUDA_OPS=1  CUDA kernels for TORCH_CUDA_ARCH_LIST (cubins + PTX of the last entry, e.g. "8.0;8.6;9.0+PTX") with
#               the PyPI CUDA toolkit of requirements-cuda.txt (CUDA_HOME = the venv's nvidia/cu13).
#   CUDA_OPS=0  CPU-only: detectron2's CPU ops; the deformable-attention module is built from upstream's own sources
#               without CUDA: its kernels then raise on every call and upstream's MSDeformAttn falls back to its
#               pure-PyTorch ms_deform_attn_core_pytorch (what a CPU dump runs anyway).
set -eu
: "${CUDA_OPS:?}" "${TORCH_CUDA_ARCH_LIST:?}"
record() { python /tmp/upstream.py note "$1" "$2"; }
OPS=/opt/Mask2Former/mask2former/modeling/pixel_decoder/ops

if [ "$CUDA_OPS" = 1 ]; then
  CUDA_HOME="$(python -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
  if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
    echo "build-ops: no nvcc at $CUDA_HOME/bin (requirements-cuda.txt not installed?)" >&2
    exit 1
  fi
  # torch links extensions with -lcudart; the runtime wheel ships only the versioned library
  [ -e "$CUDA_HOME/lib/libcudart.so" ] || ln -s libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"
  export CUDA_HOME FORCE_CUDA=1 PATH="$CUDA_HOME/bin:$PATH"
  nvcc --version | tail -n 2
  pip install --no-cache-dir --no-build-isolation --use-pep517 --no-deps /opt/detectron2
  pip install --no-cache-dir --no-build-isolation --use-pep517 --no-deps "$OPS"
  record ops.detectron2 "cuda $TORCH_CUDA_ARCH_LIST ($(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'))"
  record ops.MultiScaleDeformableAttention "cuda $TORCH_CUDA_ARCH_LIST"
elif [ "$CUDA_OPS" = 0 ]; then
  export FORCE_CUDA=0
  pip install --no-cache-dir --no-build-isolation --use-pep517 --no-deps /opt/detectron2
  # upstream's setup.py refuses to build without CUDA: the same sources, compiled as a CPU extension. Its CPU file
  # includes ATen/cuda/CUDAContext.h and uses nothing from it; that header needs the CUDA toolkit's headers, so the
  # CPU build puts an empty one first on the include path (no upstream file is changed).
  python - "$OPS/src" <<'PY'
import glob, os, shutil, sys, sysconfig, tempfile
from torch.utils.cpp_extension import load
src = sys.argv[1]
build, shim = tempfile.mkdtemp(), tempfile.mkdtemp()
os.makedirs(os.path.join(shim, "ATen", "cuda"))
open(os.path.join(shim, "ATen", "cuda", "CUDAContext.h"), "w").close()
load("MultiScaleDeformableAttention", [os.path.join(src, "vision.cpp")] + glob.glob(os.path.join(src, "cpu", "*.cpp")),
     extra_include_paths=[shim, src], build_directory=build, is_python_module=True, verbose=False)
(built,) = glob.glob(os.path.join(build, "MultiScaleDeformableAttention*.so"))
shutil.copy(built, os.path.join(sysconfig.get_paths()["platlib"], os.path.basename(built)))
shutil.rmtree(build)
shutil.rmtree(shim)
PY
  record ops.detectron2 "cpu"
  record ops.MultiScaleDeformableAttention "cpu-only (kernels raise; upstream falls back to ms_deform_attn_core_pytorch)"
else
  echo "build-ops: CUDA_OPS must be 1 or 0, got '$CUDA_OPS'" >&2
  exit 1
fi
# the op links against torch's libraries: import torch first (a bare `import MultiScaleDeformableAttention` fails
# with "libc10.so: cannot open shared object file")
python -c "import torch, MultiScaleDeformableAttention"
PYTHONPATH=/opt/Mask2Former python -c "import detectron2, detectron2._C, mask2former; print('detectron2', detectron2.__version__)"
rm -rf /opt/detectron2/build "$OPS/build"
