"""Limits, run against a server started with --max-batch 1 --max-queue 1 --max-body 65536:
a full queue answers 429 with Retry-After; bad requests get OpenAI-shaped (or, on /api,
Ollama-shaped) 4xx errors; an oversized body gets 413."""

import threading
import unittest

import httpx

from common import KEY, URL, wait_for, metrics

H = {"Authorization": f"Bearer {KEY}"}


def post(path, headers=None, **kw):
    return httpx.post(URL + path, headers={**H, **(headers or {})}, timeout=60, **kw)


def assert_openai_error(t, r, status, param=None):
    t.assertEqual(r.status_code, status, r.text)
    err = r.json()["error"]
    t.assertTrue(err["message"])
    t.assertIn("type", err)
    t.assertIn("code", err)
    if param:
        t.assertEqual(err["param"], param)


class Limits(unittest.TestCase):
    def test_full_queue_gives_429_with_retry_after(self):
        long = {"messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 150, "stream": True}
        done = []

        def hold():
            with httpx.stream("POST", URL + "/v1/chat/completions", json=long, headers=H, timeout=120) as r:
                done.append(r.status_code)
                for _ in r.iter_lines():
                    pass

        first = threading.Thread(target=hold)
        first.start()  # takes the one slot
        wait_for(lambda: metrics()["squish_requests_running"] == 1, what="the first request to run")
        second = threading.Thread(target=hold)
        second.start()  # waits in the one queue place
        wait_for(lambda: metrics()["squish_queue_depth"] == 1, what="the second request to queue")
        r = post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert_openai_error(self, r, 429)
        self.assertEqual(r.headers["retry-after"], "1")
        r = post("/api/generate", json={"prompt": "hi", "stream": False})
        self.assertEqual(r.status_code, 429)
        self.assertIn("busy", r.json()["error"])
        first.join()
        second.join()
        self.assertEqual(done, [200, 200])

    def test_malformed_requests(self):
        r = post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert_openai_error(self, r, 400)
        self.assertIn("Invalid JSON", r.json()["error"]["message"])
        assert_openai_error(self, post("/v1/chat/completions", content=b""), 400)
        assert_openai_error(self, post("/v1/chat/completions", json={"messages": "hi"}), 400)
        assert_openai_error(self, post("/v1/chat/completions", json={"messages": [{"content": "no role"}]}), 400, "messages")
        assert_openai_error(self, post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "n": 99}), 400, "n")
        assert_openai_error(self, post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "top_p": 2}), 400, "top_p")
        assert_openai_error(self, post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}), 400, "max_tokens")
        assert_openai_error(self, post("/v1/completions", json={"prompt": {"a": 1}}), 400, "prompt")
        assert_openai_error(self, post("/v1/embeddings", json={"input": []}), 400, "input")
        assert_openai_error(self, post("/v1/chat/completions", json={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}), 404, "model")
        assert_openai_error(self, httpx.get(URL + "/v1/nothing-here", headers=H), 404)
        r = post("/api/chat", content=b"[1,2")
        self.assertEqual(r.status_code, 400)
        self.assertIsInstance(r.json()["error"], str)

    def test_prompt_longer_than_context_is_refused(self):
        r = post("/v1/completions", json={"prompt": "word " * 3000, "max_tokens": 1})
        assert_openai_error(self, r, 400)
        self.assertEqual(r.json()["error"]["code"], "context_length_exceeded")

    def test_oversized_body_gets_413(self):
        r = post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 100_000}]})
        assert_openai_error(self, r, 413)
        r = post("/api/chat", json={"messages": [{"role": "user", "content": "x" * 100_000}]})
        self.assertEqual(r.status_code, 413)
        self.assertIn("--max-body", r.json()["error"])
        assert_openai_error(self, httpx.get(URL + "/v1/chat/completions", headers=H), 405)


if __name__ == "__main__":
    unittest.main(verbosity=2)
