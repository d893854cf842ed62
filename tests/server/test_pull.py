"""The `ollama` Python package's `pull` against `squish serve`'s /api/pull, with the server's
HF_ENDPOINT pointing at tests/hub/fake_hub.py (both started by crates/squish/tests/pull.rs):
streamed status lines from the manifest to success, byte counts that grow to the file size,
the conversion's progress, the model in the store afterwards, and errors as Ollama raises them."""

import os
import unittest

import ollama

from common import KEY, URL

STORE = os.environ["SQUISH_HOME"]


class OllamaPull(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = ollama.Client(host=URL, headers={"Authorization": f"Bearer {KEY}"})

    def test_streamed_pull_reports_each_step(self):
        parts = list(self.c.pull("test/tiny", stream=True))
        statuses = [p.status for p in parts]
        self.assertEqual(statuses[0], "pulling manifest")
        self.assertEqual(statuses[-1], "success")
        weights = [p for p in parts if p.status == "pulling model.safetensors"]
        self.assertTrue(weights, statuses)
        self.assertEqual(weights[-1].completed, weights[-1].total)
        self.assertGreater(weights[-1].total, 100_000)
        converting = [p for p in parts if p.status == "converting to int4"]
        self.assertTrue(converting, statuses)
        self.assertEqual(converting[-1].completed, converting[-1].total)
        self.assertIn("verifying sha256 digest", statuses)
        self.assertTrue(os.path.isfile(os.path.join(STORE, "models/test--tiny/int4/squish.json")))

    def test_whole_pull_answers_once(self):
        r = self.c.pull("test/tiny@int8", stream=False)
        self.assertEqual(r.status, "success")
        self.assertTrue(os.path.isfile(os.path.join(STORE, "models/test--tiny/int8/squish.json")))

    def test_unknown_repo_is_404_and_a_typo_gets_suggestions(self):
        with self.assertRaises(ollama.ResponseError) as e:
            self.c.pull("nobody/nothing", stream=False)
        self.assertEqual(e.exception.status_code, 404)
        self.assertIn("not found", e.exception.error)
        with self.assertRaises(ollama.ResponseError) as e:
            list(self.c.pull("qwen2.5:7", stream=True))
        self.assertIn("did you mean qwen2.5:7b", e.exception.error)

    def test_gated_repo_without_token_is_401(self):
        with self.assertRaises(ollama.ResponseError) as e:
            self.c.pull("test/gated", stream=False)
        self.assertEqual(e.exception.status_code, 401)
        self.assertIn("HF_TOKEN", e.exception.error)


if __name__ == "__main__":
    unittest.main(verbosity=2)
