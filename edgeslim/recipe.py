"""Recipes: a versioned YAML list of passes with typed configs.

```yaml
version: 1
device: cortex-m4                    # optional: the device the run's figures are for (arena, flash, fit, energy)
measure: {batches: [1, 64]}          # optional: batch sizes the final table times (default [1])
finetune: {epochs: 5, lr: 0.001}     # default fine-tuning for passes that fine-tune
passes:
  - magnitude_prune: {sparsity: 0.5}
  - quantize_int8: {}
```
Validation errors name the file, the line and the valid choices. `device` and `measure` are not part of a
run's identity (`digest` leaves them out): a run resumed on another device re-measures the device figures and
keeps the trained stages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from edgeslim.errors import EdgeslimError, choices
from edgeslim.passes import PASSES, PassConfig
from edgeslim.train import TrainConfig
from edgeslim.untrusted import resolve_recipe_paths

RECIPE_VERSION = 1
TOP_KEYS = {"version", "finetune", "passes", "description", "device", "measure"}


@dataclass(frozen=True)
class Step:
    name: str
    config: PassConfig
    line: int


@dataclass(frozen=True)
class Recipe:
    steps: tuple[Step, ...]
    finetune: TrainConfig
    text: str
    source: str
    device: str | None = None  # `device:` (a profile name or YAML path); --device on `run` overrides it
    batches: tuple[int, ...] = (1,)  # `measure: {batches: [...]}`: batch sizes of the final interleaved timing
    identity_text: str = ""  # the text without its `device:` and `measure:` entries: what `digest` hashes

    @property
    def digest(self) -> str:
        """The run's identity: the recipe text less `device:` and `measure:` (they change measurements only: a
        resumed run re-measures what they change)."""
        return hashlib.sha256((self.identity_text or self.text).encode()).hexdigest()[:16]


RECIPE_DIR = Path(__file__).resolve().parent / "recipes"  # the built-in recipes: package data, found by name


def builtin_recipes() -> dict[str, Path]:
    """{name: file} of the recipes shipped in the package (`edgeslim run structured-50 ...`)."""
    return {p.stem: p for p in sorted(RECIPE_DIR.glob("*.yaml"))}


def recipe_about(path: Path) -> str:
    """A recipe's one-line description: its `description:` entry, else its first comment line."""
    for line in Path(path).read_text().splitlines():
        s = line.strip()
        if s.startswith("description:"):
            return s.split(":", 1)[1].strip().strip("'\"")
        if s.startswith("#"):  # a sentence that goes on below ends in "..."
            first = s.lstrip("#").strip()
            return first if first.endswith((".", ":")) else first.rstrip(",;( ") + " ..."
    return ""


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path as given, else a built-in recipe by name (`structured-50`, with or
    without `.yaml`). A bare name that is neither raises one line listing the built-in names."""
    p = Path(name_or_path)
    if p.is_file() or len(p.parts) != 1:  # a path (a folder named like a recipe, e.g. `demo/`, is not one)
        return p
    known = builtin_recipes()
    stem = p.stem if p.suffix.lower() in (".yaml", ".yml") else p.name
    if stem in known:
        return known[stem]
    raise EdgeslimError(f"recipe '{name_or_path}': no such file and not a built-in recipe; "
                        f"built-in recipes: {choices(known)} (`edgeslim recipes` describes them)")


def load_recipe(path: Path | str, kind: str | None = None) -> Recipe:
    """Load and validate a recipe from a YAML path or a built-in recipe's name (`find_recipe`); with `kind`
    (a model kind, `passes.SOURCE_KINDS`), every pass must take models of that kind (see `check_kinds`)."""
    path = find_recipe(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise EdgeslimError(f"{path}: cannot read recipe ({e.strerror})") from None
    # paths inside the recipe resolve beside it (then the working directory) and must exist
    return resolve_recipe_paths(parse_recipe(text, str(path), kind), Path(path).resolve().parent)


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 0


def _key_node(mapping: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(mapping, yaml.MappingNode):
        for k, v in mapping.value:
            if k.value == key:
                return v
    return None


def parse_recipe(text: str, source: str = "<recipe>", kind: str | None = None) -> Recipe:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line
        raise EdgeslimError(f"{where}: invalid YAML ({problem})") from None
    _check_nodes(root, source)
    if not isinstance(data, dict):
        raise EdgeslimError(f"{source}: a recipe is a mapping with 'version' and 'passes'")
    for k in data:
        if k not in TOP_KEYS:
            raise EdgeslimError(
                f"{source}:{_line(_key_node(root, k))}: unknown top-level key {_q(k)}; valid: {choices(TOP_KEYS)}"
            )
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version != RECIPE_VERSION:
        raise EdgeslimError(f"{source}: 'version' must be {RECIPE_VERSION}, got {version!r}")
    ft_node = _key_node(root, "finetune")
    try:
        finetune = TrainConfig.model_validate(_mapping(data.get("finetune") or {}, "finetune"))
    except (ValidationError, TypeError) as e:
        raise EdgeslimError(f"{source}:{_line(ft_node)}: finetune: {_pydantic_msg(e)}") from None
    passes = data.get("passes")
    pnode = _key_node(root, "passes")
    if not isinstance(passes, list) or not passes:
        raise EdgeslimError(f"{source}:{_line(pnode)}: 'passes' must be a non-empty list")
    steps = []
    for i, (item, node) in enumerate(zip(passes, pnode.value)):  # type: ignore[union-attr]
        line = _line(node)
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise EdgeslimError(f"{source}:{line}: pass {i + 1} must be one 'name: {{config}}' entry")
        name, cfg = next(iter(item.items()))
        if name not in PASSES:
            raise EdgeslimError(f"{source}:{line}: unknown pass {_q(name)}; valid: {choices(PASSES)}")
        cfg = cfg or {}
        if not isinstance(cfg, dict):
            raise EdgeslimError(f"{source}:{line}: config of {_q(name)} must be a mapping, got {cfg!r}")
        cls = PASSES[name].config
        try:
            config = cls.model_validate(cfg)
        except ValidationError as e:
            bad = _bad_key_line(node, e) or line
            raise EdgeslimError(f"{source}:{bad}: {name}: {_pydantic_msg(e, cls)}") from None
        steps.append(Step(name, config, line))
    _check_order(steps, source)
    if kind is not None:
        check_kinds(steps, source, kind)
    device = _device(data, root, source)
    batches = _batches(data, root, source)
    ident = _without_key(_without_key(text, root, "device"), yaml.compose(_without_key(text, root, "device"),
                                                                            Loader=yaml.SafeLoader), "measure")
    return Recipe(tuple(steps), finetune, text, source, device, batches, ident)


def _device(data: dict, root: yaml.Node | None, source: str) -> str | None:
    if "device" not in data:
        return None
    d = data["device"]
    line = _line(_key_node(root, "device"))
    if not isinstance(d, str) or not d:
        raise EdgeslimError(f"{source}:{line}: 'device' must be a device profile name or YAML path, got {d!r}")
    from edgeslim.devices import load_device

    near = Path(source).parent / d  # a relative YAML path is relative to the recipe's folder
    if d.endswith((".yaml", ".yml")) and not Path(d).is_absolute() and near.is_file():
        d = str(near)
    try:
        load_device(d)
    except EdgeslimError as e:
        raise EdgeslimError(f"{source}:{line}: device: {e}") from None
    return d


def _batches(data: dict, root: yaml.Node | None, source: str) -> tuple[int, ...]:
    m = data.get("measure")
    if m is None:
        return (1,)
    line = _line(_key_node(root, "measure"))
    if not isinstance(m, dict) or set(m) - {"batches"}:
        raise EdgeslimError(f"{source}:{line}: 'measure' takes one key, batches (e.g. measure: {{batches: [1, 64]}})")
    b = m.get("batches", [1])
    if not isinstance(b, list) or not b or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                      for v in b):
        raise EdgeslimError(f"{source}:{line}: measure.batches must be a list of batch sizes >= 1, got {b!r}")
    return tuple(dict.fromkeys(b))


def _without_key(text: str, root: yaml.Node | None, key: str) -> str:
    """`text` with the top-level `key:` entry's lines removed (so that it does not change the digest)."""
    if not isinstance(root, yaml.MappingNode):
        return text
    for k, v in root.value:
        if k.value == key:
            lines = text.splitlines(keepends=True)
            end = v.end_mark.line + (1 if v.end_mark.column > 0 else 0)
            return "".join(lines[: k.start_mark.line] + lines[max(end, k.start_mark.line + 1):])
    return text


