"""The device kit's reports: the Markdown table and the overall verdict.

Part of the kit's driver (driver.py); only the Python standard library.
"""

def markdown(report):
    lines = ["# moeflow GPU device kit report", "",
             "%s, %s, kit %s (%s)" % (report["mode"], report["date"], report["kit"].get("commit"),
                                      report["kit"].get("cuda")),
             "", "Machine: %s CPUs; glibc %s; GPUs: %s; the driver's CUDA %s" % (
                 report["host"]["cpus"], report["host"]["glibc"],
                 ", ".join("%s (driver %s, %s, cc %s)" % (g["name"], g["driver"], g["memory"],
                                                          g["compute_capability"])
                           for g in report["gpus"]) or report["no_gpu_reason"],
                 report.get("driver_cuda") or "-"),
             ""] + ["Warning: " + w for w in report.get("warnings", [])] + [
             "", "| kernel | verdict | detail |", "|---|---|---|"]
    for r in report["kernels"] + report["host_checks"]:
        lines.append("| %s | %s | %s |" % (r["kernel"], r["verdict"], r["detail"].replace("|", "\\|")))
    lines += ["", "| check | verdict | detail |", "|---|---|---|"]
    for r in report["e2e"] + report["timing_checks"]:
        lines.append("| %s | %s | %s |" % (r["check"], r["verdict"], r["detail"].replace("|", "\\|")))
    b = report.get("bench")
    if b and "device" in b:
        d = b["device"]
        lines += ["", "%s: cc %s, %d SMs, %.1f GiB; memory %.0f GB/s (clock x bus), device copy "
                  "%.0f GB/s" % (d["name"], d["compute_capability"], d["sms"], d["memory_gib"],
                                 d["peak_gbps"], d["copy_gbps"]), "",
                  "| MLA decode context | splits | decode us | cache GB/s | prefill kernel, 1 token, us |",
                  "|---|---|---|---|---|"]
        for r in b["mla_decode"]:
            lines.append("| %d | %d | %.1f | %.0f | %.1f |" % (
                r["context"], r["splits"], r["decode_us"], r["decode_cache_gbps"],
                r["prefill_kernel_1token_us"]))
        lines += ["", "| GEMV (1 token) | rows x cols | us | GB/s | of copy bandwidth |",
                  "|---|---|---|---|---|"]
        for r in b["gemv"]:
            lines.append("| %s (%s) | %d x %d | %.1f | %.0f | %.2f |" % (
                r["type"], r["kind"], r["rows"], r["cols"], r["us"], r["gbps"],
                r["of_copy_bandwidth"]))
    if report.get("decode_step"):
        d = report["decode_step"]
        lines += ["", "Decode step of the v3-shaped %d-layer model (Q4_K_M, %.2f GiB, gpu worker "
                  "backend %s): %d tokens at %.2f tok/s, %.2f ms per step (coordinator step p50 "
                  "%s us, p99 %s us), first token %d ms, VRAM used %s MiB" % (
                      d["layers"], d["model_bytes"] / 2**30, d["backend"], d["completion_tokens"],
                      d["decode_tok_s"], d["decode_step_ms"], d["step_p50_us"], d["step_p99_us"],
                      d["first_token_ms"], d["vram_used_mib"])]
    lines += ["", "Verdict: **%s** (%s)" % (report["verdict"], report["verdict_detail"]), ""]
    return "\n".join(lines)


def is_gpu_row(report, row):
    """A row that needs a device: a kernel, the CUDA e2e, the bench, the CUDA decode step."""
    name = row.get("kernel") or row.get("check")
    return row in report["kernels"] or name.startswith(("e2e CUDA", "kernel timings",
                                                        "decode step, "))


def overall(report):
    """("PASS" or "FAIL", why). Device run: every row passed. Dry run and rehearsal (no
    GPU): every GPU row skipped for want of a device, after its CPU side ran, and every
    other row passed."""
    rows = report["kernels"] + report["host_checks"] + report["e2e"] + report["timing_checks"]
    device = report["mode"] == "device run"
    bad = []
    for r in rows:
        name = r.get("kernel") or r.get("check")
        v = r["verdict"]
        if device:
            if v != "PASS":
                bad.append("%s: %s" % (name, v))
        elif is_gpu_row(report, r):
            if v != "SKIP":
                bad.append("%s: %s without a device (%s)" % (name, v, r["detail"]))
            elif "no device" not in r["detail"] and "no CUDA" not in r["detail"]:
                bad.append("%s: skipped for another reason (%s)" % (name, r["detail"]))
        elif v != "PASS":
            bad.append("%s: %s (%s)" % (name, v, r["detail"]))
    if not rows:
        bad.append("no step ran")
    return ("PASS" if not bad else "FAIL"), ("; ".join(bad[:6]) or
                                             "every row as it must be in a " + report["mode"])
