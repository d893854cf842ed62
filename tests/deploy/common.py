"""Shared by the deployment tests: the repository's paths, a small Dockerfile reader, and the
chart rendered by the real `helm` (tests/deploy/requirements.txt)."""

import json
import os
import re
import shlex
import subprocess

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCKER = os.path.join(ROOT, "docker")
CHART = os.path.join(ROOT, "helm", "squish-serve")
DOCKERFILES = {"cpu": os.path.join(DOCKER, "Dockerfile.cpu"), "cuda": os.path.join(DOCKER, "Dockerfile.cuda")}


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def instructions(dockerfile):
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in read(dockerfile).splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        current = ""
    return out


def final_stage(dockerfile):
    """The instructions of the last stage: what the image runs."""
    ins = instructions(dockerfile)
    last = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last:]


def image_env(dockerfile):
    """The ENV of the final stage as a dict (KEY=VALUE pairs, as the Dockerfiles write them)."""
    env = {}
    for word, args in final_stage(dockerfile):
        if word == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def exec_form(dockerfile, word):
    """An exec-form (JSON) ENTRYPOINT/CMD of the final stage, or None."""
    found = [args for w, args in final_stage(dockerfile) if w == word]
    return json.loads(found[-1]) if found else None


def cargo_builds(dockerfile):
    """The `cargo build ...` commands a Dockerfile runs."""
    cmds = []
    for word, args in instructions(dockerfile):
        if word == "RUN":
            cmds += [c.strip() for c in args.split("&&") if c.strip().startswith("cargo build")]
    return cmds


def compose():
    return yaml.safe_load(read(os.path.join(DOCKER, "docker-compose.yml")))


def interpolate(value, env):
    """Compose's ${VAR:-default} and ${VAR} against `env`."""
    def one(m):
        name, default = m.group(1), m.group(3) or ""
        return env.get(name) or default
    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(:-([^}]*))?\}", one, value)


def helm(*args, check=True):
    return subprocess.run(["helm", *args], capture_output=True, text=True, check=check)


def render(*values_files, sets=(), release="squish", namespace="llm"):
    """The chart's manifests for these values files (relative to the chart) and --set pairs."""
    args = ["template", release, CHART, "--namespace", namespace]
    for f in values_files:
        args += ["-f", os.path.join(CHART, f)]
    for s in sets:
        args += ["--set", s]
    out = helm(*args)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kind(docs, k):
    found = [d for d in docs if d["kind"] == k]
    assert len(found) == 1, f"{k}: {len(found)} rendered"
    return found[0]
