#!/usr/bin/env python3
"""The GPU device kit's driver: validates moeflow's CUDA backend on one machine.

Run from a kit that deploy/gpu-kit.sh built (this file is its driver.py):

    python3 KIT/driver.py --out DIR [--budget-s 480] [--dry-run | --rehearsal] [--skip STEP,...]

Steps, each bounded by its own timeout and all by --budget-s:
  kernels  every CUDA kernel test binary (GoogleTest) against its CPU
           reference; one verdict per kernel (KERNELS below)
  e2e      `moeflow launch` of a topology with `backend: cuda` and one expert
           worker on this machine's CPUs, against the same topology with
           `backend: cpu`: greedy text of 32 tokens equal, logits of a
           64-token sequence within the tolerance (E2E_TOLERANCE)
  timing   cuda_kernel_bench (MLA decode at 1K/8K/32K context, int4/int8 GEMV
           GB/s against the card's bandwidth) and the decode step of a
           DeepSeek-V3-shaped few-layer model made here by `moeflow mkmodel`
Writes DIR/gpu-kit-report.json, DIR/gpu-kit-report.md and DIR/gpu-kit-logs.tar.gz
(every step's output) and prints one verdict line per kernel.

--dry-run (CI, no GPU): CUDA is hidden from every child (CUDA_VISIBLE_DEVICES
empty), so every GPU check must report "skipped: no device"; the CPU sides run
for real: the tests' CPU references, the e2e harness on the CPU backend
(launch vs the single-process engine, bit-identical), the refusal of the CUDA
gpu worker at Configure, the bench's argument handling, the reports. Exit 0
when every row is as it must be (device run: every check passed; dry run:
every GPU check skipped for want of a device and every CPU check passed).

--rehearsal (no GPU, by hand: it makes the 2 GiB v3-shaped model, or takes
--v3-model): the device run's own e2e comparison and decode step, with
`backend: cpu` standing in for `backend: cuda`, so that the driver's device
path has run before a device session spends its minutes on it.

Only the Python standard library; nothing is installed or fetched.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

sys.dont_write_bytecode = True  # nothing written into the kit
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpukit_launch import (E2E_NEW_TOKENS, E2E_TOLERANCE, Budget, Runner, compare_logits,  # noqa: E402
                           kill_group, last_lines, run_deployment, single_process_reference)
from gpukit_machine import child_env, glibc_version, nvidia_smi  # noqa: E402
from gpukit_report import markdown, overall  # noqa: E402

KIT = os.path.dirname(os.path.abspath(__file__))

# (kernel, test binary, regex over "Suite.Test/param" names). Every GPU test
# of a binary should be claimed by one row; the rest land in its "host
# checks" row.
KERNELS = [
    ("dequantize Q8_0", "dequant_test", r"MatchesCpuReferenceBitForBit/q8_0$"),
    ("dequantize Q4_K", "dequant_test", r"MatchesCpuReferenceBitForBit/q4_K$"),
    ("dequantize Q6_K", "dequant_test", r"MatchesCpuReferenceBitForBit/q6_K$"),
    ("RMSNorm", "layer_ops_test", r"\.RmsNormMatchesReference$"),
    ("YaRN RoPE", "layer_ops_test", r"\.YarnRopeMatchesReference$"),
    ("SiLU-mul", "layer_ops_test", r"\.SiluMulMatchesReference$"),
    ("residual add, f32->bf16", "layer_ops_test", r"\.ResidualAddAndBf16MatchReference$"),
    ("router top-k softmax", "layer_ops_test", r"\.RouterTopKSoftmaxMatchesReference$"),
    ("router top-k sigmoid+bias+groups", "layer_ops_test",
     r"\.RouterTopKSigmoidBiasGroupsMatchesReference$"),
    ("MLA cache write", "mla_attention_test", r"\.CacheWriteStoresBf16RowsAtTheirSlots/"),
    ("MLA decode split-K", "mla_attention_test", r"\.DecodeSplitKMatchesReference"),
    ("MLA chunked prefill, paged cache", "mla_attention_test",
     r"\.ChunkedPrefillOverThePagedCacheMatchesReferenceCausally/"),
    ("int8 GEMV (Q8_0)", "weight_only_gemm_test", r"\.MatchesReference/q8_0_tokens[1-8]$"),
    ("int8 GEMM (Q8_0)", "weight_only_gemm_test", r"\.MatchesReference/q8_0_tokens\d\d+$"),
    ("int4 GEMV (Q4_K)", "weight_only_gemm_test", r"\.MatchesReference/q4_K_tokens[1-8]$"),
    ("int4 GEMM (Q4_K)", "weight_only_gemm_test", r"\.MatchesReference/q4_K_tokens\d\d+$"),
    ("int8 GEMV/GEMM (Q6_K requantized)", "weight_only_gemm_test", r"\.MatchesReference/q6_K_"),
    ("head-batched GEMM (MLA absorption)", "weight_only_gemm_test",
     r"\.HeadBatchedAbsorptionMatchesReference$"),
    ("cuBLAS BF16 GEMM", "cublas_gemm_test", r"\.MatchesDoubleReferenceAndAccumulatesWithBeta$"),
    ("cuBLAS F32 GEMM (router)", "cublas_gemm_test", r"\.F32GemmMatchesDoubleReference$"),
    ("CUDA graphs replay", "cuda_graph_test", r"\.CapturesOncePerBatchSizeAndReplays"),
    ("NCCL all-reduce", "nccl_all_reduce_test", r"\.SumsAcrossAllDevices$"),
    ("CUDA backend vs f32 reference", "cuda_backend_test", r"CudaBackendDeviceTest\.LogitsMatch"),
]
# How a host-only test skips on a machine with a device (the tests' own words).
DEVICE_PRESENT_SKIP = "a CUDA device is present"
TEST_BINARIES = list(dict.fromkeys(b for _, b, _ in KERNELS))
BINARY_TIMEOUT_S = {"cuda_backend_test": 150}
# What cuda_backend_test reads (tests/gpu_worker/cuda_backend_test.cc).
BACKEND_FIXTURES = ["tiny-v2/tiny-v2.f32.gguf", "tiny-v2/tiny-v2.q8_0.gguf",
                    "tiny-v3/tiny-v3.f32.gguf", "tiny-v3/tiny-v3.q4_k_m.gguf"]

V3_LAYERS = 3  # DeepSeek-V3 keeps its first 3 layers dense: the whole step on the GPU

# --- step 1: kernel tests ----------------------------------------------------

def parse_gtest(json_path, stdout):
    """{full test name: (result, message)} from --gtest_output=json and stdout."""
    tests = {}
    try:
        with open(json_path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    # A skip's reason: the line after gtest's "FILE:LINE: Skipped" in its output.
    skip_reason, lines = {}, []
    for line in stdout.splitlines():
        m = re.match(r"\[  SKIPPED \] (\S+)", line)
        if line.startswith("[ RUN"):
            lines = []
        elif m and m.group(1) not in skip_reason:
            after = [lines[i + 1] for i in range(len(lines) - 1) if lines[i].endswith(": Skipped")]
            skip_reason[m.group(1)] = after[0].strip() if after else ""
        else:
            lines.append(line)
    for suite in doc.get("testsuites", []):
        for t in suite.get("testsuite", []):
            name = "%s.%s" % (suite["name"], t["name"])
            failures = t.get("failures") or []
            if failures:
                msg = failures[0].get("failure", "").strip().splitlines()
                tests[name] = ("FAIL", " / ".join(msg[:3]))
            elif t.get("result") == "SKIPPED":
                tests[name] = ("SKIP", skip_reason.get(name, ""))
            elif t.get("status") == "NOTRUN":
                tests[name] = ("NOTRUN", "")
            else:
                tests[name] = ("PASS", t.get("time", ""))
    return tests


def row_verdict(results):
    """Verdict of a kernel row from its tests' (result, message)."""
    if not results:
        return "MISSING", "no test of this name in the binary"
    fails = [m for r, m in results if r == "FAIL"]
    if fails:
        return "FAIL", fails[0]
    skips = [m for r, m in results if r == "SKIP"]
    if len(skips) == len(results):
        return "SKIP", skips[0]
    if skips:
        return "FAIL", "some cases skipped: " + skips[0]
    return "PASS", "%d case(s)" % len(results)


