"""Cut the operations postroom uses out of X's OpenAPI description (xdevplatform/xdk,
`specs/openapi.json`) into a document that stands alone: those paths, every component they
reference (followed transitively), and the security schemes. Nothing is edited.

    git --git-dir=<xdk mirror> show HEAD:specs/openapi.json > /tmp/x-openapi.json
    python tests/contracts/extract_x_subset.py /tmp/x-openapi.json tests/contracts/x-openapi.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# (path, method) of every X operation the adapter or the stand-in serves.
OPERATIONS = (
    ("/2/tweets", "post"),
    ("/2/users/me", "get"),
    ("/2/users/{id}/tweets", "get"),
    ("/2/media/upload", "get"),
    ("/2/media/upload/initialize", "post"),
    ("/2/media/upload/{id}/append", "post"),
    ("/2/media/upload/{id}/finalize", "post"),
)


def subset(full: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for path, method in OPERATIONS:
        paths.setdefault(path, {})[method] = full["paths"][path][method]
    seen: set[tuple[str, str]] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/"):
                _, _, kind, name = ref.split("/", 3)
                if (kind, name) not in seen:
                    seen.add((kind, name))
                    walk(full["components"][kind][name])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(paths)
    components: dict[str, dict[str, Any]] = {}
    for kind, name in sorted(seen):
        components.setdefault(kind, {})[name] = full["components"][kind][name]
    components["securitySchemes"] = full["components"]["securitySchemes"]
    return {
        "openapi": full["openapi"],
        "info": full["info"],
        "servers": full.get("servers", []),
        "paths": paths,
        "components": components,
    }


def main(argv: list[str]) -> int:
    source, target = Path(argv[1]), Path(argv[2])
    document = subset(json.loads(source.read_text()))
    target.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
