"""Edit serverless-llm's `config/models.py` without disturbing anything else in it.

libcst locates the `MODELS` dict, the `ModelConfig` dataclass and the entry to change;
the edit is then spliced into the original text at those positions, so comments,
blank lines and the maintainers' formatting everywhere else survive byte for byte.
Re-deploying a name rewrites only the keyword arguments this project owns; fields a
maintainer added by hand (rank, default, ...) stay.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider
from pydantic import BaseModel, Field

from tasks.serving.serverless_llm.names import check_hf_location, check_model_name

MODELS_FILE = Path("config/models.py")

# serverless-llm's port allocation scheme (the comment block above MODELS).
CATEGORY_PORT_RANGES: dict[str, range] = {
    "SMALL": range(8100, 8200),
    "MEDIUM": range(8200, 8300),
    "REASONING": range(8300, 8400),
}


class ModelsFileError(ValueError):
    """`config/models.py` cannot be read or edited safely; nothing was changed."""


class ModelEntry(BaseModel):
    """The settings of one serverless-llm model entry that this project writes."""

    name: str
    category: str = "SMALL"
    port: int | None = Field(
        default=None,
        ge=1024,
        le=65535,
        description="None: keep the current port or allocate a free one.",
    )
    model_id: str
    display_name: str
    description: str
    hf_repo: str
    hf_file: str
    owned_by: str = "lm-fine-tuning"
    n_ctx: int = 4096
    n_threads: int = 4
    n_batch: int | None = None
    max_concurrent: int | None = None
    routing_category: str | None = "general"
    chat_format: str | None = None
    inference_dir: str | None = Field(
        default=None,
        description="Image directory the inference action pulls (`model_dir`); see images.py.",
    )
    dockerfile: str | None = Field(
        default="llama-server", description="Recipe of that image in the repository's Build."
    )

    def check(self) -> ModelEntry:
        check_model_name(self.name)
        check_hf_location(self.hf_repo, self.hf_file)
        return self


class EditResult(BaseModel):
    """What an edit did to `config/models.py`."""

    source: str
    port: int
    added: bool
    changed: bool
    previous_entry: str | None = Field(
        default=None, description="Source text of the entry before the edit."
    )


@dataclass
class _Field:
    name: str
    annotation: str
    has_default: bool


@dataclass
class _Layout:
    module: cst.Module
    positions: dict
    dict_node: cst.Dict
    fields: dict[str, _Field]
    enums: dict[str, dict[str, str]]  # enum class -> {member name: value}


def _parse(source: str, path: str) -> _Layout:
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise ModelsFileError(
            f"{path} is not valid Python (line {exc.raw_line}, column {exc.raw_column}): {exc.message}; "
            "fix it on the base branch before deploying"
        ) from None
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
    positions = wrapper.resolve(PositionProvider)
    dict_node = None
    fields: dict[str, _Field] = {}
    enums: dict[str, dict[str, str]] = {}
    for statement in module.body:
        if isinstance(statement, cst.ClassDef):
            bases = [module.code_for_node(b.value) for b in statement.bases]
            if any(b.split(".")[-1] in {"Enum", "StrEnum"} or b.endswith("str") for b in bases):
                enums[statement.name.value] = _enum_members(statement)
            if statement.name.value == "ModelConfig":
                fields = _dataclass_fields(module, statement)
        elif isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                target, value = None, None
                if isinstance(small, cst.AnnAssign):
                    target, value = small.target, small.value
                elif isinstance(small, cst.Assign) and len(small.targets) == 1:
                    target, value = small.targets[0].target, small.value
                if isinstance(target, cst.Name) and target.value == "MODELS":
                    if not isinstance(value, cst.Dict):
                        raise ModelsFileError(
                            f"{path}: MODELS is not a dict literal; cannot edit it safely"
                        )
                    dict_node = value
    if dict_node is None:
        raise ModelsFileError(
            f"{path} has no top-level 'MODELS = {{...}}' dict; is this a serverless-llm repository?"
        )
    if not fields:
        raise ModelsFileError(
            f"{path} has no 'class ModelConfig' dataclass; is this a serverless-llm repository?"
        )
    return _Layout(module, positions, dict_node, fields, enums)


def _enum_members(node: cst.ClassDef) -> dict[str, str]:
    members = {}
    for line in node.body.body:
        if isinstance(line, cst.SimpleStatementLine):
            for small in line.body:
                if isinstance(small, cst.Assign) and isinstance(small.targets[0].target, cst.Name):
                    try:
                        members[small.targets[0].target.value] = ast.literal_eval(
                            cst.Module([]).code_for_node(small.value)
                        )
                    except (ValueError, SyntaxError):
                        continue
    return members


def _dataclass_fields(module: cst.Module, node: cst.ClassDef) -> dict[str, _Field]:
    fields = {}
    for line in node.body.body:
        if isinstance(line, cst.SimpleStatementLine):
            for small in line.body:
                if isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name):
                    name = small.target.value
                    fields[name] = _Field(
                        name,
                        module.code_for_node(small.annotation.annotation),
                        small.value is not None,
                    )
    return fields


def _key(element: cst.BaseDictElement) -> str | None:
    if isinstance(element, cst.DictElement) and isinstance(element.key, cst.SimpleString):
        return element.key.evaluated_value
    return None


def _offsets(source: str) -> list[int]:
    starts, total = [0], 0
    for line in source.splitlines(keepends=True):
        total += len(line)
        starts.append(total)
    return starts


def _span(layout: _Layout, node: cst.CSTNode, starts: list[int]) -> tuple[int, int]:
    pos = layout.positions[node]
    return starts[pos.start.line - 1] + pos.start.column, starts[pos.end.line - 1] + pos.end.column


def read_entries(source: str, path: str = str(MODELS_FILE)) -> dict[str, dict[str, object]]:
    """The literal keyword arguments of every `MODELS` entry (`ModelCategory.SMALL` stays as text)."""
    layout = _parse(source, path)
    entries = {}
    for element in layout.dict_node.elements:
        key = _key(element)
        if key is None or not isinstance(element.value, cst.Call):
            continue
        values: dict[str, object] = {}
        for arg in element.value.args:
            if arg.keyword is None:
                continue
            code = layout.module.code_for_node(arg.value)
            try:
                values[arg.keyword.value] = ast.literal_eval(code)
            except (ValueError, SyntaxError):
                values[arg.keyword.value] = code
        entries[key] = values
    return entries


def _literal(layout: _Layout, field: str, value: object) -> str:
    """Python source for `value` in the style the field's annotation expects."""
    annotation = layout.fields[field].annotation
    for enum_name, members in layout.enums.items():
        if enum_name in annotation:
            wanted = str(value)
            for member, member_value in members.items():
                if member == wanted or member == wanted.upper() or member_value == wanted:
                    return f"{enum_name}.{member}"
            raise ModelsFileError(
                f"{field}={value!r} is not a member of {enum_name} ({', '.join(members)}); "
                "pick one of those in the target's settings"
            )
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _wanted_values(layout: _Layout, entry: ModelEntry, port: int) -> dict[str, str]:
    """Field -> source text, for the fields the dataclass declares."""
    raw: dict[str, object] = {
        "name": entry.name,
        "port": port,
        "subdomain": entry.name,
        "category": entry.category,
        "model_id": entry.model_id,
        "display_name": entry.display_name,
        "inference_dir": entry.inference_dir,
        "description": entry.description,
        "hf_repo": entry.hf_repo,
        "hf_file": entry.hf_file,
        "owned_by": entry.owned_by,
        "chat_format": entry.chat_format,
        "n_ctx": entry.n_ctx,
        "n_threads": entry.n_threads,
        "n_batch": entry.n_batch,
        "max_concurrent": entry.max_concurrent,
        "routing_category": entry.routing_category,
        "dockerfile": entry.dockerfile,
    }
    missing = [
        f.name for f in layout.fields.values() if not f.has_default and raw.get(f.name) is None
    ]
    if missing:
        raise ModelsFileError(
            f"ModelConfig requires {', '.join(missing)}, which this project does not know how to fill; "
            "update tasks/serving/serverless_llm/models_file.py for this serverless-llm version"
        )
    return {
        k: _literal(layout, k, v) for k, v in raw.items() if v is not None and k in layout.fields
    }