def host_checks_verdict(tests, claimed, rc):
    """Verdict of a binary's tests that no kernel row claims (argument checks and such)."""
    # A host check that only runs without a device (e.g. "Configure refuses
    # without a device") skips on one, saying so: that skip is its pass.
    rest = [("PASS", "") if r[0] == "SKIP" and r[1].startswith(DEVICE_PRESENT_SKIP) else r
            for n, r in tests.items() if n not in claimed]
    verdict, detail = row_verdict(rest) if rest else ("PASS", "none")
    # A non-zero exit with every test passed or skipped: the binary itself broke
    # (a failing kernel test exits 1 too, and is that kernel's row).
    if rc not in (0, None) and verdict == "PASS" and all(r[0] != "FAIL" for r in tests.values()):
        verdict, detail = "FAIL", "exit %s after its tests" % rc
    return verdict, detail


def data_root():
    """(folder holding tests/data/llamacpp, fixtures cuda_backend_test reads that it lacks).

    The kit's data/ if it has them all, else the current folder or a folder
    the kit sits in (a repository checkout: the device tool sends it and runs
    in its root), else the kit's data/."""
    def missing(root):
        return [f for f in BACKEND_FIXTURES
                if not os.path.exists(os.path.join(root, "tests/data/llamacpp", f))]
    candidates = [os.path.join(KIT, "data"), os.getcwd()]
    d = os.path.dirname(KIT)
    while d != os.path.dirname(d):
        candidates.append(d)
        d = os.path.dirname(d)
    for root in candidates:
        if not missing(root):
            return root, []
    return candidates[0], missing(candidates[0])


