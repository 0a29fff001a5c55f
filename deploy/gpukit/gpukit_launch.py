"""The device kit's process handling: children bounded by timeouts, `moeflow
launch` deployments driven with moeflowctl, and MFLG logits compared.

Part of the kit's driver (driver.py); only the Python standard library.
"""

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from array import array

KIT = os.path.dirname(os.path.abspath(__file__))

# The e2e comparison of the CUDA gpu worker with the CPU one: BF16 / int8 /
# int4 weights with f32 activations against the CPU's weights with
# activations quantized as ggml does, over a few layers.
E2E_TOLERANCE = {"max_abs_diff_of_max_logit": 0.05, "top1_margin": 0.2}
E2E_TOKENS = [(i * 37 + 11) % 250 + 1 for i in range(64)]
E2E_PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
E2E_NEW_TOKENS = 32

class Budget:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()

    def timeout(self, want, reserve=15):
        return max(0.0, min(want, self.left() - reserve))


class Runner:
    """Runs children in their own process group, logs each to work/logs."""

    def __init__(self, work, env):
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.env = env
        self.n = 0

    def log_path(self, name):
        self.n += 1
        return os.path.join(self.logs, "%02d-%s.log" % (self.n, re.sub(r"[^\w.-]", "_", name)))

    def run(self, name, cmd, timeout, cwd=None, env_extra=None, log=True):
        """(rc or None on timeout, stdout text, stderr text, seconds); logged unless log=False."""
        env = dict(self.env, **(env_extra or {}))
        start = time.monotonic()
        if timeout <= 0:
            return None, "", "not run: the budget is spent", 0.0
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            kill_group(p)
            out, err = p.communicate()
            rc = None
        secs = time.monotonic() - start
        out = out.decode("utf-8", "replace")
        err = err.decode("utf-8", "replace")
        if not log:
            return rc, out, err, secs
        with open(self.log_path(name), "w") as f:
            f.write("$ %s\n# cwd %s, rc %s, %.1f s\n--- stdout\n%s\n--- stderr\n%s\n"
                    % (" ".join(cmd), cwd or os.getcwd(), rc, secs, out, err))
        return rc, out, err, secs

    def start(self, name, cmd, cwd=None):
        """A background child: (Popen, its log file, the log's path, its stdout's path)."""
        path = self.log_path(name)
        f = open(path, "wb")
        f.write(("$ %s\n" % " ".join(cmd)).encode())
        f.flush()
        out_path = path[:-len(".log")] + ".stdout"
        with open(out_path, "wb") as out:
            p = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=out, stderr=f,
                                 start_new_session=True)
        return p, f, path, out_path


