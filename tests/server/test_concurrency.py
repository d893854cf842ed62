"""Continuous batching under load: 16 simultaneous greedy streams all complete, each exactly
equal (text and log-probabilities) to the same request run alone; a client that disconnects
mid-stream frees its slot at once."""

import concurrent.futures
import time
import unittest

import httpx

from common import KEY, URL, client, metrics, model_id, wait_for

TOPICS = ["the sea", "a robot", "autumn", "a city at night", "coffee", "mountains", "a lost key", "the moon",
          "rain", "a library", "trains", "a garden", "winter", "music", "a small dog", "the desert"]


def ask(topic: str, stream: bool):
    c, model = client(), model_id()
    kw = dict(model=model, messages=[{"role": "user", "content": f"Write two sentences about {topic}."}],
              temperature=0, max_tokens=32, logprobs=True, top_logprobs=2)
    if not stream:
        r = c.chat.completions.create(**kw)
        return r.choices[0].message.content, r.choices[0].logprobs.content
    text, lps = "", []
    for chunk in c.chat.completions.create(stream=True, **kw):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            lps += (chunk.choices[0].logprobs.content or []) if chunk.choices[0].logprobs else []
    return text, lps


class Concurrency(unittest.TestCase):
    def test_16_streams_match_each_alone(self):
        alone = {t: ask(t, stream=False) for t in TOPICS}
        before = metrics()
        with concurrent.futures.ThreadPoolExecutor(len(TOPICS)) as pool:
            together = dict(zip(TOPICS, pool.map(lambda t: ask(t, stream=True), TOPICS)))
        for t in TOPICS:
            # Exactly: a request's numbers do not depend on what runs beside it.
            self.assertEqual(together[t][0], alone[t][0], f"{t}: the batched stream differs from the request alone")
            self.assertEqual([x.logprob for x in together[t][1]], [x.logprob for x in alone[t][1]])
        after = metrics()
        ok = 'squish_requests_total{status="ok"}'
        self.assertEqual(after[ok] - before.get(ok, 0), len(TOPICS))
        self.assertEqual(after["squish_requests_running"], 0)

    def test_disconnect_frees_the_slot(self):
        cancelled = 'squish_requests_total{status="cancelled"}'
        before = metrics().get(cancelled, 0)
        body = {"messages": [{"role": "user", "content": "Write a very long story."}], "max_tokens": 2000, "stream": True}
        with httpx.stream("POST", URL + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
            wait_for(lambda: metrics()["squish_requests_running"] == 1, what="the request to run")
        # The connection is closed: the engine drops the sequence at its next step.
        start = time.time()
        wait_for(lambda: metrics()["squish_requests_running"] == 0, timeout=5, what="the slot to be freed")
        self.assertLess(time.time() - start, 5)
        self.assertEqual(metrics().get(cancelled, 0), before + 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