def gtest_param(fixture):
    return re.sub(r"[^0-9A-Za-z]", "_", fixture.split("/")[-1])


def step_kernels(runner, budget, work):
    rows, extra = [], []
    bindir = os.path.join(KIT, "bin")
    data, lacking = data_root()
    for binary in TEST_BINARIES:
        mine = [(k, rx) for k, b, rx in KERNELS if b == binary]
        json_path = os.path.join(work, binary + ".json")
        if os.path.exists(json_path):
            os.remove(json_path)
        cmd = [os.path.join(bindir, binary), "--gtest_output=json:" + json_path]
        left_out = ""
        if binary == "cuda_backend_test" and lacking:
            cmd.append("--gtest_filter=-" + ":".join("*/" + gtest_param(f) for f in lacking))
            left_out = "; left out (fixture not in the kit nor a checkout): " + ", ".join(lacking)
        rc, out, err, secs = runner.run(binary, cmd, budget.timeout(
            BINARY_TIMEOUT_S.get(binary, 90)), cwd=data)
        tests = parse_gtest(json_path, out)
        if tests is None:
            why = ("timed out" if rc is None else "exit %s, no report" % rc) + (
                ": " + (err.strip().splitlines() or [""])[-1] if err.strip() else "")
            for k, _ in mine:
                rows.append({"kernel": k, "binary": binary, "verdict": "FAIL", "detail": why})
            continue
        claimed = set()
        for k, rx in mine:
            matched = [(n, r) for n, r in tests.items() if re.search(rx, n)]
            claimed.update(n for n, _ in matched)
            verdict, detail = row_verdict([r for _, r in matched])
            detail += left_out if binary == "cuda_backend_test" else ""
            rows.append({"kernel": k, "binary": binary, "verdict": verdict, "detail": detail,
                         "tests": sorted(n for n, _ in matched), "seconds": round(secs, 1)})
        verdict, detail = host_checks_verdict(tests, claimed, rc)
        extra.append({"kernel": "host checks of " + binary, "binary": binary,
                      "verdict": verdict, "detail": detail,
                      "tests": sorted(n for n in tests if n not in claimed)})
    return rows, extra