def kill_group(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def vram_used_mib(runner):
    if shutil.which("nvidia-smi") is None:
        return None
    rc, out, _, _ = runner.run("nvidia-smi-memory", ["nvidia-smi", "--query-gpu=memory.used",
                                                     "--format=csv,noheader,nounits"], 20)
    try:
        return int(out.strip().splitlines()[0]) if rc == 0 else None
    except (ValueError, IndexError):
        return None


def read_mflg(path):
    with open(path, "rb") as f:
        data = f.read()
    magic, version, n_tokens, n_vocab = struct.unpack_from("<4sIII", data, 0)
    if magic != b"MFLG" or version != 1:
        raise ValueError("%s: not an MFLG v1 file" % path)
    logits = array("f")
    logits.frombytes(data[16 + 4 * n_tokens:16 + 4 * n_tokens + 4 * n_tokens * n_vocab])
    if sys.byteorder != "little":
        logits.byteswap()
    return n_tokens, n_vocab, logits


def compare_logits(ref_path, got_path):
    n, v, ref = read_mflg(ref_path)
    n2, v2, got = read_mflg(got_path)
    if (n, v) != (n2, v2):
        return {"error": "shapes differ: %dx%d vs %dx%d" % (n, v, n2, v2)}
    max_ref = max(abs(x) for x in ref)
    max_diff = max(abs(a - b) for a, b in zip(ref, got))
    clear, top1_equal = 0, 0
    for t in range(n):
        r = ref[t * v:(t + 1) * v]
        g = got[t * v:(t + 1) * v]
        order = sorted(range(v), key=lambda i: -r[i])[:2]
        if r[order[0]] - r[order[1]] < E2E_TOLERANCE["top1_margin"]:
            continue
        clear += 1
        top1_equal += max(range(v), key=lambda i: g[i]) == order[0]
    return {"positions": n, "vocab": v, "max_abs_logit": max_ref, "max_abs_diff": max_diff,
            "bit_identical": ref.tobytes() == got.tobytes(),
            "clear_top1_positions": clear, "top1_equal": top1_equal}


def write_topology(path, backend, kv_tokens, expert_threads):
    gpu = ("  - backend: cuda\n    device_ids: [0]\n" if backend == "cuda"
           else "  - backend: cpu\n    separate_process: true\n    threads: 2\n")
    with open(path, "w") as f:
        f.write("# written by the device kit's driver\ncontrol_address: 127.0.0.1:0\n"
                "placement: replicate\nucx_transports: sm,self\nmax_batch_tokens: 64\n"
                "gpu_workers:\n%s    kv_cache_tokens: %d\nexpert_workers:\n"
                "  - numa_node: 0\n    threads: %d\n" % (gpu, kv_tokens, expert_threads))


class Launch:
    """`moeflow launch` in the background, its control address, and moeflowctl."""

    def __init__(self, runner, name, topology, model):
        self.runner, self.name = runner, name
        bindir = os.path.join(KIT, "bin")
        self.ctl = os.path.join(bindir, "moeflowctl")
        self.proc, self.errf, self.err_path, self.out_path = runner.start(
            name, [os.path.join(bindir, "moeflow"), "launch", topology, "--model", model,
                   "--restart_workers=false"])
        self.addr = None

    def stderr(self):
        if not self.errf.closed:
            self.errf.flush()
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_serving(self, timeout):
        """'' when serving, else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return "launch exited (%s): %s" % (self.proc.returncode,
                                                   last_lines(self.stderr(), 3))
            if self.addr is None:
                with open(self.out_path, "rb") as f:
                    m = re.search(rb"CONTROL (\S+)", f.read())
                if m:
                    self.addr = m.group(1).decode()
            if self.addr is not None:
                rc, _, _, _ = self.runner.run(self.name + "-status",
                                              [self.ctl, "--addr", self.addr, "status"], 10,
                                              log=False)
                if rc == 0:
                    return ""
            time.sleep(0.5)
        return "not serving after %.0f s: %s" % (timeout, last_lines(self.stderr(), 3))

    def ctl_run(self, what, args, timeout):
        return self.runner.run("%s-%s" % (self.name, what),
                               [self.ctl, "--addr", self.addr] + args, timeout)

    def stop(self):
        if self.addr is not None and self.proc.poll() is None:
            self.ctl_run("shutdown", ["shutdown"], 10)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        kill_group(self.proc)
        self.proc.wait()
        self.errf.close()


def last_lines(text, n):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return " | ".join(lines[-n:])


def generate_line(stderr):
    m = re.search(r"moeflowctl generate: (\S+), (\d+) prompt \+ (\d+) tokens, (\d+) ms "
                  r"\(first token (\d+) ms, decode ([\d.]+) tok/s\)", stderr)
    if not m:
        return None
    return {"finish": m.group(1), "prompt_tokens": int(m.group(2)),
            "completion_tokens": int(m.group(3)), "total_ms": int(m.group(4)),
            "first_token_ms": int(m.group(5)), "decode_tok_s": float(m.group(6))}


def run_deployment(runner, budget, work, name, backend, model, want_logits=True,
                   new_tokens=E2E_NEW_TOKENS, kv_tokens=1024, ready_s=120):
    """Launch, logits, greedy text, stats, VRAM, stop. A dict of what came back."""
    topo = os.path.join(work, name + ".yaml")
    write_topology(topo, backend, kv_tokens, max(1, min(8, (os.cpu_count() or 2) // 2)))
    res = {"backend": backend, "model": os.path.basename(model)}
    launch = Launch(runner, name, topo, model)
    try:
        why = launch.wait_serving(budget.timeout(ready_s))
        if why:
            res["error"] = why
            return res
        res["vram_used_mib"] = vram_used_mib(runner) if backend == "cuda" else None
        if want_logits:
            path = os.path.join(work, name + ".logits")
            rc, _, err, _ = launch.ctl_run("logits", ["logits", "--tokens", ",".join(
                map(str, E2E_TOKENS)), "--out", path], budget.timeout(60))
            if rc != 0:
                res["error"] = "moeflowctl logits: " + last_lines(err, 2)
                return res
            res["logits"] = path
        rc, out, err, _ = launch.ctl_run(
            "generate", ["generate", "--prompt", E2E_PROMPT, "--max-tokens", str(new_tokens),
                         "--temperature", "0"], budget.timeout(120))
        if rc != 0:
            res["error"] = "moeflowctl generate: " + last_lines(err, 2)
            return res
        # The pieces as streamed, then the one newline moeflowctl always ends with.
        res["text"] = out[:-1] if out.endswith("\n") else out
        res["generate"] = generate_line(err)
        rc, out, _, _ = launch.ctl_run("stats", ["stats"], 20)
        m = re.search(r"step p50 (\d+) us\s+p99 (\d+) us", out)
        if m:
            res["step_p50_us"], res["step_p99_us"] = int(m.group(1)), int(m.group(2))
        return res
    finally:
        launch.stop()
        res["launch_stderr_tail"] = last_lines(launch.stderr(), 4)


def single_process_reference(runner, budget, work, name, model):
    """`moeflow logits` and `moeflow generate` in one process (the dry run's reference)."""
    moeflow = os.path.join(KIT, "bin", "moeflow")
    path = os.path.join(work, name + ".logits")
    rc, _, err, _ = runner.run(name + "-logits", [moeflow, "logits", "--model", model, "--tokens",
                                                  ",".join(map(str, E2E_TOKENS)), "--out", path],
                               budget.timeout(60))
    if rc != 0:
        return {"error": "moeflow logits: " + last_lines(err, 2)}
    rc, out, err, _ = runner.run(name + "-generate",
                                 [moeflow, "generate", "--model", model, "--prompt", E2E_PROMPT,
                                  "--max-tokens", str(E2E_NEW_TOKENS), "--temperature", "0"],
                                 budget.timeout(60))
    if rc != 0:
        return {"error": "moeflow generate: " + last_lines(err, 2)}
    m = re.search(r"moeflow generate: generated (\d+) tokens", err)
    # `moeflow generate` adds a newline only on a terminal: stdout is the text.
    return {"backend": "single process", "logits": path, "text": out,
            "generate": {"completion_tokens": int(m.group(1))} if m else None}