MAX_NODES = 100_000  # YAML nodes a recipe may expand to (aliases counted each time they are used)


def _check_nodes(root: yaml.Node | None, source: str) -> None:
    """Refuse what YAML accepts but a recipe must not hold: a key given twice in one mapping (YAML keeps
    the last one silently), an alias that contains itself, and alias chains that expand to huge trees."""
    count = 0
    stack: list[tuple[yaml.Node, tuple[int, ...]]] = [(root, ())] if root is not None else []
    while stack:
        node, path = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise EdgeslimError(f"{source}: the recipe expands to more than {MAX_NODES:,} YAML nodes (aliases?)")
        if id(node) in path:
            raise EdgeslimError(f"{source}:{_line(node)}: an alias refers to itself (a recursive structure)")
        inner = (*path, id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, int] = {}
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else None
                if key is not None and (key, k.tag) in seen:
                    raise EdgeslimError(f"{source}:{_line(k)}: duplicate key {_q(key)} (first at line "
                                        f"{seen[(key, k.tag)]}); give each key once")
                if key is not None:
                    seen[(key, k.tag)] = _line(k)
                stack += [(k, inner), (v, inner)]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(v, inner) for v in node.value]


def _mapping(value: object, what: str) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"must be a mapping of settings, got {value!r}")
    return value