def _allocate_port(entries: dict[str, dict[str, object]], name: str, category: str) -> int:
    used = {v.get("port") for k, v in entries.items() if k != name}
    current = entries.get(name, {}).get("port")
    if isinstance(current, int) and current not in used:
        return current
    candidates = CATEGORY_PORT_RANGES.get(category, range(8400, 8500))
    for port in candidates:
        if port not in used:
            return port
    raise ModelsFileError(
        f"no free port left in {candidates.start}-{candidates.stop - 1} for category {category}"
    )


def upsert_model_entry(source: str, entry: ModelEntry, path: str = str(MODELS_FILE)) -> EditResult:
    """Add `entry` to `MODELS`, or update the entry of the same name in place.

    Raises:
        ModelsFileError: the file cannot be parsed or edited safely, or `entry.port` is taken.
    """
    entry.check()
    layout = _parse(source, path)
    entries = read_entries(source, path)
    taken = {v.get("port"): k for k, v in entries.items() if k != entry.name}
    if entry.port is not None and entry.port in taken:
        raise ModelsFileError(
            f"port {entry.port} is already used by model {taken[entry.port]!r} in {path}; "
            "leave port empty to allocate a free one"
        )
    port = entry.port or _allocate_port(entries, entry.name, entry.category)
    wanted = _wanted_values(layout, entry, port)
    starts = _offsets(source)
    existing = next((e for e in layout.dict_node.elements if _key(e) == entry.name), None)
    if existing is None:
        new_source = _append_entry(layout, source, starts, entry.name, wanted)
        result = EditResult(source=new_source, port=port, added=True, changed=True)
    else:
        start, end = _span(layout, existing, starts)
        new_source = _update_entry(layout, source, starts, existing, wanted)
        result = EditResult(
            source=new_source,
            port=port,
            added=False,
            changed=new_source != source,
            previous_entry=source[start:end],
        )
    check_models_source(result.source, entry.name, path)
    return result


