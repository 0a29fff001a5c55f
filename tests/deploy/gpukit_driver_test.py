"""Tests of the GPU device kit driver's own logic (deploy/gpukit), no binaries needed.

What only a device run exercises is tested here on made-up inputs: the
tolerance comparison of the CUDA gpu worker's logits with the CPU one's, the
verdict rules of the three modes, GoogleTest report parsing and the Markdown
of cuda_kernel_bench's JSON.

    python3 tests/deploy/gpukit_driver_test.py deploy/gpukit
"""

import json
import os
import random
import struct
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.abspath(sys.argv.pop(1) if len(sys.argv) > 1 else "deploy/gpukit"))
import driver  # noqa: E402
import gpukit_launch  # noqa: E402
import gpukit_report  # noqa: E402

N_TOKENS, VOCAB = 8, 50


def write_mflg(path, logits):
    with open(path, "wb") as f:
        f.write(struct.pack("<4sIII", b"MFLG", 1, N_TOKENS, VOCAB))
        f.write(struct.pack("<%di" % N_TOKENS, *range(N_TOKENS)))
        f.write(struct.pack("<%df" % len(logits), *logits))


def random_logits(seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(N_TOKENS):
        row = [rng.uniform(-4, 4) for _ in range(VOCAB)]
        row[rng.randrange(VOCAB)] = 9.0  # a clear top-1 (margin >= 0.2) at every position
        rows.append(row)
    return rows


def flat(rows):
    return [x for r in rows for x in r]


class E2eVerdictTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.ref_rows = random_logits(1)
        self.ref = self.run_of(self.ref_rows, "ref")

    def run_of(self, rows, name, text="some text", tokens=gpukit_launch.E2E_NEW_TOKENS):
        path = os.path.join(self.dir, name + ".logits")
        write_mflg(path, flat(rows))
        return {"logits": path, "text": text, "generate": {"completion_tokens": tokens}}

    def test_within_tolerance_passes(self):
        rows = [[x + 0.02 * x for x in r] for r in self.ref_rows]  # 2 % of each logit
        verdict, detail, cmp = driver.e2e_verdict(self.ref, self.run_of(rows, "got"), exact=False)
        self.assertEqual(verdict, "PASS", detail)
        self.assertEqual(cmp["top1_equal"], N_TOKENS)
        self.assertFalse(cmp["bit_identical"])

    def test_exact_needs_bit_identical(self):
        same = driver.e2e_verdict(self.ref, self.run_of(self.ref_rows, "same"), exact=True)
        self.assertEqual(same[0], "PASS", same[1])
        rows = [list(r) for r in self.ref_rows]
        rows[3][7] += 1e-4
        verdict, _, _ = driver.e2e_verdict(self.ref, self.run_of(rows, "got"), exact=True)
        self.assertEqual(verdict, "FAIL")

    def test_past_tolerance_fails(self):
        rows = [list(r) for r in self.ref_rows]
        rows[2][5] += 0.08 * 9.0  # 8 % of the largest |logit|
        verdict, detail, _ = driver.e2e_verdict(self.ref, self.run_of(rows, "got"), exact=False)
        self.assertEqual(verdict, "FAIL")
        self.assertIn("8.00% of max |logit|", detail)

    def test_changed_top1_fails(self):
        rows = [list(r) for r in self.ref_rows]
        top = max(range(VOCAB), key=lambda i: rows[4][i])
        other = (top + 1) % VOCAB
        rows[4][other] = rows[4][top] + 0.1  # within 5 % but a different top-1
        verdict, detail, cmp = driver.e2e_verdict(self.ref, self.run_of(rows, "got"),
                                                  exact=False)
        self.assertEqual(verdict, "FAIL", detail)
        self.assertEqual(cmp["top1_equal"], N_TOKENS - 1)

    def test_text_and_token_counts(self):
        verdict, detail, cmp = driver.e2e_verdict(
            self.ref, self.run_of(self.ref_rows, "t", text="some test"), exact=False)
        self.assertEqual(verdict, "FAIL")
        self.assertEqual(cmp["text_diverges_at_char"], 7)
        verdict, detail, _ = driver.e2e_verdict(
            self.ref, self.run_of(self.ref_rows, "n", tokens=31), exact=False)
        self.assertEqual(verdict, "FAIL")
        self.assertIn("31", detail)
        short = self.run_of(self.ref_rows, "eos", tokens=5)
        self.ref["generate"]["completion_tokens"] = 5
        verdict, detail, _ = driver.e2e_verdict(self.ref, short, exact=False)
        self.assertEqual(verdict, "FAIL")
        self.assertIn("EOS", detail)

    def test_errors_and_shapes(self):
        self.assertEqual(driver.e2e_verdict(self.ref, {"error": "launch exited"}, False)[0],
                         "FAIL")
        path = os.path.join(self.dir, "short.logits")
        with open(path, "wb") as f:
            f.write(struct.pack("<4sIII", b"MFLG", 1, 1, VOCAB) + struct.pack("<i", 0) +
                    struct.pack("<%df" % VOCAB, *self.ref_rows[0]))
        got = {"logits": path, "text": "some text", "generate": {"completion_tokens": 32}}
        verdict, detail, _ = driver.e2e_verdict(self.ref, got, exact=False)
        self.assertEqual(verdict, "FAIL")
        self.assertIn("shapes differ", detail)


class GtestTest(unittest.TestCase):
    def test_parse_and_rows(self):
        doc = {"testsuites": [{"name": "LayerOpsTest", "testsuite": [
            {"name": "RmsNormMatchesReference", "result": "COMPLETED"},
            {"name": "YarnRopeMatchesReference", "result": "SKIPPED"},
            {"name": "SiluMulMatchesReference", "result": "COMPLETED",
             "failures": [{"failure": "layer_ops_test.cc:140\nValue of: diff < tol\n  Actual: "
                                      "false"}]},
            {"name": "ArgumentChecksNameTheProblem", "result": "COMPLETED"},
            {"name": "ConfigureRefusesWithoutADevice", "result": "SKIPPED"}]}]}
        stdout = "\n".join([
            "[ RUN      ] LayerOpsTest.YarnRopeMatchesReference",
            "tests/kernels/cuda/layer_ops_test.cc:80: Skipped",
            "no CUDA device: CUDA driver version is insufficient",
            "[  SKIPPED ] LayerOpsTest.YarnRopeMatchesReference (3 ms)",
            "[ RUN      ] LayerOpsTest.ConfigureRefusesWithoutADevice",
            "x.cc:66: Skipped",
            "a CUDA device is present",
            "[  SKIPPED ] LayerOpsTest.ConfigureRefusesWithoutADevice (0 ms)"])
        path = os.path.join(tempfile.mkdtemp(), "t.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        tests = driver.parse_gtest(path, stdout)
        self.assertEqual(tests["LayerOpsTest.RmsNormMatchesReference"][0], "PASS")
        self.assertEqual(tests["LayerOpsTest.YarnRopeMatchesReference"],
                         ("SKIP", "no CUDA device: CUDA driver version is insufficient"))
        self.assertEqual(tests["LayerOpsTest.SiluMulMatchesReference"][0], "FAIL")
        self.assertIn("Value of", tests["LayerOpsTest.SiluMulMatchesReference"][1])
        self.assertEqual(driver.row_verdict([tests["LayerOpsTest.RmsNormMatchesReference"]])[0],
                         "PASS")
        self.assertEqual(driver.row_verdict([])[0], "MISSING")
        mixed = [tests["LayerOpsTest.RmsNormMatchesReference"],
                 tests["LayerOpsTest.YarnRopeMatchesReference"]]
        self.assertEqual(driver.row_verdict(mixed)[0], "FAIL")  # some cases skipped
        claimed = {"LayerOpsTest.RmsNormMatchesReference", "LayerOpsTest.YarnRopeMatchesReference",
                   "LayerOpsTest.SiluMulMatchesReference"}
        # The device-present skip passes; the failing kernel test is its own row's, not the
        # host checks' (even though the binary exits 1).
        self.assertEqual(driver.host_checks_verdict(tests, claimed, 1)[0], "PASS")
        del tests["LayerOpsTest.SiluMulMatchesReference"]
        self.assertEqual(driver.host_checks_verdict(tests, claimed, 134)[0], "FAIL")

    def test_every_kernel_row_names_a_test_binary_of_the_kit(self):
        for kernel, binary, rx in driver.KERNELS:
            self.assertIn(binary, driver.TEST_BINARIES, kernel)
        self.assertEqual(len({k for k, _, _ in driver.KERNELS}), len(driver.KERNELS))


BENCH_JSON = (
    '{"device": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "sms": 132, '
    '"memory_gib": 79.2, "peak_gbps": 3352.3, "copy_gbps": 2900.1}, "reps": 20, '
    '"mla_decode": [{"context": 1024, "heads": 128, "seqs": 1, "splits": 4, "decode_us": 20.51, '
    '"decode_cache_gbps": 57.5, "prefill_kernel_1token_us": 80.20, '
    '"prefill_kernel_1token_cache_gbps": 14.7}], "gemv": [{"type": "q4_K", "kind": "int4", '
    '"rows": 18432, "cols": 7168, "weight_bytes": 74317824, "us": 40.10, "gbps": 1853.3, '
    '"of_copy_bandwidth": 0.639}]}')


def report_of(mode, kernels, host, e2e, timing):
    return {"mode": mode, "date": "d", "kit": {"commit": "c", "cuda": "CUDA 13.0"}, "gpus": [],
            "driver_cuda": None, "no_gpu_reason": "none", "host": {"cpus": 2, "glibc": "2.36"},
            "warnings": ["w"], "kernels": kernels, "host_checks": host, "e2e": e2e,
            "timing_checks": timing, "bench": None, "decode_step": None}


class ReportTest(unittest.TestCase):
    def test_verdict_rules_per_mode(self):
        skip = {"kernel": "RMSNorm", "verdict": "SKIP", "detail": "no CUDA device: x"}
        passed = {"kernel": "RMSNorm", "verdict": "PASS", "detail": "3 case(s)"}
        host = [{"kernel": "host checks of layer_ops_test", "verdict": "PASS", "detail": ""}]
        e2e_skip = [{"check": "e2e CUDA gpu worker vs CPU: m", "verdict": "SKIP",
                     "detail": "no device (refused)"}]
        harness = [{"check": "e2e harness, CPU backend vs one process: m", "verdict": "PASS",
                    "detail": ""}]
        dry = report_of("dry run", [skip], host, harness + e2e_skip, [])
        self.assertEqual(gpukit_report.overall(dry)[0], "PASS")
        self.assertEqual(gpukit_report.overall(report_of("dry run", [passed], host, [], []))[0],
                         "FAIL")  # a GPU row that passed without a device is wrong
        other_skip = dict(skip, detail="fixture missing")
        self.assertEqual(gpukit_report.overall(report_of("dry run", [other_skip], host, [], []))[0],
                         "FAIL")
        self.assertEqual(gpukit_report.overall(report_of("device run", [passed], host, [], []))[0],
                         "PASS")
        self.assertEqual(gpukit_report.overall(report_of("device run", [skip], host, [], []))[0],
                         "FAIL")
        rehearsal_decode = [{"check": "decode step (rehearsal, backend: cpu), v3", "verdict":
                             "FAIL", "detail": "mkmodel"}]
        self.assertEqual(gpukit_report.overall(
            report_of("rehearsal", [skip], host, [], rehearsal_decode))[0], "FAIL")
        self.assertEqual(gpukit_report.overall(report_of("dry run", [], [], [], []))[0], "FAIL")

    def test_markdown_of_the_bench_json(self):
        r = report_of("device run", [], [], [], [])
        r["bench"] = json.loads(BENCH_JSON)
        r["decode_step"] = {"layers": 3, "model_bytes": 2309752224, "backend": "cuda",
                            "completion_tokens": 64, "decode_tok_s": 150.2,
                            "decode_step_ms": 6.66, "step_p50_us": 6500, "step_p99_us": 9000,
                            "first_token_ms": 40, "vram_used_mib": 4100}
        r["verdict"], r["verdict_detail"] = gpukit_report.overall(r)
        md = gpukit_report.markdown(r)
        self.assertIn("| 1024 | 4 | 20.5 | 58 | 80.2 |", md)
        self.assertIn("| q4_K (int4) | 18432 x 7168 | 40.1 | 1853 | 0.64 |", md)
        self.assertIn("64 tokens at 150.20 tok/s", md)
        self.assertIn("Warning: w", md)


if __name__ == "__main__":
    unittest.main(verbosity=1)
