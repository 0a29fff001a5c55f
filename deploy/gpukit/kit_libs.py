#!/usr/bin/env python3
"""The device kit's libraries: what deploy/gpu-kit.sh carries and how it checks them.

    kit_libs.py collect KIT      copy every shared library KIT/bin/* needs that is
                                 neither the C library nor the device's CUDA into
                                 KIT/lib (the binaries' DT_RPATH, $ORIGIN/../lib)
    kit_libs.py manifest KIT     write KIT/manifest.json: commit, CUDA toolkit, the
                                 glibc / libstdc++ symbol versions the kit needs,
                                 every file with its size, the carried libraries
                                 with their Debian packages
    kit_libs.py check KIT MIB    fail unless the kit is under MIB MiB and every ELF
                                 file's libraries resolve (ldd, LD_LIBRARY_PATH
                                 cleared) to KIT/lib, the C library or CUDA's own
    kit_libs.py hide KIT         print the system files that hold copies of the
                                 carried libraries (for the dry run to hide),
                                 except those python3 itself loads

Only the Python standard library, ldd and readelf.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

# The C library's own objects: always the machine's.
GLIBC = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1",
         "libresolv.so.2", "libutil.so.1", "ld-linux-x86-64.so.2", "linux-vdso.so.1"}
# The device's CUDA: the driver (libcuda), and NCCL and cuBLAS from its toolkit
# or wheels (the driver script puts their folder on LD_LIBRARY_PATH).
CUDA = {"libcuda.so.1", "libnccl.so.2", "libcublas.so.13", "libcublasLt.so.13"}


def elf_files(kit):
    out = []
    for sub in ("bin", "lib", "lib/ucx"):
        d = os.path.join(kit, sub)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        out.append(p)
    return out


def ldd(path):
    """[(soname, resolved path or None)] with LD_LIBRARY_PATH cleared."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    r = subprocess.run(["ldd", path], capture_output=True, text=True, env=env)
    libs = []
    for line in r.stdout.splitlines():
        line = line.strip()
        m = re.match(r"(\S+) => not found", line)
        if m:
            libs.append((m.group(1), None))
            continue
        m = re.match(r"(\S+) => (\S+) \(0x", line)
        if m:
            libs.append((m.group(1), m.group(2)))
            continue
        m = re.match(r"(/\S+) \(0x", line)
        if m:
            libs.append((os.path.basename(m.group(1)), m.group(1)))
    return libs


def collect(kit):
    lib = os.path.join(kit, "lib")
    os.makedirs(lib, exist_ok=True)
    carried = {}
    pending = elf_files(kit)
    seen = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for soname, resolved in ldd(path):
            if soname in GLIBC or soname in CUDA or soname in carried:
                continue
            if resolved is None:
                sys.exit("kit_libs: %s needs %s, which this machine lacks" % (path, soname))
            dest = os.path.join(lib, soname)
            if not os.path.exists(dest):
                shutil.copy2(os.path.realpath(resolved), dest)
                os.chmod(dest, 0o755)
            carried[soname] = os.path.realpath(resolved)
            pending.append(dest)
    with open(os.path.join(lib, "SOURCES.json"), "w") as f:
        json.dump(carried, f, indent=1, sort_keys=True)
    print("kit_libs: carried %d libraries into %s" % (len(carried), lib))


def needed(path):
    r = subprocess.run(["readelf", "-d", path], capture_output=True, text=True)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(\S+)\]", r.stdout)


def symbol_versions(path, prefix):
    r = subprocess.run(["readelf", "-V", "--wide", path], capture_output=True, text=True)
    versions = set()
    in_needs = False
    for line in r.stdout.splitlines():
        if "Version needs section" in line:
            in_needs = True
        elif "Version definition section" in line or "Version symbols section" in line:
            in_needs = False
        if in_needs:
            for m in re.finditer(r"Name: %s_([\d.]+)" % prefix, line):
                versions.add(tuple(int(x) for x in m.group(1).split(".")))
    return versions


def debian_package(path):
    r = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
    if r.returncode != 0:
        return ""
    pkg = r.stdout.split(":")[0].strip()
    v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return "%s %s" % (pkg, v.stdout.strip())


