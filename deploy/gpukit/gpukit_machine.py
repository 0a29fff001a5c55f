"""What the device kit's driver finds on the machine it runs on.

The C library's version against the kit's need, the GPUs and the driver's
CUDA version (nvidia-smi), and the folders of the CUDA libraries the kit takes
from the machine (cuBLAS, dlopen()ed; NCCL, linked): they go on the children's
LD_LIBRARY_PATH. Nothing here fails: what is missing becomes a warning in the
report, and the checks that need it fail with their own message.

Part of the kit's driver (driver.py); only the Python standard library.
"""

import glob
import os
import re
import shutil
import site
import subprocess

# The CUDA libraries that come from the machine (kit_libs.py CUDA, less
# libcuda, which the NVIDIA driver installs where the loader finds it).
MACHINE_CUDA_LIBS = ("libcublas.so.13", "libcublasLt.so.13", "libnccl.so.2")


def glibc_version():
    v = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else ""
    m = re.search(r"(\d+)\.(\d+)", v or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def version_tuple(text):
    m = re.search(r"(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_lib(name, dirs):
    """The folder holding `name`: ldconfig's cache, then `dirs`; None if nowhere."""
    try:
        cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True,
                               timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        cache = ""
    m = re.search(r"\s%s \(.*x86-64.*\) => (\S+)" % re.escape(name), cache)
    if m:
        return os.path.dirname(m.group(1))
    for d in dirs:
        if os.path.exists(os.path.join(d, name)):
            return d
    return None


def cuda_lib_dirs():
    """Where a CUDA install or NVIDIA's Python wheels keep cuBLAS and NCCL."""
    dirs = []
    for root in [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]:
        if root:
            dirs += [os.path.join(root, "lib64"), os.path.join(root, "targets/x86_64-linux/lib")]
    dirs += sorted(glob.glob("/usr/local/cuda-*/lib64"))
    # The wheels (nvidia-cublas, nvidia-nccl-cu13: PyTorch's) put them in
    # site-packages/nvidia/<name>/lib (nvidia/cu13/lib for CUDA 13's).
    packages = list(getattr(site, "getsitepackages", lambda: [])())
    packages += glob.glob("/usr/local/lib/python3*/dist-packages")
    packages += glob.glob("/opt/*/.venv/lib/python3*/site-packages")
    packages += glob.glob("/opt/*/lib/python3*/site-packages")
    packages += glob.glob("/root/.local/lib/python3*/site-packages")
    for p in packages:
        dirs += sorted(glob.glob(os.path.join(p, "nvidia", "*", "lib")))
    dirs += ["/usr/lib/x86_64-linux-gnu", "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib"]
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def compat_dirs():
    """CUDA's forward-compatibility libcuda (data-centre GPUs on an older driver)."""
    roots = ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"))
    return [os.path.join(r, "compat") for r in roots
            if os.path.exists(os.path.join(r, "compat", "libcuda.so.1"))]


def nvidia_smi(runner, timeout):
    """([{name, driver, memory, compute_capability}], driver's CUDA version, why none)."""
    if shutil.which("nvidia-smi") is None:
        return [], None, "nvidia-smi not found"
    rc, out, err, _ = runner.run(
        "nvidia-smi", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                       "compute_cap", "--format=csv,noheader"], timeout)
    if rc != 0 or not out.strip():
        return [], None, (err or out).strip() or "nvidia-smi failed"
    gpus = []
    for line in out.strip().splitlines():
        f = [x.strip() for x in line.split(",")]
        gpus.append({"name": f[0], "driver": f[1] if len(f) > 1 else "",
                     "memory": f[2] if len(f) > 2 else "",
                     "compute_capability": f[3] if len(f) > 3 else ""})
    # The header of plain nvidia-smi says which CUDA version the driver runs.
    rc, out, _, _ = runner.run("nvidia-smi-header", ["nvidia-smi"], timeout)
    m = re.search(r"CUDA Version:\s*([\d.]+)", out if rc == 0 else "")
    return gpus, (m.group(1) if m else None), ""


def child_env(kit, manifest, driver_cuda, hide_cuda):
    """(environment for every child, {library: folder or None}, [warnings])."""
    warnings = []
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["UCX_MODULE_DIR"] = os.path.join(kit, "lib", "ucx")
    env.setdefault("UCX_NET_DEVICES", "lo")
    dirs = cuda_lib_dirs()
    found = {lib: find_lib(lib, dirs) for lib in MACHINE_CUDA_LIBS}
    for lib, d in found.items():
        if d is None:
            warnings.append("%s not found (ldconfig, %s): the checks that load it will fail"
                            % (lib, ", ".join(dirs[:4]) or "no CUDA folder"))
    ld = [d for d in dict.fromkeys(found.values()) if d]
    need = version_tuple(manifest.get("cuda", ""))
    have = version_tuple(driver_cuda or "")
    if need and have and have < need:
        compat = compat_dirs()
        if compat:
            ld.insert(0, compat[0])
            warnings.append("the driver runs CUDA %s, the kit's runtime is %d.%d: using the "
                            "forward-compatibility libcuda in %s" % (driver_cuda, need[0],
                                                                      need[1], compat[0]))
        else:
            warnings.append("the driver runs CUDA %s, older than the kit's runtime %d.%d, and "
                            "no /usr/local/cuda*/compat: every GPU check will fail with 'CUDA "
                            "driver version is insufficient'" % (driver_cuda, need[0], need[1]))
    if ld:
        env["LD_LIBRARY_PATH"] = ":".join(ld)
    if hide_cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    need_glibc = version_tuple(manifest.get("glibc_required", ""))
    have_glibc = glibc_version()
    if need_glibc and have_glibc and have_glibc < need_glibc:
        warnings.append("this machine's glibc %d.%d is older than the kit needs (%d.%d): its "
                        "binaries will not start" % (have_glibc + need_glibc))
    return env, found, warnings