def _append_entry(
    layout: _Layout, source: str, starts: list[int], name: str, wanted: dict[str, str]
) -> str:
    elements = list(layout.dict_node.elements)
    indent = " " * 4
    if elements:
        first = layout.positions[elements[0]].start
        indent = source[starts[first.line - 1] : starts[first.line - 1] + first.column]
        if indent.strip():
            raise ModelsFileError(
                "MODELS entries are not one per line; cannot edit the dict safely"
            )
    args = "".join(f"{indent * 2}{k}={v},\n" for k, v in wanted.items())
    block = f"{indent}{json.dumps(name)}: ModelConfig(\n{args}{indent}),\n"
    rbrace = layout.positions[layout.dict_node].end  # just after '}'
    brace_at = starts[rbrace.line - 1] + rbrace.column - 1
    line_start = starts[rbrace.line - 1]
    if source[line_start:brace_at].strip():
        raise ModelsFileError(
            "the closing '}' of MODELS shares a line with an entry; cannot edit the dict safely"
        )
    prefix = source[:line_start]
    if elements and elements[-1].comma is cst.MaybeSentinel.DEFAULT:
        last_end = _span(layout, elements[-1], starts)[1]
        prefix = source[:last_end] + "," + source[last_end:line_start]
    return prefix + block + source[line_start:]


