"""cuda_library: compiles .cu files with the local nvcc into a static library.

A genrule runs nvcc (sm_89 for the RTX 4090, sm_90 for H100) and the archive is
wrapped in a cc_library. Targets are incompatible, and so skipped by
`bazel test //...`, when nvcc is absent or --config=nocuda is given.
"""

load("@local_cuda//:defs.bzl", "CUDA_FOUND", "CUDA_PATH")

CUDA_GENCODE = [
    "-gencode=arch=compute_89,code=sm_89",
    "-gencode=arch=compute_90,code=sm_90",
]

def cuda_compatible_with():
    """target_compatible_with for anything that needs the CUDA toolkit."""
    if not CUDA_FOUND:
        return ["@local_cuda//:never"]
    return select({
        "//:cuda_off": ["@local_cuda//:never"],
        "//conditions:default": [],
    })

def if_cuda(items):
    """`items` when CUDA targets are built (nvcc found, not --config=nocuda), else []."""
    if not CUDA_FOUND:
        return []
    return select({
        "//:cuda_off": [],
        "//conditions:default": items,
    })

def cuda_library(name, srcs, hdrs = [], deps = [], copts = [], **kwargs):
    archive = "lib%s_cu.a" % name
    hdr_locations = " ".join(["-I$$(dirname $(location %s))" % h for h in hdrs])
    native.genrule(
        name = name + "_nvcc",
        srcs = srcs + hdrs,
        outs = [archive],
        # nvcc is called by its real path: it finds its headers relative to it.
        cmd = (CUDA_PATH + "/bin/nvcc -lib -O3 -std=c++17 -Xcompiler -fPIC " +
               "-ccbin /usr/bin/g++ -I. " + " ".join(CUDA_GENCODE + copts) + " " +
               " ".join(["$(location %s)" % s for s in srcs]) + " -o $@"),
        target_compatible_with = cuda_compatible_with(),
    )
    native.cc_library(
        name = name,
        srcs = [archive],
        hdrs = hdrs,
        deps = deps + ["@local_cuda//:cudart"],
        linkstatic = True,
        alwayslink = True,
        target_compatible_with = cuda_compatible_with(),
        **kwargs
    )
