"""With an API key (server started with SQUISH_API_KEY): every route but /health answers 401
without it, OpenAI-shaped on /v1 and Ollama-shaped on /api; the key works as a Bearer token
for the openai and ollama clients."""

import unittest

import httpx
import ollama
import openai

from common import KEY, URL, client

ROUTES = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
          ("POST", "/v1/embeddings"), ("GET", "/metrics"), ("POST", "/api/chat"), ("POST", "/api/generate"),
          ("GET", "/api/tags"), ("POST", "/api/show"), ("GET", "/api/ps"), ("GET", "/api/version"),
          ("POST", "/api/embed")]


class Auth(unittest.TestCase):
    def test_every_route_but_health_needs_the_key(self):
        self.assertNotEqual(KEY, "none")
        self.assertEqual(httpx.get(URL + "/health").status_code, 200)
        for method, path in ROUTES:
            for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY}):
                r = httpx.request(method, URL + path, json={}, headers=headers)
                self.assertEqual(r.status_code, 401, f"{method} {path} with {headers}")
                err = r.json()["error"]
                if path.startswith("/api/"):
                    self.assertIsInstance(err, str)
                else:
                    self.assertEqual(err["code"], "invalid_api_key")

    def test_clients_with_the_key_work(self):
        self.assertEqual(len(client().models.list().data), 1)
        with self.assertRaises(openai.AuthenticationError):
            openai.OpenAI(base_url=URL + "/v1", api_key="wrong", max_retries=0).models.list()
        c = ollama.Client(host=URL, headers={"Authorization": f"Bearer {KEY}"})
        self.assertEqual(len(c.list().models), 1)
        with self.assertRaises(ollama.ResponseError) as e:
            ollama.Client(host=URL).list()
        self.assertEqual(e.exception.status_code, 401)


if __name__ == "__main__":
    unittest.main(verbosity=2)
