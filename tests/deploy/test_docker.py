"""The Dockerfiles and the compose file: hadolint-clean, built with the README's commands, and
wired the way the server reads its settings (every check here reads the real files)."""

import os
import subprocess
import unittest

import yaml

from common import DOCKERFILES, ROOT, cargo_builds, compose, exec_form, final_stage, image_env, instructions, read


class Dockerfiles(unittest.TestCase):
    def test_hadolint_finds_nothing(self):
        for flavour, path in DOCKERFILES.items():
            o = subprocess.run(["hadolint", path], capture_output=True, text=True)
            self.assertEqual(o.returncode, 0, f"{flavour}: {o.stdout}{o.stderr}")

    def test_build_steps_are_the_documented_commands(self):
        docs = {name: read(os.path.join(ROOT, name)) for name in ["README.md", "docs/deploy.md"]}
        for flavour, path in DOCKERFILES.items():
            builds = cargo_builds(path)
            self.assertEqual(len(builds), 1, f"{flavour}: {builds}")
            for name, text in docs.items():
                lines = [line.split("#")[0].strip() for line in text.splitlines()]
                self.assertIn(builds[0], lines, f"{name} does not document {flavour}'s `{builds[0]}`")
                image = f"docker build -f docker/Dockerfile.{flavour} -t squish:{flavour} ."
                self.assertIn(image, lines, f"{name} does not document `{image}`")
        self.assertIn("--features cuda", cargo_builds(DOCKERFILES["cuda"])[0])

    def test_runtime_stage_serves_from_the_volume_as_non_root(self):
        for flavour, path in DOCKERFILES.items():
            stage = final_stage(path)
            words = [w for w, _ in stage]
            env = image_env(path)
            self.assertEqual(exec_form(path, "ENTRYPOINT"), ["squish", "serve"], flavour)
            self.assertNotIn("CMD", words, f"{flavour}: a CMD would override SQUISH_* settings")
            self.assertEqual(env["SQUISH_HOST"], "0.0.0.0", f"{flavour}: a container's loopback is its own")
            self.assertEqual([a for w, a in stage if w == "EXPOSE"], [env["SQUISH_PORT"]], flavour)
            self.assertEqual(env["SQUISH_HOME"], "/models", flavour)
            self.assertTrue(env["HF_HOME"].startswith("/models/"), flavour)
            self.assertIn('["/models"]', [a for w, a in stage if w == "VOLUME"], flavour)
            user = [a for w, a in stage if w == "USER"][-1].split(":")[0]
            self.assertNotIn(user, ("0", "root"), flavour)
            copies = [a for w, a in stage if w == "COPY"]
            self.assertEqual(copies, ["--from=builder /usr/local/bin/squish /usr/local/bin/squish"], f"{flavour}: only the binary")
            health = [a for w, a in stage if w == "HEALTHCHECK"][0]
            self.assertIn("http://127.0.0.1:${SQUISH_PORT}/health", health, flavour)
            for key in ("SQUISH_MODEL", "SQUISH_API_KEY"):
                self.assertNotIn(key, env, f"{flavour}: {key} belongs to the deployment, not the image")

    def test_build_context_holds_the_sources(self):
        ignore = read(os.path.join(ROOT, ".dockerignore")).split()
        for needed in ("!Cargo.toml", "!Cargo.lock", "!crates"):
            self.assertIn(needed, ignore)
        for path in DOCKERFILES.values():
            copied = [a for w, a in instructions(path) if w == "COPY" and "--from" not in a]
            self.assertEqual(copied, ["Cargo.toml Cargo.lock ./", "crates crates"])

    def test_the_public_ci_builds_with_the_same_commands(self):
        workflow = yaml.safe_load(read(os.path.join(ROOT, ".github", "workflows", "deploy.yml")))
        runs = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
        for flavour in DOCKERFILES:
            self.assertIn(f"docker build -f docker/Dockerfile.{flavour} -t squish:{flavour} .", runs)
        self.assertTrue(any("/v1/chat/completions" in r and "Paris" in r for r in runs))


class Compose(unittest.TestCase):
    def setUp(self):
        self.c = compose()
        self.services = self.c["services"]
        self.env = image_env(DOCKERFILES["cpu"])

    def test_profiles_cover_cpu_and_cuda(self):
        self.assertEqual(self.services["serve-cpu"]["profiles"], ["cpu"])
        self.assertEqual(self.services["serve-cuda"]["profiles"], ["cuda"])
        self.assertEqual(sorted(self.services["pull"]["profiles"]), ["cpu", "cuda"])
        for name, flavour in (("serve-cpu", "cpu"), ("serve-cuda", "cuda"), ("pull", "cpu")):
            s = self.services[name]
            self.assertEqual(s["build"]["dockerfile"], f"docker/Dockerfile.{flavour}")
            self.assertEqual(s["build"]["context"], "..")
            self.assertEqual(s["image"], f"squish:{flavour}")

    def test_servers_use_the_image_settings_and_the_models_volume(self):
        port = self.env["SQUISH_PORT"]
        for name in ("serve-cpu", "serve-cuda"):
            s = self.services[name]
            self.assertNotIn("command", s, f"{name}: the image's entrypoint serves")
            self.assertNotIn("SQUISH_HOST", s["environment"], name)
            self.assertNotIn("SQUISH_PORT", s["environment"], name)
            self.assertIn("SQUISH_MODEL", s["environment"], name)
            self.assertTrue(s["ports"][0].endswith(f":{port}"), f"{name}: {s['ports']}")
            self.assertIn(f"models:{self.env['SQUISH_HOME']}", s["volumes"], name)
            self.assertEqual(s["healthcheck"]["test"], ["CMD", "curl", "-fsS", f"http://127.0.0.1:{port}/health"], name)
            self.assertEqual(s["restart"], "unless-stopped", name)
            self.assertEqual(s["depends_on"]["pull"]["condition"], "service_completed_successfully", name)
        gpu = self.services["serve-cuda"]["deploy"]["resources"]["reservations"]["devices"][0]
        self.assertEqual((gpu["driver"], gpu["capabilities"]), ("nvidia", ["gpu"]))
        self.assertIn("models", self.c["volumes"])

    def test_pull_fills_the_same_volume(self):
        p = self.services["pull"]
        self.assertEqual(p["entrypoint"], ["squish", "pull"])
        self.assertIn(f"models:{self.env['SQUISH_HOME']}", p["volumes"])
        self.assertEqual(p["restart"], "no")
        # The model pulled is the model served.
        served = self.services["serve-cpu"]["environment"]["SQUISH_MODEL"]
        self.assertEqual(p["command"], [served])


if __name__ == "__main__":
    unittest.main(verbosity=2)
