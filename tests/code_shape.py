"""The shape rules of src/: no import cycle between modules, no function over 80 lines.

No cycle: a module is a file under src/ (`src/a/b.rs` is `a::b`, `src/a/mod.rs` is `a`). An edge
A -> B is any `crate::B...` path in A's text outside comments; a path into a parent module's
file counts as an edge to that file.

Function length: from the line of `fn` to its closing brace, tests included. Prints what
breaks a rule and exits 1.
"""

import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def module_of(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod" or parts == ["lib"] or parts == ["main"]:
        parts = parts[:-1]
    return "::".join(parts)


def graph() -> dict[str, set[str]]:
    modules = {module_of(p): p for p in SRC.rglob("*.rs")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        text = "\n".join(line.split("//")[0] for line in path.read_text().splitlines())
        # `use crate::{a, b::c}` groups, then every crate:: path
        for group in re.findall(r"crate::\{([^}]*)\}", text):
            for item in group.split(","):
                text += "\ncrate::" + item.strip()
        # `super::x` names a sibling: in a::b (src/a/b.rs) it is a::x; in a (src/a/mod.rs) it is x
        owner = module if modules[module].name != "mod.rs" else module.rsplit("::", 1)[0] if "::" in module else ""
        parent = owner.rsplit("::", 1)[0] + "::" if "::" in owner else ""
        for rel in re.findall(r"\bsuper::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", text):
            text += "\ncrate::" + parent + rel
        for target in re.findall(r"crate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", text):
            parts = target.split("::")
            while parts and "::".join(parts) not in modules:
                parts.pop()
            dest = "::".join(parts)
            if parts and dest != module and not module.startswith(dest + "::"):
                edges[module].add(dest)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, index, low, stack, on, counter = [], {}, {}, [], set(), [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


MAX_FN_LINES = 80


def long_functions() -> list[tuple[str, int, str, int]]:
    found = []
    for path in sorted(SRC.rglob("*.rs")):
        lines = path.read_text().splitlines()
        for start, line in enumerate(lines):
            m = re.match(r"\s*(?:pub(?:\([a-z]+\))? )?(?:const )?(?:async )?(?:unsafe )?fn (\w+)", line)
            if not m:
                continue
            depth, opened = 0, False
            for end in range(start, len(lines)):
                code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', lines[end].split("//")[0])
                code = re.sub(r"'(?:[^'\\]|\\.)'", "''", code)
                if not opened and ";" in code and "{" not in code:
                    break  # a declaration without a body
                depth += code.count("{") - code.count("}")
                opened = opened or "{" in code
                if opened and depth <= 0:
                    length = end - start + 1
                    if length > MAX_FN_LINES:
                        found.append((str(path.relative_to(SRC.parent)), start + 1, m.group(1), length))
                    break
    return found


if __name__ == "__main__":
    long = long_functions()
    for path, line, name, length in long:
        print(f"{path}:{line}: fn {name} is {length} lines (at most {MAX_FN_LINES})")
    edges = graph()
    found = cycles(edges)
    for component in found:
        print("import cycle among:", ", ".join(component))
        for m in component:
            print(f"  {m} -> {', '.join(sorted(edges[m] & set(component)))}")
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} edges, {len(found)} cycle(s)")
    print(f"{len(long)} function(s) over {MAX_FN_LINES} lines")
    sys.exit(1 if found or long else 0)