def _update_entry(
    layout: _Layout,
    source: str,
    starts: list[int],
    element: cst.DictElement,
    wanted: dict[str, str],
) -> str:
    call = element.value
    if not isinstance(call, cst.Call):
        raise ModelsFileError(
            f"MODELS[{_key(element)!r}] is not a ModelConfig(...) call; cannot update it safely"
        )
    edits: list[tuple[int, int, str]] = []
    present = {}
    for arg in call.args:
        if arg.keyword is not None:
            present[arg.keyword.value] = arg
    for field, text in wanted.items():
        if field in present:
            start, end = _span(layout, present[field].value, starts)
            if source[start:end] != text:
                edits.append((start, end, text))
    missing = [f for f in wanted if f not in present]
    if missing:
        last = call.args[-1]
        last_start, last_end = _span(layout, last, starts)
        line_start = starts[layout.positions[last].start.line - 1]
        indent = source[line_start:last_start]
        if indent.strip():
            raise ModelsFileError(
                f"MODELS[{_key(element)!r}] is not one argument per line; cannot update it safely"
            )
        added = "".join(f"\n{indent}{f}={wanted[f]}," for f in missing)
        has_comma = last.comma is not cst.MaybeSentinel.DEFAULT
        value_end = _span(layout, last.value, starts)[1]
        if has_comma:
            comma_at = source.index(",", value_end)
            edits.append((comma_at + 1, comma_at + 1, added))
        else:
            edits.append((value_end, value_end, "," + added.rstrip(",")))
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    return source


def check_models_source(source: str, name: str, path: str = str(MODELS_FILE)) -> None:
    """Re-parse an edited file: valid Python, `name` present, ports unique."""
    try:
        compile(source, path, "exec")
    except SyntaxError as exc:
        raise ModelsFileError(
            f"the edit left {path} unparsable ({exc.msg}, line {exc.lineno}); nothing was committed"
        ) from None
    entries = read_entries(source, path)
    if name not in entries:
        raise ModelsFileError(f"the edit did not leave {name!r} in MODELS; nothing was committed")
    seen: dict[object, str] = {}
    for key, values in entries.items():
        port = values.get("port")
        if port in seen:
            raise ModelsFileError(
                f"{path}: models {seen[port]!r} and {key!r} share port {port}; fix the base branch first"
            )
        seen[port] = key


def run_models_script(clone: Path, name: str, *, timeout: float = 60) -> dict:
    """`python config/models.py NAME` in the clone, as the inference workflow runs it; its JSON."""
    return _run_models_cli(clone, check_model_name(name), timeout=timeout)


def run_inference_dirs(clone: Path, *, timeout: float = 60) -> list[str | None]:
    """`python config/models.py --inference-dirs` in the clone: the Build workflow's image matrix."""
    return _run_models_cli(clone, "--inference-dirs", timeout=timeout)


def _run_models_cli(clone: Path, arg: str, *, timeout: float):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
    completed = subprocess.run(
        [sys.executable, str(MODELS_FILE), arg],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if completed.returncode != 0:
        raise ModelsFileError(
            f"'python config/models.py {arg}' failed in the edited clone (exit {completed.returncode}): "
            f"{completed.stderr.strip()[-500:]}"
        )
    try:
        return json.loads(completed.stdout)
    except json.JSONDecodeError:
        raise ModelsFileError(
            f"'python config/models.py {arg}' printed no JSON (got {completed.stdout[:200]!r}); "
            "this serverless-llm version does not expose a model's config to its workflow"
        ) from None


def restore_model_entry(
    source: str, name: str, previous_entry: str | None, path: str = str(MODELS_FILE)
) -> str:
    """Undo a deployment's edit: put `previous_entry` back, or remove the entry it added."""
    check_model_name(name)
    layout = _parse(source, path)
    starts = _offsets(source)
    element = next((e for e in layout.dict_node.elements if _key(e) == name), None)
    if element is None:
        return source
    start, end = _span(layout, element, starts)
    if previous_entry is not None:
        return source[:start] + previous_entry + source[end:]
    line_start = starts[layout.positions[element].start.line - 1]
    line_end = source.index("\n", end) + 1 if "\n" in source[end:] else len(source)
    return source[:line_start] + source[line_end:]
