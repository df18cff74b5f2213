"""Reading YAML manifests the way kubectl does, as far as the API's scalars are concerned."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["ManifestLoader", "load_documents"]


class ManifestLoader(yaml.SafeLoader):
    """A safe loader that keeps unquoted timestamps as text.

    kubectl converts YAML to JSON, where ``until: 2030-01-01T12:00:00Z`` stays a string; PyYAML
    would make it a datetime (and accept forms the API server refuses, such as a space for the T).
    """


ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_documents(text: str) -> list[Any]:
    """Every document of a (multi-document) YAML text; raises `yaml.YAMLError` on bad YAML."""
    return list(yaml.load_all(text, Loader=ManifestLoader))