# --- step 2 and 3: launches ------------------------------------------------
def e2e_verdict(ref, got, exact):
    if "error" in ref:
        return "FAIL", "reference run: " + ref["error"], {}
    if "error" in got:
        return "FAIL", got["error"], {}
    cmp = compare_logits(ref["logits"], got["logits"])
    if "error" in cmp:
        return "FAIL", cmp["error"], cmp
    text_equal = ref["text"] == got["text"]
    cmp["text_equal"] = text_equal
    tokens = [(d.get("generate") or {}).get("completion_tokens") for d in (ref, got)]
    cmp["generated_tokens"] = tokens
    if tokens[0] != tokens[1] or tokens[0] is None:
        return "FAIL", "generated tokens: %s vs %s (want %d each)" % (
            tokens[0], tokens[1], E2E_NEW_TOKENS), cmp
    if tokens[0] != E2E_NEW_TOKENS:
        # An end-of-sequence token before 32 is equal on both sides but
        # compares less text than the check promises.
        return "FAIL", "only %d of %d tokens generated (EOS)" % (tokens[0], E2E_NEW_TOKENS), cmp
    if not text_equal:
        n = next((i for i, (a, b) in enumerate(zip(ref["text"], got["text"])) if a != b),
                 min(len(ref["text"]), len(got["text"])))
        cmp["text_diverges_at_char"] = n
    rel = cmp["max_abs_diff"] / cmp["max_abs_logit"] if cmp["max_abs_logit"] > 0 else 0
    cmp["max_abs_diff_of_max_logit"] = rel
    detail = "max |dlogit| %.4g (%.2f%% of max |logit|), top-1 %d/%d, %d-token text %s" % (
        cmp["max_abs_diff"], 100 * rel, cmp["top1_equal"], cmp["clear_top1_positions"],
        tokens[0],
        "equal" if text_equal else "differs at char %d" % cmp["text_diverges_at_char"])
    if exact:
        ok = cmp["bit_identical"] and text_equal
    else:
        ok = (rel <= E2E_TOLERANCE["max_abs_diff_of_max_logit"] and text_equal
              and cmp["top1_equal"] == cmp["clear_top1_positions"])
    return ("PASS" if ok else "FAIL"), detail, cmp


def step_e2e(runner, budget, work, mode):
    """Device run: the CUDA gpu worker against the CPU one. Dry run: the harness on the CPU
    backend against one process (bit-identical), and the CUDA gpu worker's refusal.
    Rehearsal: the device run's comparison with backend: cpu in place of cuda."""
    rows = []
    for label, model in e2e_models(runner, budget, work):
        name = re.sub(r"\W", "_", label)
        if not os.path.exists(model):
            rows.append({"check": "e2e: " + label, "verdict": "FAIL", "detail": model})
            continue
        cpu = run_deployment(runner, budget, work, name + "-cpu", "cpu", model)
        if mode == "dry":
            ref = single_process_reference(runner, budget, work, name + "-single", model)
            verdict, detail, cmp = e2e_verdict(ref, cpu, exact=True)
            rows.append({"check": "e2e harness, CPU backend vs one process: " + label,
                         "verdict": verdict, "detail": detail, "comparison": cmp})
            cuda = run_deployment(runner, budget, work, name + "-cuda", "cuda", model,
                                  ready_s=60)
            err = cuda.get("error", "")
            if "no usable CUDA device" in err:
                rows.append({"check": "e2e CUDA gpu worker vs CPU: " + label, "verdict": "SKIP",
                             "detail": "no device (gpu worker refused at Configure: %s)" %
                                       err[err.find("backend cuda"):][:160]})
            else:
                rows.append({"check": "e2e CUDA gpu worker vs CPU: " + label, "verdict": "FAIL",
                             "detail": "without a device the CUDA gpu worker must refuse at "
                                       "Configure; got: " + (err or "it served")[:200]})
            continue
        backend = "cuda" if mode == "device" else "cpu"
        got = run_deployment(runner, budget, work, name + "-" + backend + "-under-test",
                             backend, model)
        verdict, detail, cmp = e2e_verdict(cpu, got, exact=False)
        check = ("e2e CUDA gpu worker vs CPU: " if mode == "device"
                 else "e2e rehearsal (backend: cpu for cuda) vs CPU: ") + label
        rows.append({"check": check, "verdict": verdict, "detail": detail, "comparison": cmp,
                     "vram_used_mib": got.get("vram_used_mib"),
                     "under_test_generate": got.get("generate"), "cpu_generate": cpu.get("generate"),
                     "under_test_stderr_tail": got.get("launch_stderr_tail")})
    return rows


