#!/usr/bin/env python3
"""Structure rules the test suite enforces (issue #28), on the source as text.

1. Layers: every top-level module of each crate has a floor (LAYERS below);
   a module may name only modules on lower floors (or the crate root's
   macros). So no import runs upward and no two modules import each other.
2. `redb` appears only under src/meta/ (the metadata interface hides it).
3. No `Result<_, String>`: errors are typed and keep their sources.
4. No function longer than MAX_FN_LINES lines outside test code.

Comments and string literals are blanked before 1, 3 and 4; rule 2 reads
the raw text, so a string naming the database file counts too. Test code
(`#[cfg(test)]` modules and files) is skipped. Exit 1 lists every breach.
"""
import os
import re
import sys

MAX_FN_LINES = 80

# Floors, top first. A module may import only modules on a lower floor.
LAYERS = {
    "src": [
        ["bin"],
        ["cli"],
        ["daemon"],
        ["session"],
        ["fs", "exit"],
        ["volume"],
        ["engine"],
        ["remote"],
        ["config"],
        ["crypto", "store", "meta", "metrics"],
        ["chunk", "timefmt", "paths", "poison", "fsutil", "test_data"],
    ],
    "keystore/src": [
        ["keystore"],
        ["gate"],
        ["selftest", "file"],
        ["kdf", "volume"],
        ["provider"],
        ["xts"],
        ["secmem"],
        ["error"],
    ],
}


def blank(text):
    """The text with comments, strings and char literals replaced by
    spaces (newlines kept, so line numbers stay)."""
    out = []
    i, n = 0, len(text)
    keep_nl = lambda s: "".join("\n" if c == "\n" else " " for c in s)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(keep_nl(text[i:j]))
            i = j
        elif re.match(r'b?r(#*)"', text[i:i + 40]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'b?r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + keep_nl(text[i + 2:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + keep_nl(text[i + 2:j + 1]))
            i = j + 1
        elif c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m:
                out.append(" " * m.end())
                i += m.end()
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(code, open_at):
    depth = 0
    for j in range(open_at, len(code)):
        if code[j] == "{":
            depth += 1
        elif code[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(code) - 1


def test_spans(code):
    """(start, end) offsets of `#[cfg(test)]` items with a body."""
    spans = []
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", code):
        spans.append((m.start(), matching_brace(code, m.end() - 1)))
    for m in re.finditer(r"#\[test\]", code):
        b = code.find("{", m.end())
        spans.append((m.start(), matching_brace(code, b)))
    return spans


def test_files(root):
    """Files declared `#[cfg(test)] mod name;` (whole test modules)."""
    skip = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            code = blank(open(path).read())
            for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code):
                base = dirpath if f in ("mod.rs", "lib.rs", "main.rs") else os.path.join(dirpath, f[:-3])
                skip.add(os.path.join(base, m.group(3) + ".rs"))
                skip.add(os.path.join(base, m.group(3), "mod.rs"))
    return skip


def long_functions(path, code, spans):
    found = []
    for m in re.finditer(r"\bfn\s+(\w+)", code):
        if any(a <= m.start() <= b for a, b in spans):
            continue
        depth, j = 0, m.end()
        while j < len(code) and not (depth == 0 and code[j] in "{;"):
            depth += code[j] in "(<["
            depth -= code[j] in ")>]" and not code[j - 1] == "-"
            j += 1
        if j >= len(code) or code[j] == ";":
            continue
        end = matching_brace(code, j)
        lines = code.count("\n", m.start(), end) + 1
        if lines > MAX_FN_LINES:
            line = code.count("\n", 0, m.start()) + 1
            found.append(f"{path}:{line}: fn {m.group(1)} is {lines} lines (max {MAX_FN_LINES})")
    return found


def outside(spans, pos):
    return not any(a <= pos <= b for a, b in spans)


def module_of(root, path):
    rel = os.path.relpath(path, root)
    head = rel.split(os.sep)[0]
    return head[:-3] if head.endswith(".rs") else head


def main():
    breaches = []
    for root, floors in LAYERS.items():
        floor = {m: len(floors) - i for i, row in enumerate(floors) for m in row}
        skip = test_files(root)
        for dirpath, _, files in os.walk(root):
            for f in sorted(files):
                path = os.path.join(dirpath, f)
                if not f.endswith(".rs") or path in skip:
                    continue
                raw = open(path).read()
                code = blank(raw)
                spans = test_spans(code)
                me = module_of(root, path)
                if root == "src" and "redb" in raw and not path.startswith("src/meta/"):
                    breaches.append(f"{path}: names redb outside src/meta/")
                for m in re.finditer(r"Result<[^>]*,\s*String>", code):
                    if outside(spans, m.start()):
                        line = code.count("\n", 0, m.start()) + 1
                        breaches.append(f"{path}:{line}: returns Result<_, String> (use a typed error)")
                breaches += long_functions(path, code, spans)
                if me not in floor and me not in ("lib", "main"):
                    breaches.append(f"{path}: module {me} has no floor in scripts/check_structure.py")
                    continue
                for m in re.finditer(r"\bcrate::(\w+)", code):
                    other = m.group(1)
                    if other == me or other not in floor or not outside(spans, m.start()):
                        continue
                    if me in floor and floor[other] >= floor[me]:
                        line = code.count("\n", 0, m.start()) + 1
                        breaches.append(f"{path}:{line}: {me} (floor {floor[me]}) imports {other} (floor {floor[other]})")
    for b in breaches:
        print(b)
    if breaches:
        print(f"check_structure: {len(breaches)} breach(es)", file=sys.stderr)
        return 1
    print("check_structure: layers, redb, typed errors and function lengths OK")
    return 0


if __name__ == "__main__":
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    sys.exit(main())
