"""The llama.cpp comparison scripts without llama-server: commands, order, ratios, parsing, and the
server lifecycle (ready on /health, stopped on the way out, errors too) with a stand-in server."""

from __future__ import annotations

import sys

import httpx
import pytest

from benchmarks import logprob_drift, vs_llama_cpp

STAND_IN = """
import http.server, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def test_llama_server_gets_one_slot_per_request_in_flight_and_512_tokens_each():
    cmd = vs_llama_cpp.llama_server_command("llama-server", "m.gguf", 8080, 32, 2, 512)
    assert cmd[:3] == ["llama-server", "-m", "m.gguf"] and "--no-webui" in cmd

    def value(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    assert value("-np") == "32" and value("-c") == str(512 * 32) and value("--host") == "127.0.0.1"
    assert value("-t") == value("-tb") == "2"


def test_engine_command_puts_extra_flags_last_so_they_win():
    cmd = vs_llama_cpp.engine_command(None, 9000, 256, ["--max-num-seqs", "64"])
    assert cmd[1:4] == ["-m", "engine", "serve"] and cmd[4] == "--host"
    assert cmd[-2:] == ["--max-num-seqs", "64"]
    assert vs_llama_cpp.engine_command("x.gguf", 9000, 256, [])[4] == "x.gguf"


def test_order_alternates_starting_with_llama_cpp():
    assert [vs_llama_cpp.server_order(i, ["a", "b"]) for i in range(3)] == [
        ["llama.cpp", "a", "b"], ["b", "a", "llama.cpp"], ["llama.cpp", "a", "b"]]


def test_variants_are_labelled_flag_sets_and_default_to_engine_args():
    assert vs_llama_cpp.parse_variants([], "--dtype float32") == {"engine": ["--dtype", "float32"]}
    assert vs_llama_cpp.parse_variants(["engine=", "inv=--batch-invariant --seed 1"], "") == {
        "engine": [], "inv": ["--batch-invariant", "--seed", "1"]}
    for bad in (["no-equals"], ["llama.cpp=-x"], ["a=", "a=-x"]):
        with pytest.raises(SystemExit):
            vs_llama_cpp.parse_variants(bad, "")


def test_ratios_are_ours_over_llama_cpp():
    ours = {"concurrency": 8, "output_tokens_per_s": 50.0, "ttft_ms_p50": 40.0, "itl_ms_p50": 30.0}
    llama = {"concurrency": 8, "output_tokens_per_s": 100.0, "ttft_ms_p50": 20.0, "itl_ms_p50": 10.0}
    ratio = vs_llama_cpp.ratios(ours, llama)
    assert ratio["concurrency"] == 8 and ratio["output_tokens_per_s_ratio"] == 0.5
    assert ratio["ttft_ms_p50"] == {"engine": 40.0, "llama.cpp": 20.0, "ratio": 2.0}
    assert ratio["itl_ms_p50"]["ratio"] == 3.0


def test_server_is_ready_on_health_and_stopped_after_the_block_even_on_error(tmp_path):
    port = vs_llama_cpp.free_port()
    command = [sys.executable, "-c", STAND_IN, str(port)]
    with pytest.raises(KeyError):
        with vs_llama_cpp.running(command, port, tmp_path / "log", timeout_s=60) as url:
            assert httpx.get(f"{url}/health").status_code == 200
            raise KeyError("the benchmark failed")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health")


def test_a_server_that_exits_fails_with_its_log(tmp_path):
    command = [sys.executable, "-c", "print('no such model'); raise SystemExit(3)"]
    with pytest.raises(RuntimeError, match="exited with 3:\nno such model"):
        with vs_llama_cpp.running(command, vs_llama_cpp.free_port(), tmp_path / "log", timeout_s=60):
            pass


def test_llama_probabilities_must_be_pre_sampling_log_probs():
    entries = [{"id": 5, "logprob": -0.25, "top_logprobs": []}, {"id": 7, "logprob": -1.5, "top_logprobs": []}]
    assert logprob_drift.parse_completion_probabilities(entries) == ([5, 7], [-0.25, -1.5])
    with pytest.raises(ValueError, match="post_sampling_probs"):  # greedy post-sampling reports prob 1.0
        logprob_drift.parse_completion_probabilities([{"id": 5, "prob": 1.0, "top_probs": []}])


def test_drift_is_mean_and_max_absolute_difference():
    assert logprob_drift.drift([-1.0, -2.0, -0.5], [-1.5, -2.0, -0.25]) == \
        {"mean_abs_delta": 0.25, "max_abs_delta": 0.5, "num_tokens": 3}
    with pytest.raises(ValueError):  # positions must line up one to one
        logprob_drift.drift([-1.0], [-1.0, -2.0])


def test_prompt_is_the_first_tokens_of_the_text():
    class Words:
        def encode(self, text: str) -> list[int]:
            return [len(word) for word in text.split()]

    assert logprob_drift.prompt_ids(Words(), "a bb ccc dddd", 3) == [1, 2, 3]
    with pytest.raises(ValueError, match="fewer than"):
        logprob_drift.prompt_ids(Words(), "a bb", 3)
