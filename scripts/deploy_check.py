"""Checks that every `AIMATRIX__SECTION__KEY` setting deploy/ names is a key of the server's
configuration, as `server/src/config.rs` documents it (its module comment lists every
`[section]` and `key`), and that the StatefulSet's replicas equal `cluster.processes`.

A misspelt key would make the server refuse to start (`unknown field`): this finds it before
anyone deploys. Run by scripts/deploy-check.sh (needs PyYAML, which yamllint brings).
"""

import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


def documented_keys():
    """`section.key` for each key in config.rs's documented example."""
    keys, section = set(), None
    for line in (ROOT / "server/src/config.rs").read_text().splitlines():
        if not line.startswith("//!"):
            continue
        text = line[3:].strip()
        header = re.fullmatch(r"\[\[?([a-z_.]+)\]\]?", text)
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


def main():
    keys = documented_keys()
    problems = []
    processes, replicas = None, None
    files = sorted((ROOT / "deploy").rglob("*.yaml"))
    for path in files:
        for document in yaml.safe_load_all(path.read_text()):
            if not document:
                continue
            for variable, where in settings(document):
                key = ".".join(variable[len("AIMATRIX__"):].lower().split("__"))
                if key not in keys:
                    problems.append(f"{path.relative_to(ROOT)}{where}: {variable} is no configuration key ({key})")
            if document.get("kind") == "ConfigMap":
                processes = document["data"].get("AIMATRIX__CLUSTER__PROCESSES")
            if document.get("kind") == "StatefulSet":
                replicas = document["spec"]["replicas"]
    if processes is not None and replicas is not None and int(processes) != int(replicas):
        problems.append(f"the StatefulSet has {replicas} replicas but cluster.processes is {processes}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"{len(files)} files: every AIMATRIX__ setting is a configuration key")


if __name__ == "__main__":
    main()
