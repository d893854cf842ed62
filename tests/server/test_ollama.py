"""The `ollama` Python package against `squish serve`: chat and generate (streamed and not),
structured output, embeddings, and the listing routes (list, show, ps, version)."""

import json
import unittest

import ollama

from common import KEY, URL, model_id


class OllamaClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = ollama.Client(host=URL, headers={"Authorization": f"Bearer {KEY}"})
        cls.model = model_id()

    def test_chat_whole_and_streamed_agree(self):
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        opts = {"temperature": 0, "num_predict": 24}
        r = self.c.chat(model=self.model, messages=msgs, options=opts)
        self.assertIn("Paris", r.message.content)
        self.assertEqual(r.message.role, "assistant")
        self.assertTrue(r.done)
        self.assertGreater(r.eval_count, 0)
        self.assertGreater(r.prompt_eval_count, 0)
        parts = list(self.c.chat(model=self.model, messages=msgs, options=opts, stream=True))
        self.assertTrue(parts[-1].done)
        self.assertEqual("".join(p.message.content for p in parts), r.message.content)
        self.assertFalse(any(p.done for p in parts[:-1]))

    def test_generate_whole_and_streamed(self):
        opts = {"temperature": 0, "num_predict": 12}
        r = self.c.generate(model=self.model, prompt="Why is the sky blue?", options=opts)
        self.assertTrue(r.response)
        self.assertEqual(r.done_reason, "length")
        parts = list(self.c.generate(model=self.model, prompt="Why is the sky blue?", options=opts, stream=True))
        self.assertEqual("".join(p.response for p in parts), r.response)
        raw = self.c.generate(model=self.model, prompt="Once upon a time", raw=True, options=opts)
        self.assertTrue(raw.response)

    def test_stop_option(self):
        r = self.c.chat(
            model=self.model,
            messages=[{"role": "user", "content": "List three fruits, one per line."}],
            options={"temperature": 0, "num_predict": 40, "stop": ["\n"]},
        )
        self.assertNotIn("\n", r.message.content)

    def test_structured_output(self):
        # maxLength: a 135M model may repeat itself inside a string; the grammar then closes it.
        name = {"type": "string", "maxLength": 30}
        schema = {"type": "object", "properties": {"city": name, "country": name}, "required": ["city", "country"]}
        r = self.c.chat(
            model=self.model,
            messages=[{"role": "user", "content": "Name a city and its country."}],
            format=schema,
            options={"temperature": 0, "num_predict": 80},
        )
        value = json.loads(r.message.content)
        self.assertEqual(set(value), {"city", "country"})
        r = self.c.generate(model=self.model, prompt="Reply with a JSON object giving a dog's name and age.",
                            format="json", options={"temperature": 0, "num_predict": 200})
        self.assertEqual(r.done_reason, "stop")
        self.assertIsInstance(json.loads(r.response), dict)

    def test_list_show_ps_version(self):
        names = [m.model for m in self.c.list().models]
        self.assertEqual(names, [self.model])
        show = self.c.show(self.model)
        self.assertEqual(show.details.family, "llama")
        self.assertIn("<|im_start|>", show.template)
        self.assertIn("general.architecture", show.modelinfo)
        self.assertIn("completion", show.capabilities)
        self.assertEqual([m.model for m in self.c.ps().models], [self.model])
        self.assertTrue(self.c._client.get("/api/version").json()["version"])

    def test_embed(self):
        r = self.c.embed(model=self.model, input=["hello world", "goodbye"])
        self.assertEqual(len(r.embeddings), 2)
        self.assertEqual(len(r.embeddings[0]), 576)

    def test_unknown_model_is_an_ollama_error(self):
        with self.assertRaises(ollama.ResponseError) as e:
            self.c.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        self.assertEqual(e.exception.status_code, 404)
        self.assertIn("no-such-model", e.exception.error)


if __name__ == "__main__":
    unittest.main(verbosity=2)
