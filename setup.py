"""Build fastact's extension: a CUDAExtension when torch has CUDA and a CUDA toolkit is found, else a
CppExtension.

Environment:
  FASTACT_BUILD=cpu|cuda   force the CPU-only or the CUDA build (default: auto)
  CUDA_HOME                the CUDA toolkit; if unset it is found from nvcc (also through a wrapper script)
  TORCH_CUDA_ARCH_LIST     GPU architectures (default "8.0;9.0+PTX")
  MAX_JOBS                 parallel compile jobs (ninja)
  FASTACT_SANITIZE         e.g. "address,undefined": a CPU build instrumented with those sanitizers, for testing
                           (tests/run_sanitized.sh builds one and runs the tests with it)
"""
import glob
import os
import platform
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from setuptools import find_packages, setup


def find_cuda_home():
    """The CUDA toolkit root, or None. Unlike torch's guess, follows an nvcc that is a wrapper script."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:  # nvcc reports its own install root in a dry run: "#$ TOP=/usr/local/cuda-13.0/bin/.."
            out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=60)
            top = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.M)
            if top and os.path.isfile(os.path.join(top.group(1), "bin", "nvcc")):
                return os.path.realpath(top.group(1))
        except (OSError, subprocess.SubprocessError):
            pass
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    if os.path.isfile("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


build_kind = os.environ.get("FASTACT_BUILD", "auto").lower()
if build_kind not in ("auto", "cpu", "cuda"):
    raise SystemExit(f"FASTACT_BUILD must be auto, cpu or cuda, got {build_kind!r}")
cuda_home = find_cuda_home() if build_kind != "cpu" else None
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import



def import_installed_torch():
    """The torch fastact will run with. The extension links against libtorch's C++ ABI, so it must be built
    against exactly that torch. pip's default build isolation (a plain `pip install .`) runs this file in a
    fresh environment without torch, and a torch fetched there could be another version; so where torch is
    not importable, look in the environment being installed into (its site-packages, then the user's)."""
    try:
        import torch  # noqa: PLC0415
        return torch
    except ImportError:
        pass
    import site  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import sysconfig  # noqa: PLC0415
    paths = sysconfig.get_paths()
    candidates = [paths["purelib"], paths["platlib"], site.getusersitepackages()]
    for path in dict.fromkeys(candidates):
        if os.path.isdir(os.path.join(path, "torch")) and path not in sys.path:
            sys.path.append(path)
    try:
        import torch  # noqa: PLC0415
        return torch
    except ImportError as error:
        raise SystemExit(
            "fastact is compiled against the torch it runs with, and found none: install torch first "
            f"(pip install torch), then fastact (pip install .). Import error: {error}") from error


# The oldest torch the test suite has passed on (2.9.1, 2026-12-06, but for one export test; also 2.11, 2.13, 2.14,
# 2.15). Checked here as well as required below: pip builds against the torch installed before it resolves the
# requirement, so a build against an older torch would link against the wrong libtorch once pip had upgraded it.
MIN_TORCH = (2, 9)

torch = import_installed_torch()
if tuple(int(v) for v in re.match(r"(\d+)\.(\d+)", torch.__version__).groups()) < MIN_TORCH:
    raise SystemExit(f"fastact needs torch >= {'.'.join(map(str, MIN_TORCH))}, found {torch.__version__} "
                     f"({torch.__file__}): upgrade torch first (pip install -U torch), then install fastact")
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

with_cuda = build_kind == "cuda" or (build_kind == "auto" and torch.version.cuda is not None and cuda_home)
if build_kind == "cuda" and not (torch.version.cuda and cuda_home):
    raise SystemExit("FASTACT_BUILD=cuda needs a CUDA build of torch and a CUDA toolkit (set CUDA_HOME)")
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

here = os.path.dirname(os.path.abspath(__file__))
# The CPU kernels are compiled once per instruction set, with that set's flags (as ATen does), and the
# dispatcher in csrc/cpu/dispatch.cpp picks one at run time. Never -march=native: the wheel must run on any
# x86-64 CPU.
CPU_CAPABILITY_FLAGS = {"csrc/cpu/kernels_default.cpp": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"]}
AVX512_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2",
                "-Wno-maybe-uninitialized"]  # GCC 12 warns inside its own AVX-512 intrinsic headers
if platform.machine().lower() in ("x86_64", "amd64"):
    CPU_CAPABILITY_FLAGS.update({
        "csrc/cpu/kernels_avx2.cpp": ["-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2",
                                      "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
        "csrc/cpu/kernels_avx512.cpp": AVX512_FLAGS + ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
        # ATen's AVX-512 vectors (CPU_CAPABILITY_AVX512), with the AVX512-BF16 instructions enabled
        "csrc/cpu/kernels_avx512_bf16.cpp": AVX512_FLAGS + ["-mavx512bf16", "-DCPU_CAPABILITY=AVX512_BF16",
                                                            "-DCPU_CAPABILITY_AVX512"],
    })


class BuildExtensionPerCapability(BuildExtension):
    """BuildExtension, plus the CPU kernel files compiled once each with their instruction set's flags.

    Each of those files is one large translation unit, so they compile side by side in threads (each in a
    build folder of its own, where its ninja file lives) and beside the extension's other files; the link
    waits for them. Compiled one after another they made most of the build's time.
    """

    def build_extension(self, ext):
        # at most MAX_JOBS at once where it is set: a sanitizer build of one of these files holds ~7 GiB
        max_jobs = int(os.environ.get("MAX_JOBS") or len(CPU_CAPABILITY_FLAGS))
        pool = ThreadPoolExecutor(max_workers=max(1, min(max_jobs, len(CPU_CAPABILITY_FLAGS))))
        jobs = []
        for source, flags in CPU_CAPABILITY_FLAGS.items():
            args = dict(ext.extra_compile_args)  # by now holds torch's own flags (ABI, C++ standard)
            args["cxx"] = list(args.get("cxx", [])) + flags
            build_dir = os.path.join(self.build_temp, os.path.splitext(os.path.basename(source))[0])
            jobs.append(pool.submit(self.compiler.compile, [source], output_dir=build_dir,
                                    macros=ext.define_macros, include_dirs=ext.include_dirs,
                                    extra_postargs=args, depends=ext.depends))
        link = self.compiler.link_shared_object

        def link_with_capabilities(objects, *args, **kwargs):
            return link(list(objects) + [obj for job in jobs for obj in job.result()], *args, **kwargs)

        self.compiler.link_shared_object = link_with_capabilities
        try:
            super().build_extension(ext)
        finally:
            self.compiler.link_shared_object = link
            pool.shutdown(wait=True)


def wheel_only_cuda_headers(toolkit_home):
    """A folder of links to the headers that torch's CUDA headers include (cuBLAS, cuSPARSE, ...) and that the
    toolkit lacks, taken from the nvidia-* wheels installed beside torch; [] if none is missing. Only those:
    the wheels also carry the CUDA runtime's own headers, for the CUDA version torch was built with, and these
    must not shadow the toolkit's (nvcc 13.0 refuses CUDA 13.2's headers, which torch 2.15's wheels carry)."""
    nvidia = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
    toolkit = os.path.join(toolkit_home, "include")
    links = os.path.join(here, "build", "cuda_headers_from_wheels")
    shutil.rmtree(links, ignore_errors=True)
    # nvidia/cu13/include (CUDA 13 wheels), nvidia/<library>/include (CUDA 12 wheels)
    for wheel_include in sorted(glob.glob(os.path.join(nvidia, "*", "include"))):
        for name in sorted(os.listdir(wheel_include)):
            if not (os.path.exists(os.path.join(toolkit, name)) or os.path.lexists(os.path.join(links, name))):
                os.makedirs(links, exist_ok=True)
                os.symlink(os.path.join(wheel_include, name), os.path.join(links, name))
    return [links] if os.path.isdir(links) else []


sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
sources = [s for s in sources if not os.path.basename(s).startswith("kernels_")]
cxx_flags = ["-O3", "-fopenmp"]
nvcc_flags = ["-O3", "--expt-relaxed-constexpr"]
define_macros = []
include_dirs = [os.path.join(here, "csrc")]
extension = CppExtension
if with_cuda:
    extension = CUDAExtension
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    define_macros.append(("FASTACT_WITH_CUDA", None))
    include_dirs += wheel_only_cuda_headers(cuda_home)
if platform.system() == "Darwin":
    cxx_flags.remove("-fopenmp")
sanitize = os.environ.get("FASTACT_SANITIZE", "")
if sanitize:
    if with_cuda:
        raise SystemExit("FASTACT_SANITIZE instruments the CPU code only: build it with FASTACT_BUILD=cpu")
    # -O1 and frame pointers keep the reports' stacks readable; any UBSan finding aborts instead of printing
    sanitizer_flags = [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
    cxx_flags = [f for f in cxx_flags if f != "-O3"] + ["-O1"] + sanitizer_flags

setup(
    name="fastact",
    version="0.1.0",
    description="Fused C++/CUDA Swish, Mish, leaky-ReLU and PReLU kernels for PyTorch",
    packages=find_packages(include=["fastact", "fastact.*"]),
    ext_modules=[
        extension(
            "fastact._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=(["-fopenmp"] if "-fopenmp" in cxx_flags else [])
            + ([f"-fsanitize={sanitize}"] if sanitize else []),
        )
    ],
    cmdclass={"build_ext": BuildExtensionPerCapability},
    python_requires=">=3.10",
    install_requires=[f"torch>={'.'.join(map(str, MIN_TORCH))}", "numpy", "matplotlib", "tqdm", "rich"],
    entry_points={"console_scripts": ["fastact-bench = fastact.cli:main"]},
    zip_safe=False,
)
