"""Checks deploy/'s settings, and those of the Helm chart's renderings given as arguments:

- every `AIMATRIX__SECTION__KEY` setting is a key of the server's configuration, as
  `server/src/config.rs` documents it (its module comment lists every `[section]` and `key`):
  a misspelt key would make the server refuse to start (`unknown field`);
- each StatefulSet's replicas equal the `cluster.processes` of its ConfigMap;
- the config files in Secrets (`aimatrix.toml`) parse as TOML, and their users have a name,
  a role the server knows and a token hash or a password;
- a rendering of the chart sets in its ConfigMap every AIMATRIX__ key the static manifest
  deploy/k8s/aimatrix.yaml sets (the two describe one deployment).

Run by scripts/deploy-check.sh (needs PyYAML, which yamllint brings).
"""

import pathlib
import re
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
ROLES = {"reader", "writer", "admin"}


def documented_keys():
    """`section.key` for each key in config.rs's documented example."""
    keys, section = set(), None
    for line in (ROOT / "server/src/config.rs").read_text().splitlines():
        if not line.startswith("//!"):
            continue
        text = line[3:].strip()
        header = re.fullmatch(r"\[\[?([a-z_.]+)\]\]?(\s*#.*)?", text)
        if header:
            section = header.group(1)
            continue
        entry = re.match(r"#?\s*([a-z_]+)\s*=", text)
        if section and entry:
            keys.add(f"{section}.{entry.group(1)}")
    return keys


def settings(document):
    """Every AIMATRIX__ variable a manifest or compose document sets, with where."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and key.startswith("AIMATRIX__"):
                    found.append((key, where))
                if key == "name" and isinstance(value, str) and value.startswith("AIMATRIX__"):
                    found.append((value, where))
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")

    walk(document, "")
    return found


def check_file(path, keys, problems):
    """Checks one file's documents; returns its ConfigMap's AIMATRIX__ keys (or None)."""
    config_map_keys, processes, replicas = None, None, None
    for document in yaml.safe_load_all(path.read_text()):
        if not isinstance(document, dict):
            continue
        for variable, where in settings(document):
            key = ".".join(variable[len("AIMATRIX__"):].lower().split("__"))
            if key not in keys:
                problems.append(f"{path}{where}: {variable} is no configuration key ({key})")
        kind = document.get("kind")
        if kind == "ConfigMap":
            data = document.get("data") or {}
            config_map_keys = {k for k in data if k.startswith("AIMATRIX__")}
            processes = data.get("AIMATRIX__CLUSTER__PROCESSES")
        if kind == "StatefulSet":
            replicas = document["spec"]["replicas"]
        if kind == "Secret" and "aimatrix.toml" in (document.get("stringData") or {}):
            try:
                config = tomllib.loads(document["stringData"]["aimatrix.toml"])
            except tomllib.TOMLDecodeError as e:
                problems.append(f"{path}: Secret {document['metadata']['name']}: aimatrix.toml is not TOML: {e}")
                continue
            for user in config.get("auth", {}).get("users", []):
                if not user.get("name") or user.get("role") not in ROLES:
                    problems.append(f"{path}: a user without a name or with a role not in {sorted(ROLES)}: {user}")
                if not user.get("tokens") and not user.get("password"):
                    problems.append(f"{path}: user {user.get('name')} has neither tokens nor a password")
    if processes is not None and replicas is not None and int(processes) != int(replicas):
        problems.append(f"{path}: the StatefulSet has {replicas} replicas but cluster.processes is {processes}")
    return config_map_keys


def main():
    keys = documented_keys()
    problems = []
    files = sorted((ROOT / "deploy").rglob("*.yaml"))
    files = [f for f in files if "templates" not in f.parts and f.parent.name != "ci"]
    static = None
    for path in files:
        found = check_file(path, keys, problems)
        if path == ROOT / "deploy/k8s/aimatrix.yaml":
            static = found
    for rendering in map(pathlib.Path, sys.argv[1:]):
        found = check_file(rendering, keys, problems)
        missing = (static or set()) - (found or set())
        if missing:
            problems.append(
                f"{rendering}: the chart's ConfigMap does not set {sorted(missing)}, which deploy/k8s/aimatrix.yaml's does"
            )
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"{len(files)} files and {len(sys.argv) - 1} renderings of the chart: every AIMATRIX__ setting is a "
          "configuration key, replicas match processes, configurations parse")


if __name__ == "__main__":
    main()