def _check_order(steps: list[Step], source: str) -> None:
    """What each pass consumes must be there: a pass that needs the PyTorch model cannot follow one that
    left an ONNX-only model, and nothing follows a pass registered `must_be_last`."""
    onnx_from: Step | None = None
    last: Step | None = None
    for s in steps:
        info = PASSES[s.name]
        if last is not None:
            raise EdgeslimError(
                f"{source}:{s.line}: '{s.name}' follows '{last.name}' (line {last.line}), which must be the last "
                "pass of a recipe; move it earlier or drop it"
            )
        if info.consumes == "torch" and onnx_from is not None:
            raise EdgeslimError(
                f"{source}:{s.line}: '{s.name}' changes a PyTorch model but follows '{onnx_from.name}' "
                f"(line {onnx_from.line}), which produces an ONNX-only model; move it earlier"
            )
        if info.produces == "onnx":
            onnx_from = s
        if info.must_be_last:
            last = s


def check_kinds(steps: Sequence[Step], source: str, kind: str) -> None:
    """Every pass must take the run's model kind (each pass declares its kinds when it registers): the first
    one that does not is one line naming the recipe line, the pass, the kinds it takes and the passes that
    take this kind."""
    from edgeslim.passes.base import KIND_WORDS, passes_for

    for s in steps:
        info = PASSES[s.name]
        if not info.takes(kind):
            raise EdgeslimError(
                f"{source}:{s.line}: pass '{s.name}' takes {' or '.join(info.kinds)} models, not "
                f"{KIND_WORDS.get(kind, kind)} ({kind}); passes for {kind} models: {choices(passes_for(kind))}"
            )


def _bad_key_line(node: yaml.Node, e: ValidationError) -> int | None:
    errs = e.errors()
    if not errs or not isinstance(node, yaml.MappingNode) or not node.value:
        return None
    cfg_node = node.value[0][1]
    loc = errs[0]["loc"]
    if loc and isinstance(cfg_node, yaml.MappingNode):
        for k, _v in cfg_node.value:
            if k.value == loc[0]:
                return _line(k)
    return None


def _pydantic_msg(e: Exception, cls: type[PassConfig] | None = None) -> str:
    if not isinstance(e, ValidationError):
        return str(e)
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden" and cls is not None:
        return f"unknown key {_q(key)}; valid: {choices(cls.model_fields)}"
    return f"{_q(key)}: {' '.join(str(err['msg']).split())}" + (f" (got {err['input']!r})" if "input" in err and err["type"] != "missing" else "")


def _q(name: object) -> str:
    """A user's key or name quoted for a one-line message (control characters escaped)."""
    return repr(str(name)) if str(name).isprintable() else ascii(str(name))
