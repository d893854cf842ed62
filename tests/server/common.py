"""Shared by the server test scripts: the server's URL (from SQUISH_URL, set by the Rust
harness crates/squish/tests/serve.rs that starts `squish serve`), and small helpers."""

import os
import re
import time

import httpx
import openai

URL = os.environ["SQUISH_URL"]
KEY = os.environ.get("SQUISH_API_KEY", "none")


def client(**kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0, timeout=120, **kw)


def model_id() -> str:
    return client().models.list().data[0].id


def metrics() -> dict:
    """The Prometheus text as {name{labels}: value}, without histogram buckets."""
    text = httpx.get(URL + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.eE+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def wait_for(cond, timeout=10.0, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
