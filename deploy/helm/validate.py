"""Validate `helm template` output (stdin) against the Kubernetes API schemas.

Core kinds (Deployment, Service, ConfigMap, ...) are checked strictly (unknown fields
refused) with kubernetes-validate, which ships the Kubernetes OpenAPI schemas in its
wheel, so no network is needed. KEDA's ScaledObject, a custom resource, is checked
against the openAPIV3Schema of KEDA's own CRD (path given as the first argument).
Exits non-zero naming every document and field at fault.
"""

from __future__ import annotations

import sys

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.31.0"


def main() -> int:
    crd_path = sys.argv[1]
    with open(crd_path) as f:
        crd = yaml.safe_load(f)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    scaled_schema = version["schema"]["openAPIV3Schema"]
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    if not docs:
        print("no documents on stdin", file=sys.stderr)
        return 1
    failures = 0
    kinds: dict[str, int] = {}
    for doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        kinds[kind] = kinds.get(kind, 0) + 1
        try:
            if kind == "ScaledObject":
                jsonschema.validate(doc, scaled_schema)
            else:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            failures += 1
            where = "/".join(str(p) for p in getattr(exc, "path", []))
            print(f"{kind}/{name}: {where}: {exc.message}", file=sys.stderr)
        except kubernetes_validate.InvalidSchemaError as exc:
            failures += 1
            print(f"{kind}/{name}: no schema: {exc}", file=sys.stderr)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"{'FAILED' if failures else 'valid'} (Kubernetes {K8S_VERSION}): {summary}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