def manifest(kit):
    files = {}
    glibc, glibcxx = set(), set()
    for root, _, names in os.walk(kit):
        for name in names:
            p = os.path.join(root, name)
            files[os.path.relpath(p, kit)] = os.path.getsize(p)
    newest = {}  # GLIBC version -> the files whose newest need it is
    for p in elf_files(kit):
        mine = symbol_versions(p, "GLIBC")
        glibc |= mine
        if mine:
            newest.setdefault(max(mine), []).append(os.path.relpath(p, kit))
        if not os.path.basename(p).startswith("libstdc++"):
            glibcxx |= symbol_versions(p, "GLIBCXX")
    with open(os.path.join(kit, "lib", "SOURCES.json")) as f:
        sources = json.load(f)
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    nvcc = os.path.join(os.environ.get("CUDA_PATH", "/usr/local/cuda"), "bin", "nvcc")
    cuda = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+)", cuda)
    top = lambda vs: ".".join(map(str, max(vs))) if vs else "none"
    doc = {
        "commit": commit + ("+local changes" if dirty else ""),
        "built": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cuda": "CUDA %s (runtime linked statically; needs a driver of CUDA %s or newer)" % (
            m.group(1) if m else "?", m.group(1) if m else "?"),
        "gpu_architectures": "sm_89, sm_90 (machine code; no PTX)",
        "glibc_required": top(glibc),
        # The three newest versions asked for, and by which files (the carried
        # libstdc++ of GCC 12, built on Debian 12's glibc, sets the bar).
        "glibc_required_by": {".".join(map(str, v)): sorted(newest[v])
                              for v in sorted(newest, reverse=True)[:3]},
        "glibcxx_used": top(glibcxx) + " (libstdc++ carried in lib/)",
        "bytes": sum(files.values()),
        "files": files,
        "carried_libraries": {k: {"from": v, "package": debian_package(v)}
                              for k, v in sorted(sources.items())},
        "from_the_machine": sorted(GLIBC - {"linux-vdso.so.1"}) + sorted(CUDA),
    }
    with open(os.path.join(kit, "manifest.json"), "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    print("kit_libs: manifest: %d files, %.1f MiB, glibc >= %s, %s" % (
        len(files), doc["bytes"] / 2**20, doc["glibc_required"], doc["cuda"]))


def check(kit, max_mib):
    problems = []
    total = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(kit) for n in ns)
    if total > max_mib * 2**20:
        problems.append("the kit is %.1f MiB, over %d MiB" % (total / 2**20, max_mib))
    kit_lib = os.path.realpath(os.path.join(kit, "lib"))
    counts = {"kit": 0, "glibc": 0, "cuda": 0}
    carried = set(os.listdir(kit_lib))
    for path in elf_files(kit):
        if os.path.dirname(os.path.realpath(path)) != os.path.realpath(os.path.join(kit, "bin")):
            # A carried library: loaded into a kit binary, whose DT_RPATH finds
            # its needs; they must be carried too.
            for soname in needed(path):
                if soname not in GLIBC and soname not in CUDA and soname not in carried:
                    problems.append("%s needs %s, which the kit does not carry" % (
                        os.path.relpath(path, kit), soname))
            continue
        for soname, resolved in ldd(path):
            if soname in GLIBC:
                counts["glibc"] += 1
            elif soname in CUDA:
                counts["cuda"] += 1  # found here or not: the device's own
            elif resolved and os.path.realpath(resolved).startswith(kit_lib + os.sep):
                counts["kit"] += 1
            else:
                problems.append("%s: %s resolves to %s" % (os.path.relpath(path, kit), soname,
                                                           resolved or "nothing"))
        if "RUNPATH" in subprocess.run(["readelf", "-d", path], capture_output=True,
                                       text=True).stdout:
            problems.append("%s has a DT_RUNPATH (its libraries' own needs would not "
                            "search the kit)" % os.path.relpath(path, kit))
    print("kit_libs: %.1f MiB; %d ELF files; libraries resolved: %d to the kit, %d to the C "
          "library, %d to the device's CUDA" % (total / 2**20, len(elf_files(kit)), counts["kit"],
                                                counts["glibc"], counts["cuda"]))
    for p in problems:
        print("kit_libs: FAIL: " + p)
    return 1 if problems else 0


def hide(kit):
    with open(os.path.join(kit, "lib", "SOURCES.json")) as f:
        sources = json.load(f)
    # python3 (the driver) and its extension modules (zlib for the log archive).
    import sysconfig
    python = [os.path.realpath(sys.executable)]
    dynload = os.path.join(sysconfig.get_path("platstdlib"), "lib-dynload")
    if os.path.isdir(dynload):
        python += [os.path.join(dynload, n) for n in os.listdir(dynload) if n.endswith(".so")]
    python_libs = {os.path.realpath(p) for exe in python for _, p in ldd(exe) if p}
    for real in sorted(set(sources.values())):
        if real not in python_libs:
            print(real)


def main(argv):
    if len(argv) >= 2 and argv[0] == "collect":
        collect(argv[1])
    elif len(argv) >= 2 and argv[0] == "manifest":
        manifest(argv[1])
    elif len(argv) >= 3 and argv[0] == "check":
        return check(argv[1], int(argv[2]))
    elif len(argv) >= 2 and argv[0] == "hide":
        hide(argv[1])
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