def e2e_models(runner, budget, work):
    """(label, path): the kit's random model, an F16 one made here (the BF16
    cuBLAS path), the llama.cpp tiny-v2 Q8_0 fixture (softmax router, no q_lora)."""
    models = [("random tiny-v3 Q4_K_M",
               os.path.join(KIT, "data", "models", "random-tiny-v3.q4_k_m.gguf"))]
    f16 = os.path.join(work, "random-tiny-v3.f16.gguf")
    rc, _, err, _ = runner.run("mkmodel-f16", [
        os.path.join(KIT, "bin", "moeflow"), "mkmodel", "--preset", "tiny-v3", "--type", "f16",
        "--seed", "17", "--threads", "2", "--out", f16, "--force"], budget.timeout(60))
    models.append(("random tiny-v3 F16", f16 if rc == 0 else "mkmodel failed: " + err[-200:]))
    root, _ = data_root()
    fixture = os.path.join(root, "tests/data/llamacpp/tiny-v2/tiny-v2.q8_0.gguf")
    if os.path.exists(fixture):
        models.append(("llama.cpp tiny-v2 Q8_0", fixture))
    return models


def start_v3_model(runner, work):
    path = os.path.join(work, "v3-%dlayers.q4_k_m.gguf" % V3_LAYERS)
    threads = max(1, (os.cpu_count() or 2) - 2)
    proc, errf, _, _ = runner.start("mkmodel-v3", [
        os.path.join(KIT, "bin", "moeflow"), "mkmodel", "--preset", "v3", "--layers",
        str(V3_LAYERS), "--type", "q4_k_m", "--threads", str(threads), "--out", path, "--force"])
    return proc, errf, path


