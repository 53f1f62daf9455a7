"""Renders the chart with the real Helm library (helm-sdkpy) without a Kubernetes cluster.

helm-sdkpy has no `helm template`; its `Install` needs an API server. This module
serves the few endpoints Helm's install uses, on 127.0.0.1: /version, discovery (/api,
/apis and one resource list per group/version the chart uses), 404 for "does it
exist", and it echoes created objects back. Helm renders the chart exactly as for a
real install (values schema, templates, capabilities of Kubernetes 1.31) and returns
the release, whose `manifest` and `hooks` are the rendered objects. Nothing is
scheduled anywhere.
"""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

KUBE_VERSION = ("1", "31")

# (group, version) -> [(plural, kind, namespaced)]
RESOURCES = {
    ("", "v1"): [
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("pods", "Pod", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("namespaces", "Namespace", False),
    ],
    ("apps", "v1"): [("statefulsets", "StatefulSet", True)],
    ("policy", "v1"): [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    ("rbac.authorization.k8s.io", "v1"): [("roles", "Role", True), ("rolebindings", "RoleBinding", True)],
    ("monitoring.coreos.com", "v1"): [
        ("servicemonitors", "ServiceMonitor", True),
        ("prometheusrules", "PrometheusRule", True),
    ],
    ("cert-manager.io", "v1"): [("certificates", "Certificate", True)],
}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/version":
            major, minor = KUBE_VERSION
            return self._send(200, {"major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0"})
        if path == "/api":
            return self._send(
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
                },
            )
        if path == "/apis":
            groups = [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                    "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v},
                }
                for (g, v) in RESOURCES
                if g
            ]
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for (g, v), resources in RESOURCES.items():
            if path == (f"/apis/{g}/{v}" if g else f"/api/{v}"):
                return self._send(
                    200,
                    {
                        "kind": "APIResourceList",
                        "apiVersion": "v1",
                        "groupVersion": f"{g}/{v}" if g else v,
                        "resources": [
                            {
                                "name": n,
                                "singularName": "",
                                "namespaced": ns,
                                "kind": k,
                                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                            }
                            for n, k, ns in resources
                        ],
                    },
                )
        if path.endswith("/secrets"):  # Helm's release storage: no releases yet
            return self._send(200, {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []})
        return self._send(
            404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
        )

    def _echo(self, code):
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = {}
        meta = obj.setdefault("metadata", {})
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("uid", "00000000-0000-0000-0000-000000000001")
        self._send(code, obj)

    def do_POST(self):
        self._echo(201)

    def do_PUT(self):
        self._echo(200)

    def do_PATCH(self):
        self._echo(200)


class FakeKube:
    def __enter__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port = self.server.server_address[1]
        self.kubeconfig = yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "fake", "user": {"token": "fake"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "mqtt"}}],
                "current-context": "fake",
            }
        )
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def render(helm, chart, values=None, release="ferromq", namespace="mqtt"):
    """Returns (objects, hook objects, notes) of `helm install release chart` with values."""
    with FakeKube() as kube:
        config = helm.Configuration(namespace=namespace, kubeconfig=kube.kubeconfig)
        rel = asyncio.run(helm.Install(config).run(release, str(chart), values=values, wait=False, timeout=60))
    objects = [d for d in yaml.safe_load_all(rel["manifest"]) if d]
    hooks = [yaml.safe_load(h["manifest"]) for h in rel.get("hooks") or []]
    return objects, hooks, rel.get("info", {}).get("notes", "")
