"""The LLM explainer/simulator through a real OpenAI-compatible HTTP server on loopback, with the disk cache."""

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from progsae.errors import ProgsaeError
from progsae.evals.common import Variant
from progsae.evals.interp.llm import CachedChat, HFChat, LLMExplainer, LLMSimulator, OpenAIChat, parse_simulation
from progsae.evals.interp.score import InterpConfig, evaluate_interp
from test_eval_interp import make_text_store, planted_sae


class FakeLLM(BaseHTTPRequestHandler):
    """Explains a feature as its most often marked token; simulates 10 on that token, 0 elsewhere."""

    requests: list[dict] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeLLM.requests.append(body)
        if self.path != "/v1/chat/completions" or body.get("model") != "fake":
            self.send_response(404)
            self.end_headers()
            return
        prompt = body["messages"][-1]["content"]
        if "what does this feature respond to" in prompt:
            marked = re.findall(r"<<(.+?)>>", prompt)
            answer = max(set(marked), key=marked.count) if marked else "nothing"
        else:
            target = re.search(r"responds to: (.*)\n", prompt).group(1)
            lines = re.findall(r"^(\d+)\t'(.*)'$", prompt, flags=re.M)
            answer = "\n".join(f"{i}\t{10 if tok == target else 0}" for i, tok in lines)
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    FakeLLM.requests = []
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def text_store(tmp_path_factory):
    return make_text_store(tmp_path_factory.mktemp("text") / "store")[0]


CFG = InterpConfig(bands=[(0, 8), (8, 16)], band_names=["planted", "random"], latents_per_band=3, explain_top=6, score_top=3, score_random=3, n_bootstrap=100,
                   min_scored=3)  # 3 latents per band: measured with a lowered minimum


def run(store, chat):
    return evaluate_interp(store, Variant.of(planted_sae(), "p"), LLMExplainer(chat), LLMSimulator(chat), CFG)


def test_http_llm_scores_planted_high_random_low_and_rerun_is_cached(server, text_store, tmp_path):
    chat = CachedChat(OpenAIChat(server + "/v1", "fake", timeout=10), tmp_path / "cache")
    res = run(text_store, chat)
    planted, rnd = res.bands
    assert planted.mean > 0.9
    assert abs(rnd.mean) < 0.3
    asked = len(FakeLLM.requests)
    assert asked == chat.misses and chat.hits + chat.misses == 6 * (1 + 6)  # per latent: 1 explanation + 6 simulations; repeats hit the cache
    assert all(r["temperature"] == 0 for r in FakeLLM.requests)
    again = CachedChat(OpenAIChat(server, "fake", timeout=10), tmp_path / "cache")  # root URL: same endpoint
    res2 = run(text_store, again)
    assert len(FakeLLM.requests) == asked and again.hits == 6 * 7 and again.misses == 0
    assert res2.bands == res.bands
    entry = json.loads(next((tmp_path / "cache").rglob("*.json")).read_text())
    assert set(entry) == {"model", "messages", "max_tokens", "answer"}


def test_http_errors_are_one_line(server):
    with pytest.raises(ProgsaeError, match="HTTP 404"):
        OpenAIChat(server, "other-model", timeout=5).complete([{"role": "user", "content": "hi"}], 4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(ProgsaeError, match="cannot reach"):
        OpenAIChat(f"http://127.0.0.1:{closed_port}", "fake", timeout=2).complete([{"role": "user", "content": "hi"}], 4)


def test_parse_simulation_tolerates_noise():
    answer = "Sure!\n0\t3\n1 ' the' 7\n2: 12\nnot a line\n9\t5"
    assert parse_simulation(answer, 4) == [3.0, 7.0, 10.0, 0.0]


def test_local_hf_chat_model_is_cached(tiny_llama, tmp_path):
    from progsae.data.models import load_model

    torch.manual_seed(0)
    model, tok = load_model(str(tiny_llama))
    chat = CachedChat(HFChat(model, tok, name="tiny"), tmp_path / "c")
    msgs = [{"role": "user", "content": "what does it respond to?"}]
    first = chat.complete(msgs, 5)
    assert isinstance(first, str) and chat.misses == 1
    assert chat.complete(msgs, 5) == first and chat.hits == 1
