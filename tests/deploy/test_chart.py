"""helm/squish-serve rendered by the real `helm` for each values set a user would use, every
core manifest validated by kubernetes-validate against the Kubernetes schemas, the KEDA and
Prometheus Operator objects against the fields their CRDs define, and the wiring between them
(the Secret, the probes, the selectors, the query's labels) checked object by object."""

import base64
import os
import shutil
import subprocess
import tempfile
import unittest

import jsonschema
import yaml

from common import CHART, DOCKERFILES, helm, image_env, kind, render

VALUE_SETS = {"default": [], "gpu": ["values-gpu.yaml"], "keda": ["ci/keda-values.yaml"], "hpa": ["ci/hpa-values.yaml"]}
CORE_KINDS = {"ServiceAccount", "ConfigMap", "Secret", "PersistentVolumeClaim", "Service", "Deployment", "HorizontalPodAutoscaler"}

# The fields of keda.sh/v1alpha1 ScaledObject and monitoring.coreos.com/v1 ServiceMonitor this
# chart sets, with the types their CRDs give them (no CRD schemas can be fetched here).
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {"type": "object", "additionalProperties": False, "required": ["name"],
                                   "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"}}},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer"},
                "cooldownPeriod": {"type": "integer"},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                    "properties": {"type": {"const": "prometheus"}, "metadata": {
                        "type": "object", "required": ["serverAddress", "query", "threshold"],
                        "additionalProperties": {"type": "string"},
                        "properties": {"serverAddress": {"type": "string", "pattern": "^https?://"}, "query": {"type": "string"},
                                       "threshold": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"},
                                       "activationThreshold": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"},
                                       "ignoreNullValues": {"enum": ["true", "false"]}}}}}},
            },
        },
    },
}
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"}, "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                   "authorization": {"type": "object", "additionalProperties": False, "properties": {
                                       "type": {"type": "string"},
                                       "credentials": {"type": "object", "additionalProperties": False, "required": ["name", "key"],
                                                       "properties": {"name": {"type": "string"}, "key": {"type": "string"}}}}}}}},
            },
        },
    },
}


