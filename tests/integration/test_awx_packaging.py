"""AWX packaging: the execution environment builds a valid ansible-builder context,
and every survey in docs/awx/ is a well-formed AWX survey whose variables the
job template's playbook (with what it imports) really uses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ansible

REPO = Path(__file__).resolve().parents[2]
SURVEYS = sorted((REPO / "docs" / "awx").glob("*.json"))
# Survey file -> the playbook its job template runs.
PLAYBOOKS = {
    "site": "site.yml",
    "health_sweep": "health_sweep.yml",
    "quarantine": "quarantine.yml",
    "release": "release.yml",
    "replace": "replace.yml",
    "placement": "placement.yml",
}
SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}


def strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def playbook_corpus(playbook: Path, seen: set[Path] | None = None) -> str:
    """The playbook's code plus every playbook it imports and every role of this collection it runs."""
    seen = seen if seen is not None else set()
    if playbook in seen:
        return ""
    seen.add(playbook)
    text = strip_comments(playbook.read_text())
    parts = [text]
    for imported in re.findall(r"import_playbook:\s*(?:gpufleet\.cluster\.)?([\w./-]+)", text):
        path = playbook.parent / (imported if imported.endswith((".yml", ".yaml")) else f"{imported}.yml")
        if path.exists():
            parts.append(playbook_corpus(path, seen))
    for role in set(re.findall(r"gpufleet\.cluster\.(\w+)", text)):
        role_dir = REPO / "roles" / role
        if role_dir.is_dir():
            parts += [strip_comments(f.read_text()) for f in sorted(role_dir.rglob("*"))
                      if f.is_file() and f.suffix in {".yml", ".yaml", ".j2"}]
    return "\n".join(parts)


def test_every_job_template_has_a_survey():
    assert {path.stem for path in SURVEYS} == set(PLAYBOOKS)


@pytest.mark.parametrize("survey_path", SURVEYS, ids=lambda p: p.stem)
def test_survey_is_a_valid_awx_survey_spec(survey_path):
    survey = json.loads(survey_path.read_text())
    assert set(survey) == {"name", "description", "spec"}
    assert survey["spec"], "an empty survey"
    variables = [question["variable"] for question in survey["spec"]]
    assert len(variables) == len(set(variables)), "a variable is asked twice"
    for question in survey["spec"]:
        assert question["question_name"] and isinstance(question["required"], bool)
        assert question["type"] in SURVEY_TYPES
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", question["variable"])
        if question["type"] in {"multiplechoice", "multiselect"}:
            assert question["default"] in question["choices"]
        if question["type"] == "integer":
            assert isinstance(question["default"], int)
            assert question["min"] <= question["default"] <= question["max"]
        if question["type"] == "password":
            assert question["default"] == "", "a secret default would be stored in the template"


@pytest.mark.parametrize("survey_path", SURVEYS, ids=lambda p: p.stem)
def test_survey_names_only_variables_the_playbook_uses(survey_path):
    playbook = REPO / "playbooks" / PLAYBOOKS[survey_path.stem]
    assert playbook.is_file(), f"the {survey_path.stem} survey's job template runs a missing {playbook}"
    corpus = playbook_corpus(playbook)
    unused = [question["variable"] for question in json.loads(survey_path.read_text())["spec"]
              if not re.search(rf"\b{question['variable']}\b", corpus)]
    assert not unused, f"{playbook.name} (with its imports and roles) never uses {unused}"


def test_ansible_builder_creates_the_execution_environment_context(tmp_path):
    context = tmp_path / "context"
    builder = Path(sys.executable).parent / "ansible-builder"
    proc = subprocess.run([str(builder), "create", "-f", "execution-environment.yml", "-c", str(context)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    containerfile = next(context / name for name in ("Containerfile", "Dockerfile")
                         if (context / name).exists())
    steps = containerfile.read_text()
    assert "pip install --no-cache-dir --no-deps /tmp/gpufleet/services" in steps
    assert "ansible-galaxy collection install" in steps

    # The Python dependencies are gpufleet's pinned runtime lock.
    node_lock = {line for line in (REPO / "requirements" / "node.txt").read_text().splitlines()
                 if line and not line.startswith("#")}
    built_lines = (context / "_build" / "requirements.txt").read_text().splitlines()
    built = {line.split("#")[0].strip() for line in built_lines}
    assert node_lock <= built

    # Every collection galaxy.yml depends on is installed into the EE.
    galaxy_deps = yaml.safe_load((REPO / "galaxy.yml").read_text())["dependencies"]
    ee_requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    ee_collections = {collection["name"] for collection in ee_requirements["collections"]}
    assert set(galaxy_deps) <= ee_collections

    # The collection's sources and the services package are in the context, laid out as a collection.
    collection = context / "_build" / "gpufleet" / "collection"
    assert (collection / "galaxy.yml").is_file()
    for role in ("k3s", "nvidia_runtime"):
        assert (collection / "roles" / role / "tasks" / "main.yml").is_file()
    assert (collection / "plugins" / "modules").is_dir()
    assert (context / "_build" / "gpufleet" / "services" / "pyproject.toml").is_file()
    bindep = (context / "_build" / "bindep.txt").read_text()
    assert "openssh-clients [platform:rpm]" in bindep