def step_timing(runner, budget, work, mode, v3):
    """cuda_kernel_bench's tables, its argument check, and the v3-shaped decode step."""
    rows, bench = [], None
    rc, out, err, _ = runner.run("cuda_kernel_bench", [os.path.join(KIT, "bin", "cuda_kernel_bench"),
                                                       "--json"], budget.timeout(150))
    try:
        bench = json.loads(out.strip().splitlines()[-1]) if rc == 0 else None
    except (ValueError, IndexError):
        bench = None
    if bench is None:
        rows.append({"check": "kernel timings", "verdict": "FAIL",
                     "detail": "cuda_kernel_bench: rc %s %s" % (rc, last_lines(err, 2))})
    elif "skipped" in bench:
        rows.append({"check": "kernel timings", "verdict": "SKIP", "detail": bench["skipped"]})
    else:
        rows.append({"check": "kernel timings", "verdict": "PASS", "detail": bench["device"]["name"]})
    # Its argument handling (the dry run's check of the CPU side).
    rc2, _, err2, _ = runner.run("cuda_kernel_bench-bad-flag", [os.path.join(
        KIT, "bin", "cuda_kernel_bench"), "--heads", "0"], budget.timeout(20))
    if rc2 != 2 or "--heads 0" not in err2:
        rows.append({"check": "cuda_kernel_bench argument checks", "verdict": "FAIL",
                     "detail": "rc %s: %s" % (rc2, last_lines(err2, 1))})
    check = "decode step, v3-shaped %d-layer model" % V3_LAYERS
    if mode == "dry":
        rows.append({"check": check, "verdict": "SKIP",
                     "detail": "no device (the model is not made in a dry run)"})
        return rows, bench, None
    if mode == "rehearsal":
        check = "decode step (rehearsal, backend: cpu), v3-shaped %d-layer model" % V3_LAYERS
    proc, errf, path = v3
    if proc is not None:  # else --v3-model: made before
        try:
            proc.wait(timeout=budget.timeout(300, reserve=120))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.wait()
        errf.close()
    if proc is not None and proc.returncode != 0:
        rows.append({"check": check, "verdict": "FAIL",
                     "detail": "mkmodel did not finish in time (rc %s)" % proc.returncode})
        return rows, bench, None
    d = run_deployment(runner, budget, work, "v3-" + ("cuda" if mode == "device" else "cpu"),
                       "cuda" if mode == "device" else "cpu", path, want_logits=False,
                       new_tokens=64, kv_tokens=4096, ready_s=240)
    g = d.get("generate")
    if "error" in d or not g:
        rows.append({"check": check, "verdict": "FAIL", "detail": d.get("error", "no generate line")})
        return rows, bench, None
    rate = g["decode_tok_s"]
    decode = {"layers": V3_LAYERS, "decode_tok_s": rate,
              "decode_step_ms": 1000.0 / rate if rate else None,
              "completion_tokens": g["completion_tokens"], "first_token_ms": g["first_token_ms"],
              "step_p50_us": d.get("step_p50_us"), "step_p99_us": d.get("step_p99_us"),
              "vram_used_mib": d.get("vram_used_mib"), "model_bytes": os.path.getsize(path),
              "backend": "cuda" if mode == "device" else "cpu (rehearsal)"}
    ok = g["completion_tokens"] > 1 and rate > 0
    rows.append({"check": check, "verdict": "PASS" if ok else "FAIL",
                 "detail": "%d tokens, %.2f ms per token (%.1f tok/s), first token %d ms" % (
                     g["completion_tokens"], decode["decode_step_ms"] or 0, rate,
                     g["first_token_ms"])})
    return rows, bench, decode


MODES = {"device": "device run", "dry": "dry run", "rehearsal": "rehearsal"}


