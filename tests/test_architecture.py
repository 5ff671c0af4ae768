"""The house has floors: a module imports only from its own floor or the floors below, and no modules import each
other in a circle. Read from the source with `ast` (every import, function-level ones included), so an upward
arrow fails here before it tangles the package."""

import ast
from pathlib import Path


SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "diffusers_spectrum"

# Bottom to top. A floor may import from itself and from any floor listed before it.
FLOORS = [
    ("_version", "_lazy", "utils"),  # light helpers: JSON and flag records, image grids, run folders, Hub names
    ("spectral",),  # pure spectral maths on tensors
    ("data",),  # sources, decoding, transforms, the image / audio / latent streams and the loader
    ("losses",),  # loss terms on tensors
    ("diffusion",),  # diffusion objectives (DDPM, flow, EDM, audio v-cosine) and their loss terms
    ("models",),  # diffusers subclasses, loaders, presets, DCTTransform
    ("pipelines",),  # export, sampling, schedulers, model cards
    ("evaluation",),  # metrics, diagnostics, analyze / evaluate commands
    ("training",),  # flag groups, loop helpers, checkpoints, one module per trainer
    ("__init__", "cli", "demo", "demo_audio"),  # entry points: the lazy root, the console script, the demos
]
FLOOR_OF = {part: level for level, parts in enumerate(FLOORS) for part in parts}


def modules() -> dict[str, Path]:
    """`diffusers_spectrum.x.y` -> file, for every module of the package."""
    found = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The package modules that module `name` imports (`from . import x` names module `x` where one exists)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).rstrip(".")
            if base.split(".")[0] != PACKAGE:
                continue
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(known)
            targets.update(submodules or {base})
    return {target for target in targets if target != name}


def floor(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    return FLOOR_OF[part.removesuffix(".py")]


def test_every_package_and_module_has_a_floor():
    assert {(m.split(".") + ["__init__"])[1] for m in modules()} <= set(FLOOR_OF)


def test_no_import_runs_up_a_floor():
    known = modules()
    upward = [
        f"{name} -> {target}"
        for name, path in sorted(known.items())
        for target in sorted(imports(name, path, known))
        if floor(target) > floor(name)
    ]
    assert not upward, "imports that run up the floor order:\n" + "\n".join(upward)


def test_no_modules_import_each_other_in_a_circle():
    known = modules()
    graph = {name: imports(name, path, known) & set(known) for name, path in known.items()}
    circles, state = [], {}  # state: 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "modules that import each other in a circle:\n" + "\n".join(circles)
