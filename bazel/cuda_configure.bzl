"""Repository rule that finds the local CUDA toolkit (nvcc, cudart, NCCL).

When $CUDA_PATH/bin/nvcc exists (default /usr/local/cuda) and the repo env
MOEFLOW_CUDA is not "0", @local_cuda exposes cuda_headers, cudart (shared, or static with
--define=cudart=static), cublas and nccl from that toolkit and `@local_cuda//:nvcc`. Otherwise every target there is
incompatible (target_compatible_with a constraint nobody satisfies), so CUDA
targets are skipped by `bazel test //...` instead of failing.
"""

_BUILD_PRELUDE = """
package(default_visibility = ["//visibility:public"])

constraint_setting(name = "cuda_present")

constraint_value(name = "never", constraint_setting = ":cuda_present")

constraint_value(name = "unused", constraint_setting = ":cuda_present")
"""

_BUILD_FOUND = _BUILD_PRELUDE + """
# nvcc found at {path}
exports_files(["nvcc"])

cc_library(
    name = "cuda_headers",
    hdrs = glob(["include/*.h", "include/*.hpp", "include/crt/**", "include/cccl/nv/**"]),
    includes = ["include", "include/cccl"],
)

# The CUDA runtime: shared by default; static under --define=cudart=static
# (--config=gpukit: binaries that run on a machine whose CUDA runtime may
# differ, found only through the driver).
cc_library(
    name = "cudart",
    linkopts = select({
        "@//:cudart_static": ["-L{path}/lib64", "-l:libcudart_static.a", "-ldl", "-lrt", "-lpthread"],
        "//conditions:default": ["-L{path}/lib64", "-Wl,-rpath,{path}/lib64", "-lcudart"],
    }),
    deps = [":cuda_headers"],
)

cc_library(
    name = "cublas",
    linkopts = ["-L{path}/lib64", "-Wl,-rpath,{path}/lib64", "-lcublas", "-lcublasLt"],
    deps = [":cudart"],
)

cc_library(
    name = "nccl",
    linkopts = ["-L{path}/lib64", "-Wl,-rpath,{path}/lib64", "-lnccl"],
    deps = [":cudart"],
)

# Marker used by //bazel:cuda.bzl: empty when CUDA is available.
CUDA_FOUND = True
"""

_BUILD_MISSING = _BUILD_PRELUDE + """
# nvcc not found ({reason}): every CUDA target is incompatible and skipped.
exports_files(["nvcc"])

[cc_library(name = n, target_compatible_with = [":never"]) for n in ["cuda_headers", "cudart", "cublas", "nccl"]]
"""

def _cuda_configure_impl(ctx):
    cuda_path = ctx.os.environ.get("CUDA_PATH", "/usr/local/cuda")
    nvcc = ctx.path(cuda_path + "/bin/nvcc")
    enabled = ctx.os.environ.get("MOEFLOW_CUDA", "1") != "0"
    found = enabled and nvcc.exists
    if found:
        ctx.symlink(cuda_path + "/include", "include")
        ctx.symlink(nvcc, "nvcc")
        ctx.file("BUILD.bazel", _BUILD_FOUND.replace("{path}", cuda_path).replace("CUDA_FOUND = True", ""))
        ctx.file("defs.bzl", "CUDA_FOUND = True\nCUDA_PATH = %r\n" % cuda_path)
    else:
        reason = "MOEFLOW_CUDA=0" if not enabled else ("no " + str(nvcc))
        ctx.file("nvcc", "#!/bin/sh\necho 'nvcc not available' >&2\nexit 1\n", executable = True)
        ctx.file("BUILD.bazel", _BUILD_MISSING.replace("{reason}", reason))
        ctx.file("defs.bzl", "CUDA_FOUND = False\nCUDA_PATH = ''\n")

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = ["CUDA_PATH", "MOEFLOW_CUDA"],
    local = True,
)