def write_reports(report, out, runner, budget_s, budget):
    """The JSON and Markdown reports and the logs' archive, as they stand (after each step,
    so that a run cut short still leaves what it did)."""
    report["verdict"], report["verdict_detail"] = overall(report)
    report["seconds"] = round(budget_s - budget.left(), 1)
    with open(os.path.join(out, "gpu-kit-report.json"), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    with open(os.path.join(out, "gpu-kit-report.md"), "w") as f:
        f.write(markdown(report))
    with tarfile.open(os.path.join(out, "gpu-kit-logs.tar.gz"), "w:gz") as tar:
        tar.add(runner.logs, arcname="logs")


def print_rows(rows, key):
    for r in rows:
        print("%-5s %-40s %s" % (r["verdict"], r[key], r["detail"]), flush=True)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the reports (created)")
    ap.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    ap.add_argument("--budget-s", type=float, default=480, help="total time for every step")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: hide CUDA, check the CPU parts")
    ap.add_argument("--rehearsal", action="store_true",
                    help="no GPU: the device run's e2e and decode-step paths with backend: cpu "
                         "in place of cuda (tests the driver itself; CUDA checks skip)")
    ap.add_argument("--v3-model", default="",
                    help="the v3-shaped model of the decode step, made before (default: made "
                         "here while the kernel tests run)")
    ap.add_argument("--skip", default="", help="steps to leave out: kernels,e2e,timing")
    args = ap.parse_args(argv)
    skip = set(s for s in args.skip.split(",") if s)
    if skip - {"kernels", "e2e", "timing"}:
        ap.error("--skip: unknown step(s) %s" % ",".join(sorted(skip - {"kernels", "e2e", "timing"})))
    if args.budget_s < 60:
        ap.error("--budget-s %g: at least 60" % args.budget_s)
    if args.dry_run and args.rehearsal:
        ap.error("--dry-run and --rehearsal: one or the other")
    mode = "dry" if args.dry_run else "rehearsal" if args.rehearsal else "device"
    budget = Budget(args.budget_s)
    os.makedirs(args.out, exist_ok=True)
    # Absolute: the test binaries run in the fixtures' folder.
    work = os.path.abspath(args.work or os.path.join("/tmp", "moeflow-gpukit-%d" % os.getpid()))
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(KIT, "manifest.json")) as f:
        manifest = json.load(f)

    runner = Runner(work, dict(os.environ))
    gpus, driver_cuda, no_gpu = ([], None, "%s: CUDA hidden" % MODES[mode]) if mode != "device" \
        else nvidia_smi(runner, budget.timeout(30, 0))
    runner.env, found, warnings = child_env(KIT, manifest, driver_cuda, hide_cuda=mode != "device")
    have = glibc_version()
    report = {"mode": MODES[mode], "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "kit": manifest, "gpus": gpus, "driver_cuda": driver_cuda, "no_gpu_reason": no_gpu,
              "host": {"cpus": os.cpu_count(), "glibc": "%d.%d" % have if have else "unknown"},
              "cuda_libraries": found, "warnings": warnings, "kernels": [], "host_checks": [],
              "e2e": [], "timing_checks": [], "bench": None, "decode_step": None}
    print("gpu-kit %s: kit %s; GPUs: %s; driver CUDA %s; %s" % (
        MODES[mode], manifest.get("commit"), ", ".join(g["name"] for g in gpus) or no_gpu,
        driver_cuda or "-", ", ".join("%s %s" % (k, v or "NOT FOUND") for k, v in found.items())),
        flush=True)
    for w in warnings:
        print("gpu-kit: warning: " + w, flush=True)
    v3 = None
    if mode == "rehearsal" or (mode == "device" and gpus):
        if "timing" not in skip:
            v3 = ((None, None, os.path.abspath(args.v3_model)) if args.v3_model
                  else start_v3_model(runner, work))  # made while the kernel tests run
    try:
        if "kernels" not in skip:
            report["kernels"], report["host_checks"] = step_kernels(runner, budget, work)
            print_rows(report["kernels"] + report["host_checks"], "kernel")
            write_reports(report, args.out, runner, args.budget_s, budget)
        if "e2e" not in skip:
            report["e2e"] = step_e2e(runner, budget, work, mode)
            print_rows(report["e2e"], "check")
            write_reports(report, args.out, runner, args.budget_s, budget)
        if "timing" not in skip:
            if mode == "device" and not gpus:
                report["timing_checks"] = [{"check": "kernel timings", "verdict": "SKIP",
                                            "detail": "no device: " + no_gpu}]
            else:
                report["timing_checks"], report["bench"], report["decode_step"] = step_timing(
                    runner, budget, work, mode, v3)
            print_rows(report["timing_checks"], "check")
    finally:
        if v3 is not None and v3[0] is not None and v3[0].poll() is None:
            kill_group(v3[0])
    write_reports(report, args.out, runner, args.budget_s, budget)
    print("gpu-kit %s: %s: %s (%.0f s; %s)" % (report["mode"], report["verdict"],
                                              report["verdict_detail"], report["seconds"],
                                              os.path.join(args.out, "gpu-kit-report.md")))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