class Chart(unittest.TestCase):
    def test_lint_is_clean_for_every_values_set(self):
        for name, files in VALUE_SETS.items():
            args = ["lint", CHART, "--strict"] + [a for f in files for a in ("-f", os.path.join(CHART, f))]
            o = helm(*args, check=False)
            self.assertEqual(o.returncode, 0, f"{name}: {o.stdout}{o.stderr}")

    def test_manifests_validate_against_the_kubernetes_schemas(self):
        for name, files in VALUE_SETS.items():
            docs = render(*files)
            core = [d for d in docs if d["kind"] in CORE_KINDS]
            self.assertEqual(len(core) + sum(d["kind"] in ("ScaledObject", "ServiceMonitor") for d in docs), len(docs), name)
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
                yaml.safe_dump_all(core, f)
                f.flush()
                o = subprocess.run(["kubernetes-validate", "--strict", f.name], capture_output=True, text=True)
            self.assertEqual(o.returncode, 0, f"{name}: {o.stdout}{o.stderr}")
            self.assertEqual(o.stdout.count(" passed for resource "), len(core), f"{name}: {o.stdout}")
            for d in docs:
                if d["kind"] == "ScaledObject":
                    jsonschema.validate(d, SCALED_OBJECT)
                if d["kind"] == "ServiceMonitor":
                    jsonschema.validate(d, SERVICE_MONITOR)

    def test_each_values_set_renders_what_it_asks_for(self):
        kinds = {name: sorted(d["kind"] for d in render(*files)) for name, files in VALUE_SETS.items()}
        base = ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service", "ServiceAccount"]
        self.assertEqual(kinds["default"], base)
        self.assertEqual(kinds["gpu"], base)
        self.assertEqual(kinds["keda"], sorted(base + ["Secret", "ScaledObject", "ServiceMonitor"]))
        self.assertEqual(kinds["hpa"], sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Service", "ServiceAccount"]))

    def test_values_schema_and_guards_reject_mistakes(self):
        for sets, says in [
            (["model.quant=int5"], "model.quant"),
            (["image.flavour=rocm"], "image.flavour"),
            (["replicas=2"], "Additional property replicas"),
            (["keda.enabled=true", "autoscaling.enabled=true"], "enable one"),
            (["gpu.count=1"], "needs image.flavour: cuda"),
        ]:
            args = ["template", "t", CHART] + [a for s in sets for a in ("--set", s)]
            o = helm(*args, check=False)
            self.assertNotEqual(o.returncode, 0, sets)
            self.assertIn(says, o.stderr, sets)

    def test_container_settings_match_the_image(self):
        env = image_env(DOCKERFILES["cpu"])
        docs = render()
        cm = kind(docs, "ConfigMap")["data"]
        for key in ("SQUISH_HOST", "SQUISH_PORT", "SQUISH_HOME", "HF_HOME"):
            self.assertEqual(cm[key], env[key], key)
        pod = kind(docs, "Deployment")["spec"]["template"]["spec"]
        main = pod["containers"][0]
        self.assertNotIn("command", main, "the image's entrypoint (squish serve) runs")
        self.assertEqual(main["ports"], [{"name": "http", "containerPort": int(env["SQUISH_PORT"]), "protocol": "TCP"}])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            self.assertEqual(main[probe]["httpGet"], {"path": "/health", "port": "http"}, probe)
        self.assertEqual(cm["SQUISH_MODEL"], "smollm2:135m@int4")
        init = pod["initContainers"][0]
        self.assertEqual(init["command"] + init["args"], ["squish", "pull", "smollm2:135m", "--to", "int4"])
        mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
        self.assertEqual(mounts["models"], env["SQUISH_HOME"])
        self.assertEqual({m["name"]: m["mountPath"] for m in init["volumeMounts"]}, mounts)
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertFalse(main["securityContext"]["allowPrivilegeEscalation"])

    def test_gpu_values_ask_for_a_gpu_and_the_cuda_image(self):
        pod = kind(render("values-gpu.yaml"), "Deployment")["spec"]["template"]["spec"]
        main = pod["containers"][0]
        self.assertEqual(main["resources"]["limits"]["nvidia.com/gpu"], 1)
        self.assertTrue(main["image"].endswith("-cuda"))
        self.assertEqual(main["args"][-2:], ["--device", "cuda"])
        self.assertEqual(pod["tolerations"][0]["key"], "nvidia.com/gpu")

    def test_api_key_lives_only_in_a_secret(self):
        docs = render("ci/keda-values.yaml")
        secret = kind(docs, "Secret")
        self.assertEqual(base64.b64decode(secret["data"]["api-key"]).decode(), "test-key")
        for d in docs:
            if d["kind"] != "Secret":
                self.assertNotIn("test-key", yaml.safe_dump(d), d["kind"])
        env = kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
        self.assertEqual(env, [{"name": "SQUISH_API_KEY", "valueFrom": {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "api-key"}}}])
        auth = kind(docs, "ServiceMonitor")["spec"]["endpoints"][0]["authorization"]
        self.assertEqual(auth, {"type": "Bearer", "credentials": {"name": secret["metadata"]["name"], "key": "api-key"}})

    def test_keda_and_the_service_monitor_point_at_this_release(self):
        docs = render("ci/keda-values.yaml", namespace="llm")
        deploy, service = kind(docs, "Deployment"), kind(docs, "Service")
        so = kind(docs, "ScaledObject")
        self.assertEqual(so["spec"]["scaleTargetRef"], {"apiVersion": "apps/v1", "kind": "Deployment", "name": deploy["metadata"]["name"]})
        self.assertNotIn("replicas", deploy["spec"], "KEDA owns the replica count")
        trigger = so["spec"]["triggers"][0]["metadata"]
        self.assertEqual(trigger["threshold"], "8", "server.maxBatch sequences per replica")
        # The ServiceMonitor labels series with namespace and service: the query selects those.
        selector = f'{{namespace="llm",service="{service["metadata"]["name"]}"}}'
        self.assertEqual(trigger["query"], f"sum(squish_requests_running{selector}) + sum(squish_queue_depth{selector})")
        sm = kind(docs, "ServiceMonitor")
        for k, v in sm["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(service["metadata"]["labels"][k], v)
        self.assertEqual(sm["spec"]["endpoints"][0]["port"], service["spec"]["ports"][0]["name"])
        self.assertEqual(sm["spec"]["endpoints"][0]["path"], "/metrics")

    def test_a_model_path_is_served_without_pulling(self):
        docs = render("ci/hpa-values.yaml")
        pod = kind(docs, "Deployment")["spec"]["template"]["spec"]
        self.assertNotIn("initContainers", pod)
        self.assertEqual(kind(docs, "ConfigMap")["data"]["SQUISH_MODEL"], "/models/smollm2-int4")
        self.assertEqual(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "shared-models")
        hpa = kind(docs, "HorizontalPodAutoscaler")
        self.assertEqual(hpa["spec"]["maxReplicas"], 3)

    def test_notes_tell_how_to_reach_it(self):
        # `helm template` skips NOTES.txt: a copy of the chart renders it with `tpl` instead.
        with tempfile.TemporaryDirectory() as tmp:
            chart = shutil.copytree(CHART, os.path.join(tmp, "chart"))
            shutil.copy(os.path.join(chart, "templates", "NOTES.txt"), os.path.join(chart, "notes.txt"))
            with open(os.path.join(chart, "templates", "notes.yaml"), "w") as f:
                f.write('notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n')
            o = helm("template", "squish", chart, "-f", os.path.join(chart, "ci", "keda-values.yaml"), "--show-only", "templates/notes.yaml")
        notes = yaml.safe_load(o.stdout)["notes"]
        self.assertIn("kubectl port-forward -n default svc/squish-squish-serve 8080:8080", notes)
        self.assertIn("kubectl get secret -n default squish-squish-serve-api-key", notes)
        self.assertIn("KEDA scales 0-8 replicas", notes)
        self.assertIn("the init container pulls and converts it first", notes)

if __name__ == "__main__":
    unittest.main(verbosity=2)
