"""The `openai` Python package against `squish serve` (the real SmolLM2 model on 127.0.0.1):
chat (whole and streamed), tools, json_schema output, logprobs, completions with echo,
embeddings, models, and its typed errors."""

import json
import math
import unittest

import jsonschema
import openai

from common import client, model_id

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}


class OpenAIClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = client()
        cls.model = model_id()

    def chat(self, **kw):
        return self.c.chat.completions.create(model=self.model, **kw)

    def test_models_lists_the_served_model(self):
        models = self.c.models.list().data
        self.assertEqual(len(models), 1)
        self.assertEqual(self.c.models.retrieve(self.model).id, self.model)

    def test_chat_answers(self):
        r = self.chat(messages=QUESTION, temperature=0, max_tokens=30)
        self.assertIn("Paris", r.choices[0].message.content)
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        self.assertGreater(r.usage.completion_tokens, 0)

    def test_stream_equals_whole_and_reports_usage(self):
        whole = self.chat(messages=QUESTION, temperature=0, max_tokens=24).choices[0].message.content
        chunks = list(
            self.chat(messages=QUESTION, temperature=0, max_tokens=24, stream=True, stream_options={"include_usage": True})
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(len(finishes), 1)
        self.assertIsNotNone(chunks[-1].usage)
        self.assertEqual(chunks[-1].choices, [])

    def test_system_message_and_history(self):
        r = self.chat(
            messages=[
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": [{"type": "text", "text": "Name a color."}]},
            ],
            temperature=0,
            max_tokens=16,
        )
        self.assertTrue(r.choices[0].message.content.strip())

    def test_max_tokens_and_stop(self):
        r = self.chat(messages=[{"role": "user", "content": "Count from 1 to 20."}], temperature=0, max_completion_tokens=5)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 5)
        ask = [{"role": "user", "content": "Write a short poem about the sea."}]
        text = self.chat(messages=ask, temperature=0, max_tokens=40).choices[0].message.content
        # Stop at a word from the middle of the answer: the text before it comes back, not it.
        word = text.split()[len(text.split()) // 2]
        cut = self.chat(messages=ask, temperature=0, max_tokens=40, stop=[word, "never-seen-stop"])
        self.assertEqual(cut.choices[0].message.content, text[: text.index(word)])
        self.assertEqual(cut.choices[0].finish_reason, "stop")

    def test_ignore_eos_generates_max_tokens(self):
        # The answer ends on its own after a few tokens; ignore_eos (vLLM's and llama.cpp's
        # extension, which benchmarks send) runs on to max_tokens.
        short = self.chat(messages=QUESTION, temperature=0, max_tokens=60)
        self.assertEqual(short.choices[0].finish_reason, "stop")
        self.assertLess(short.usage.completion_tokens, 60)
        full = self.chat(messages=QUESTION, temperature=0, max_tokens=60, extra_body={"ignore_eos": True})
        self.assertEqual(full.choices[0].finish_reason, "length")
        self.assertEqual(full.usage.completion_tokens, 60)
        self.assertTrue(full.choices[0].message.content.startswith(short.choices[0].message.content.strip()[:10]))

    def test_n_choices_and_seed(self):
        kw = dict(messages=[{"role": "user", "content": "Tell me a fun fact."}], temperature=1.0, max_tokens=12, seed=7)
        r = self.chat(n=3, **kw)
        self.assertEqual([c.index for c in r.choices], [0, 1, 2])
        self.assertEqual(len({c.message.content for c in r.choices}), 3, "each choice samples with its own seed")
        # The same request on the same server state gives the same text. (Batching and prefix
        # reuse change float rounding, so a seed is not a promise across different loads.)
        self.chat(**kw)
        a, b = self.chat(**kw), self.chat(**kw)
        self.assertEqual(a.choices[0].message.content, b.choices[0].message.content)

    def test_penalties_are_accepted(self):
        r = self.chat(messages=QUESTION, temperature=0, max_tokens=8, presence_penalty=1.0, frequency_penalty=0.5)
        self.assertTrue(r.choices[0].message.content)

    def test_required_tool_call(self):
        r = self.chat(
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[WEATHER_TOOL],
            tool_choice="required",
            temperature=0,
        )
        choice = r.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        self.assertIsNone(choice.message.content)
        call = choice.message.tool_calls[0]
        self.assertEqual(call.type, "function")
        self.assertEqual(call.function.name, "get_weather")
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, WEATHER_TOOL["function"]["parameters"])
        self.assertTrue(call.id)

    def test_named_tool_call_streamed_and_result_round_trip(self):
        other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
        stream = self.chat(
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=[other, WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=0,
            stream=True,
        )
        calls = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        self.assertEqual(calls[0].function.name, "get_weather")
        args = json.loads(calls[0].function.arguments)
        # The call and its result go back in the history; the model answers in text.
        r = self.chat(
            messages=[
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(args)}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 3, \"unit\": \"celsius\"}"},
            ],
            tools=[WEATHER_TOOL],
            tool_choice="none",
            temperature=0,
            max_tokens=30,
        )
        self.assertIsNone(r.choices[0].message.tool_calls)
        self.assertTrue(r.choices[0].message.content)

    def test_json_schema_output_parses_and_validates(self):
        # Bounded strings and lists: a 135M model may repeat itself inside a string, and the
        # grammar then closes it; the test is about the constraint, not the model's taste.
        schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 30},
                "age": {"type": "integer", "minimum": 0},
                "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 2},
            },
            "required": ["name", "age", "hobbies"],
            "additionalProperties": False,
        }
        r = self.chat(
            messages=[{"role": "user", "content": "Describe a fictional person."}],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
            temperature=0,
            max_tokens=250,
        )
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
        self.assertEqual(r.choices[0].finish_reason, "stop")

    def test_json_object_output(self):
        r = self.chat(
            messages=[{"role": "user", "content": "Describe a cat as a JSON object with two keys."}],
            response_format={"type": "json_object"},
            temperature=0,
            max_tokens=200,
        )
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertIsInstance(json.loads(r.choices[0].message.content), dict)

    def test_logprobs(self):
        r = self.chat(messages=QUESTION, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        self.assertEqual("".join(t.token for t in content), r.choices[0].message.content)
        for t in content:
            self.assertLessEqual(t.logprob, 0.0)
            self.assertEqual(len(t.top_logprobs), 3)
            # Greedy: the chosen token is the most likely one.
            self.assertEqual(t.top_logprobs[0].token, t.token)
            self.assertAlmostEqual(t.top_logprobs[0].logprob, t.logprob, places=5)
            self.assertGreaterEqual(t.top_logprobs[0].logprob, t.top_logprobs[1].logprob)

    def test_completions_echo_scores_the_prompt(self):
        prompt = "The capital of France is Paris"
        r = self.c.completions.create(model=self.model, prompt=prompt, max_tokens=0, echo=True, logprobs=1, temperature=0)
        lp = r.choices[0].logprobs
        self.assertEqual(r.choices[0].text, prompt)
        self.assertEqual("".join(lp.tokens), prompt)
        self.assertIsNone(lp.token_logprobs[0])
        self.assertTrue(all(x <= 0 for x in lp.token_logprobs[1:]))
        # " Paris" after "The capital of France is" is likely.
        self.assertGreater(lp.token_logprobs[-1], math.log(0.05))
        gen = self.c.completions.create(model=self.model, prompt="Once upon a time", max_tokens=8, temperature=0)
        self.assertEqual(gen.usage.completion_tokens, 8)
        self.assertEqual(gen.choices[0].finish_reason, "length")

    def test_completions_stream(self):
        whole = self.c.completions.create(model=self.model, prompt="The sky is", max_tokens=10, temperature=0).choices[0].text
        parts = self.c.completions.create(model=self.model, prompt="The sky is", max_tokens=10, temperature=0, stream=True)
        self.assertEqual("".join(p.choices[0].text for p in parts if p.choices), whole)

    def test_embeddings(self):
        r = self.c.embeddings.create(model=self.model, input=["The cat sat on the mat.", "Stock markets fell today."])
        self.assertEqual([d.index for d in r.data], [0, 1])
        a, b = r.data[0].embedding, r.data[1].embedding
        self.assertEqual(len(a), 576)
        self.assertAlmostEqual(sum(x * x for x in a), 1.0, places=3)
        self.assertLess(sum(x * y for x, y in zip(a, b)), 0.9999)
        again = self.c.embeddings.create(model=self.model, input="The cat sat on the mat.", encoding_format="float")
        self.assertTrue(all(abs(x - y) < 1e-4 for x, y in zip(a, again.data[0].embedding)))
        self.assertGreater(r.usage.prompt_tokens, 0)

    def test_errors_are_typed(self):
        with self.assertRaises(openai.NotFoundError) as e:
            self.c.chat.completions.create(model="no-such-model", messages=QUESTION)
        self.assertEqual(e.exception.body["code"], "model_not_found")
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat(messages=QUESTION, temperature=5)
        self.assertEqual(e.exception.body["param"], "temperature")
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat(messages=[{"role": "user", "content": "word " * 5000}])
        self.assertEqual(e.exception.body["code"], "context_length_exceeded")
        with self.assertRaises(openai.BadRequestError):
            self.chat(messages=[])
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat(messages=QUESTION, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}})
        self.assertIn("schema", e.exception.body["message"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
