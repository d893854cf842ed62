"""The containers' own commands, run here with the real binary and the same environment: the
image's ENV and ENTRYPOINT (docker/Dockerfile.cpu), the compose services' settings, and the
chart's rendered init container and server (Deployment, ConfigMap, Secret). /models becomes a
scratch directory; the Hub is the stand-in at HF_ENDPOINT (set by crates/squish/tests/deploy.rs).

One deviation from a container: the image listens on 0.0.0.0 (test_docker checks it); here the
server is given 127.0.0.2 and a free port through the same SQUISH_HOST/SQUISH_PORT variables,
so tests bind loopback only and the output proves both variables are read."""

import base64
import os
import re
import socket
import subprocess
import unittest

import httpx

from common import CHART, DOCKERFILES, ROOT, compose, exec_form, image_env, interpolate, kind, read, render

BIN = os.environ["SQUISH_BIN"]
SCRATCH = os.environ["SCRATCH"]
VOLUME = os.path.join(SCRATCH, "models")  # the models volume, shared by every step as in a pod
QUESTION = {"role": "user", "content": "What is the capital of France?"}


def on_volume(env):
    return {k: VOLUME + v[len("/models"):] if v.startswith("/models") else v for k, v in env.items()}


def process_env(env):
    """A clean environment: what the container would have, plus the stand-in Hub."""
    base = {k: os.environ[k] for k in ("PATH", "HF_ENDPOINT", "RAYON_NUM_THREADS")}
    base["HOME"] = os.path.join(SCRATCH, "home")
    return {**base, **on_volume(env)}


def argv(cmd):
    assert cmd[0] == "squish", cmd
    return [BIN, *cmd[1:]]


def run(cmd, env):
    o = subprocess.run(argv(cmd), env=process_env(env), capture_output=True, text=True, timeout=600)
    assert o.returncode == 0, f"{cmd}: {o.stdout}{o.stderr}"
    return o.stdout


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """The server container's process, on 127.0.0.2 and a free port (see the module doc)."""

    def __init__(self, cmd, env):
        self.port = free_port("127.0.0.2")
        env = {**env, "SQUISH_HOST": "127.0.0.2", "SQUISH_PORT": str(self.port)}
        self.proc = subprocess.Popen(argv(cmd), env=process_env(env), stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == f"squish: listening on http://127.0.0.2:{self.port}", line
        self.url = f"http://127.0.0.2:{self.port}"

    def close(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=60) == 0


def metric_names(text):
    return set(re.findall(r"^# TYPE (\w+) ", text, re.M))


def referenced_metrics():
    """Every squish_* name the chart, its values and the deployment docs refer to."""
    texts = [read(os.path.join(ROOT, "docs", "deploy.md"))]
    for d, _, names in os.walk(CHART):
        texts += [read(os.path.join(d, n)) for n in names]
    for values in ([], ["ci/keda-values.yaml"]):
        texts += [str(doc) for doc in render(*values)]
    names = set()
    for t in texts:
        names |= set(re.findall(r"\bsquish_[a-z_]+\b", t))
    return names - {"squish_serve"}  # the chart's own name in template helpers, not a metric


def chat(url, model, headers=None):
    body = {"model": model, "messages": [QUESTION], "max_tokens": 16, "temperature": 0}
    r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


class Containers(unittest.TestCase):
    """In order: compose's pull fills the volume, compose's server serves it, then the chart's
    init container finds it there and the chart's server serves it behind its API key."""

    def test_1_compose_pull_fills_the_volume(self):
        svc = compose()["services"]["pull"]
        env = {**image_env(DOCKERFILES["cpu"]), **{k: interpolate(v, {}) for k, v in svc["environment"].items()}}
        out = run(svc["entrypoint"] + [interpolate(c, {}) for c in svc["command"]], env)
        self.assertIn("pulled smollm2:135m@int4", out)
        self.assertTrue(os.path.isdir(os.path.join(VOLUME, "huggingface")), "HF_HOME is on the volume")

    def test_2_compose_server_answers_with_the_image_settings(self):
        svc = compose()["services"]["serve-cpu"]
        env = {**image_env(DOCKERFILES["cpu"]), **{k: interpolate(v, {}) for k, v in svc["environment"].items()}}
        server = Server(exec_form(DOCKERFILES["cpu"], "ENTRYPOINT"), env)
        try:
            health = [a.replace("127.0.0.1:8080", f"127.0.0.2:{server.port}") for a in svc["healthcheck"]["test"][1:]]
            self.assertEqual(subprocess.run(health, capture_output=True).returncode, 0, health)
            self.assertIn("Paris", chat(server.url, env["SQUISH_MODEL"]))
            names = metric_names(httpx.get(server.url + "/metrics").text)
            missing = referenced_metrics() - names
            self.assertFalse(missing, f"the chart or docs name metrics the server does not emit: {missing}")
        finally:
            server.close()

    def test_3_chart_init_container_then_server_behind_the_secret(self):
        docs = render("ci/keda-values.yaml")
        config = kind(docs, "ConfigMap")["data"]
        secrets = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "Secret"}

        def env_of(container):
            env = dict(config)
            for e in container.get("env", []):
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
            return env

        pod = kind(docs, "Deployment")["spec"]["template"]["spec"]
        init, main = pod["initContainers"][0], pod["containers"][0]
        out = run(init["command"] + init["args"], env_of(init))
        self.assertIn("smollm2:135m@int4 is up to date", out, "a restarted pod must not convert again")

        server = Server(exec_form(DOCKERFILES["cpu"], "ENTRYPOINT") + main["args"], env_of(main))
        try:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                self.assertEqual(httpx.get(server.url + main[probe]["httpGet"]["path"]).status_code, 200, probe)
            self.assertEqual(httpx.get(server.url + "/v1/models").status_code, 401)
            auth = kind(docs, "ServiceMonitor")["spec"]["endpoints"][0]["authorization"]["credentials"]
            key = base64.b64decode(secrets[auth["name"]][auth["key"]]).decode()
            headers = {"Authorization": f"Bearer {key}"}
            models = httpx.get(server.url + "/v1/models", headers=headers).json()
            self.assertEqual([m["id"] for m in models["data"]], ["smollm2:135m"])
            self.assertIn("Paris", chat(server.url, "smollm2:135m", headers))
            scraped = httpx.get(server.url + "/metrics", headers=headers)
            self.assertEqual(scraped.status_code, 200)
            query = kind(docs, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
            used = set(re.findall(r"\bsquish_[a-z_]+\b", query))
            self.assertEqual(used, {"squish_requests_running", "squish_queue_depth"})
            self.assertLessEqual(used, metric_names(scraped.text))
        finally:
            server.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
