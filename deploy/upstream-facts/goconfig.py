"""Reads the YAML key structure of a Go program's configuration from its source.

Tempo and Loki read their config file with go-yaml v2's ``UnmarshalStrict`` into one
root struct: every key of the file must be a field of the struct it lands in. This module
walks the Go source of a git checkout (at a tag, without a work tree: ``git show``) from
that root struct and records, for each struct reached, the YAML keys it accepts and what
each key holds. It records facts (key names and nesting), not code.

The rules are go-yaml v2's:

* a field's key is its ``yaml:"name"`` tag, else its name in lower case; ``yaml:"-"`` and
  unexported fields are skipped; ``,inline`` merges an embedded struct's keys (or, on a
  map, accepts any further key);
* a type with its own v2 ``UnmarshalYAML(unmarshal func(interface{}) error)`` decodes as
  it likes: it is opaque (any value), unless the method only re-decodes into a local
  copy of the same struct (``type plain T``), which keeps the struct's keys;
* a type with ``UnmarshalText`` is a scalar; standard-library and unresolvable types are
  opaque;
* maps accept any key; slices and arrays check each element.

It is a reader for config structs, not a Go parser: generics, method sets through
embedding and build tags are ignored (no config struct on the paths we check uses them).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

BASIC = frozenset(
    [
        "bool",
        "string",
        "byte",
        "rune",
        "error",
        "any",
        "uintptr",
        "int",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float32",
        "float64",
        "complex64",
        "complex128",
    ]
)
TOKEN = re.compile(
    r"""(?P<comment>//[^\n]*|/\*.*?\*/)
      |(?P<raw>`[^`]*`)
      |(?P<str>"(?:[^"\\\n]|\\.)*")
      |(?P<rune>'(?:[^'\\\n]|\\.)*')
      |(?P<nl>\n)
      |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      |(?P<num>[0-9][0-9A-Za-z_.]*)
      |(?P<ws>[ \t\r]+)
      |(?P<punct>\.\.\.|[^\sA-Za-z0-9_])""",
    re.S | re.X,
)
YAML_TAG = re.compile(r'(?:^|\s)yaml:"([^"]*)"')


class Git:
    """Files of one commit of a bare repository, read with git."""

    def __init__(self, git_dir: str, ref: str) -> None:
        self.git_dir = git_dir
        self.ref = ref
        self.commit = self._run("rev-parse", f"{ref}^{{commit}}").strip()
        listing = self._run("ls-tree", "-r", "--name-only", self.commit)
        self.files = frozenset(listing.splitlines())
        self.dirs: dict[str, list[str]] = {}
        for path in self.files:
            directory, _, name = path.rpartition("/")
            self.dirs.setdefault(directory, []).append(name)

    def _run(self, *args: str) -> str:
        # git from PATH with fixed subcommands; the arguments are refs and paths of the clone.
        command = ["git", "--git-dir", self.git_dir, *args]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout  # noqa: S603

    def read(self, path: str) -> str:
        return self._run("show", f"{self.commit}:{path}")

    def date(self) -> str:
        return self._run("show", "-s", "--format=%cs", self.commit).strip()


# -- tokens and declarations ----------------------------------------------------------


@dataclass(frozen=True)
class Tok:
    kind: str
    text: str


def tokenize(source: str) -> list[Tok]:
    tokens = []
    for match in TOKEN.finditer(source):
        kind = match.lastgroup or "punct"
        text = match.group()
        if kind in ("ws",):
            continue
        if kind == "comment":
            if "\n" in text:
                tokens.append(Tok("nl", "\n"))
            continue
        if kind == "raw" or kind == "str":
            kind = "string"
        tokens.append(Tok(kind, text))
    return tokens


@dataclass
class TypeDecl:
    name: str
    expr: Any  # a parsed type expression
    file: str
    alias: bool = False


@dataclass
class Package:
    path: str  # import path
    name: str  # package clause
    types: dict[str, TypeDecl] = field(default_factory=dict)
    # type name -> "transparent" (re-decodes into a plain copy) or "opaque"
    yaml_unmarshalers: dict[str, str] = field(default_factory=dict)
    text_unmarshalers: set[str] = field(default_factory=set)
    imports: dict[str, dict[str, str | None]] = field(default_factory=dict)  # file -> alias -> path


class Parser:
    """Type declarations, imports and UnmarshalYAML/UnmarshalText methods of one file."""

    def __init__(self, tokens: list[Tok]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self, offset: int = 0) -> Tok:
        j = self.i + offset
        return self.t[j] if j < len(self.t) else Tok("eof", "")

    def next(self) -> Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def skip_nl(self) -> None:
        while self.peek().kind == "nl" or self.peek().text == ";":
            self.i += 1

    def skip_balanced(self) -> None:
        """Skips from an opening bracket to its partner."""
        pairs = {"(": ")", "[": "]", "{": "}"}
        opening = self.next().text
        closing, depth = pairs[opening], 1
        while depth and self.peek().kind != "eof":
            tok = self.next()
            if tok.text == opening:
                depth += 1
            elif tok.text == closing:
                depth -= 1

    def file(self, package: Package, filename: str) -> None:
        imports: dict[str, str | None] = {}
        package.imports[filename] = imports
        while self.peek().kind != "eof":
            tok = self.next()
            if tok.kind != "ident":
                continue
            if tok.text == "package" and not package.name:
                package.name = self.next().text
            elif tok.text == "import":
                self.imports(imports)
            elif tok.text == "type":
                self.types(package, filename)
            elif tok.text == "func":
                self.method(package)
            elif tok.text in ("var", "const") and self.peek().text == "(":
                self.skip_balanced()

    def imports(self, imports: dict[str, str | None]) -> None:
        def one() -> None:
            alias = None
            if self.peek().kind == "ident" or self.peek().text in "._":
                alias = self.next().text
            path = self.next().text.strip('"`')
            imports[path if alias is None else f"{alias}\0{path}"] = alias

        if self.peek().text == "(":
            self.next()
            while True:
                self.skip_nl()
                if self.peek().text == ")" or self.peek().kind == "eof":
                    self.next()
                    return
                one()
        else:
            one()

    def types(self, package: Package, filename: str) -> None:
        if self.peek().text == "(":
            self.next()
            while True:
                self.skip_nl()
                if self.peek().text == ")" or self.peek().kind == "eof":
                    self.next()
                    return
                self.type_spec(package, filename)
        else:
            self.type_spec(package, filename)

    def type_spec(self, package: Package, filename: str) -> None:
        name = self.next().text
        if self.peek().text == "[" and self.peek(1).kind == "ident" and self.peek(2).text not in ("]", "."):
            self.skip_balanced()  # type parameters
        alias = self.peek().text == "="
        if alias:
            self.next()
        package.types[name] = TypeDecl(name, self.type_expr(), filename, alias)

    def method(self, package: Package) -> None:
        if self.peek().text != "(":
            return  # a plain function
        start = self.i
        self.skip_balanced()
        receiver = [tok.text for tok in self.t[start + 1 : self.i - 1] if tok.kind == "ident"]
        name = self.next().text
        if not receiver or name not in ("UnmarshalYAML", "UnmarshalText"):
            return
        type_name = receiver[-1]
        params_start = self.i
        if self.peek().text == "(":
            self.skip_balanced()
        params = " ".join(tok.text for tok in self.t[params_start : self.i])
        while self.peek().text != "{" and self.peek().kind != "eof":
            self.next()
        body_start = self.i
        if self.peek().text == "{":
            self.skip_balanced()
        body = self.t[body_start : self.i]
        if name == "UnmarshalText":
            package.text_unmarshalers.add(type_name)
            return
        if "func" not in params.split():
            return  # a go-yaml v3 Unmarshaler (UnmarshalYAML(*yaml.Node)): v2 never calls it
        # `type plain T` then unmarshal((*plain)(t)): the struct's keys stay its keys.
        copies = any(
            body[k].text == "type" and body[k + 2].kind == "ident" and body[k + 2].text == type_name
            for k in range(len(body) - 2)
        )
        package.yaml_unmarshalers[type_name] = "transparent" if copies else "opaque"

    # -- type expressions ----------------------------------------------------------------

    def type_expr(self) -> Any:
        tok = self.peek()
        if tok.text == "*":
            self.next()
            return self.type_expr()
        if tok.text == "(":
            self.next()
            inner = self.type_expr()
            if self.peek().text == ")":
                self.next()
            return inner
        if tok.text == "[":
            self.next()
            if self.peek().text == "]":
                self.next()
                return ("list", self.type_expr())
            while self.peek().text != "]" and self.peek().kind != "eof":
                self.next()
            self.next()
            return ("list", self.type_expr())
        if tok.text == "map":
            self.next()
            self.next()  # [
            depth = 1
            while depth:
                inner = self.next().text
                depth += {"[": 1, "]": -1}.get(inner, 0)
            return ("map", self.type_expr())
        if tok.text == "chan":
            self.next()
            self.type_expr()
            return ("opaque",)
        if tok.text == "func":
            self.next()
            if self.peek().text == "(":
                self.skip_balanced()
            if self.peek().text == "(":
                self.skip_balanced()
            elif self.peek().kind == "ident" or self.peek().text in "*[":
                self.type_expr()
            return ("opaque",)
        if tok.text == "interface":
            self.next()
            self.skip_balanced()
            return ("opaque",)
        if tok.text == "struct":
            self.next()
            return ("struct", self.struct_fields())
        if tok.kind == "ident":
            self.next()
            qualifier = None
            name = tok.text
            if self.peek().text == "." and self.peek(1).kind == "ident":
                self.next()
                qualifier, name = name, self.next().text
            if self.peek().text == "[" and self.peek(1).text != "]":
                self.skip_balanced()  # type arguments
            return ("named", qualifier, name)
        self.next()
        return ("opaque",)

    def struct_fields(self) -> list[tuple[list[str], Any, str, bool]]:
        """(names, type, tag, embedded) per field line."""
        fields = []
        self.next()  # {
        while True:
            self.skip_nl()
            if self.peek().text == "}" or self.peek().kind == "eof":
                self.next()
                return fields
            first, second = self.peek(), self.peek(1)
            embedded = first.text == "*" or (
                first.kind == "ident" and (second.text in (".", "}", ";") or second.kind in ("nl", "string"))
            )
            names: list[str] = []
            if not embedded:
                names.append(self.next().text)
                while self.peek().text == ",":
                    self.next()
                    names.append(self.next().text)
            type_expr = self.type_expr()
            tag = ""
            if self.peek().kind == "string":
                raw = self.next().text
                tag = raw[1:-1] if raw.startswith("`") else raw[1:-1].replace('\\"', '"')
            if embedded:
                names = [type_expr[2]] if type_expr[0] == "named" else []
            fields.append((names, type_expr, tag, embedded))


# -- the walk ---------------------------------------------------------------------------


class Program:
    """Packages of one Go module at one commit, loaded on demand (vendored ones too)."""

    def __init__(self, git: Git) -> None:
        self.git = git
        self.module = re.search(r"^module\s+(\S+)", git.read("go.mod"), re.M).group(1)  # type: ignore[union-attr]

    def directory(self, import_path: str) -> str | None:
        if import_path == self.module or import_path.startswith(self.module + "/"):
            candidate = import_path[len(self.module) + 1 :]
        else:
            candidate = "vendor/" + import_path
        return candidate if candidate in self.git.dirs else None

    @cache  # noqa: B019 - one Program per run, kept alive on purpose
    def package(self, import_path: str) -> Package | None:
        directory = self.directory(import_path)
        if directory is None:
            return None
        package = Package(import_path, "")
        for name in sorted(self.git.dirs[directory]):
            if name.endswith(".go") and not name.endswith("_test.go"):
                Parser(tokenize(self.git.read(f"{directory}/{name}"))).file(package, name)
        return package

    def qualified(self, package: Package, filename: str, qualifier: str) -> Package | None:
        imports = package.imports.get(filename, {})
        for key, alias in imports.items():
            path = key.split("\0")[-1]
            if alias == qualifier:
                return self.package(path)
        for key, alias in imports.items():
            if alias is None:
                target = self.package(key)
                if target is not None and target.name == qualifier:
                    return target
        return None


@dataclass
class Schema:
    """The key structure found from one root: struct id -> {key: ref}.

    A ref is ``""`` (any value: a scalar, or a type that decodes itself), a struct id,
    ``"map:<ref>"`` (any key, each value a ref) or ``"list:<ref>"``. A struct may also have
    an ``"*"`` entry: any further key, holding that ref (an inline map)."""

    root: str
    structs: dict[str, dict[str, str]] = field(default_factory=dict)


class Walker:
    def __init__(self, program: Program, closed_inline_maps: frozenset[str] = frozenset()) -> None:
        self.program = program
        self.closed_inline_maps = closed_inline_maps
        self.schema = Schema("")

    def root(self, import_path: str, type_name: str) -> Schema:
        package = self.program.package(import_path)
        assert package is not None, import_path
        self.schema.root = self.named(package, type_name)
        return self.schema

    def named(self, package: Package, name: str) -> str:
        decl = package.types.get(name)
        if decl is None:
            return ""
        if package.yaml_unmarshalers.get(name) == "opaque" or name in package.text_unmarshalers:
            return ""
        struct_id = f"{package.path}.{name}"
        if decl.expr[0] != "struct":
            return self.ref(package, decl.file, decl.expr, struct_id)
        if struct_id not in self.schema.structs:
            self.schema.structs[struct_id] = {}  # placeholder: recursive types terminate
            self.schema.structs[struct_id] = self.fields(package, decl.file, decl.expr[1], struct_id)
        return struct_id

    def ref(self, package: Package, filename: str, expr: Any, context: str) -> str:
        kind = expr[0]
        if kind == "list":
            return "list:" + self.ref(package, filename, expr[1], context)
        if kind == "map":
            return "map:" + self.ref(package, filename, expr[1], context)
        if kind == "struct":
            struct_id = context
            if struct_id not in self.schema.structs:
                self.schema.structs[struct_id] = {}
                self.schema.structs[struct_id] = self.fields(package, filename, expr[1], struct_id)
            return struct_id
        if kind == "named":
            _, qualifier, name = expr
            if qualifier is None:
                if name in BASIC:
                    return ""
                return self.named(package, name)
            target = self.program.qualified(package, filename, qualifier)
            return "" if target is None else self.named(target, name)
        return ""

    def fields(self, package: Package, filename: str, fields: list[Any], struct_id: str) -> dict[str, str]:
        keys: dict[str, str] = {}
        for names, type_expr, tag, embedded in fields:
            match = YAML_TAG.search(tag)
            yaml_tag = match.group(1) if match else ""
            key, _, options = yaml_tag.partition(",")
            if key == "-":
                continue
            if "inline" in options.split(","):
                inner = self.ref(package, filename, type_expr, f"{struct_id}.{'.'.join(names) or 'inline'}")
                if inner.startswith("map:"):
                    if struct_id not in self.closed_inline_maps:
                        keys["*"] = inner[4:]
                elif inner in self.schema.structs:
                    keys.update(self.schema.structs[inner])
                continue
            for name in names or [""]:
                if not name or (not embedded and not name[0].isupper()) or name == "_":
                    continue
                keys[key or name.lower()] = self.ref(package, filename, type_expr, f"{struct_id}.{name}")
        return keys


def reachable(schema: Schema, start: str) -> Iterator[str]:
    """Struct ids reachable from ``start`` (a ref)."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        ref = stack.pop()
        while ref.startswith(("map:", "list:")):
            ref = ref.split(":", 1)[1]
        if not ref or ref in seen or ref not in schema.structs:
            continue
        seen.add(ref)
        yield ref
        stack.extend(schema.structs[ref].values())
