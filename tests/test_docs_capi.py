"""docs/c-api.md has an entry for every public name of membuf.h, of the
right kind (c:function, c:macro, c:type, c:struct, c:member, c:var)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADER = ROOT / "src" / "membuf" / "include" / "membuf.h"
PAGE = ROOT / "docs" / "c-api.md"

pytestmark = pytest.mark.skipif(not PAGE.exists(), reason="needs a source checkout (docs/)")

INCLUDE_GUARD = "MEMBUF_H"


def header_code():
    """The header without comments (names in prose are not declarations)."""
    text = HEADER.read_text()
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def public_names():
    """name -> kind, for every MemBuf_* / MEMBUF_* / import_membuf the header mentions."""
    code = header_code()
    names = set(re.findall(r"\b(MemBuf_\w+|MEMBUF_\w+|import_membuf)\b", code)) - {INCLUDE_GUARD}
    kinds = {}
    for name in names:
        if re.search(rf"^\s*typedef\s+struct\s+{name}\b", code, re.M):
            kinds[name] = "struct"
        elif re.search(rf"typedef[^;]*\(\s*\*\s*{name}\s*\)", code):
            kinds[name] = "type"
        elif re.search(rf"^static inline [^\n]*\n{name}\(", code, re.M):
            kinds[name] = "function"
        elif name == "MemBuf_API":
            kinds[name] = "var"  # the imported table pointer (a #define to the shared name)
        else:
            kinds[name] = "macro"  # #define'd here, or defined by the user before the include
    return kinds


def struct_fields(struct):
    body = re.search(rf"typedef struct {struct} \{{(.*?)\}} {struct};", header_code(), re.S).group(1)
    fields = []
    for decl in body.split(";"):
        decl = " ".join(decl.split())
        if not decl:
            continue
        pointer = re.search(r"\(\s*\*\s*(\w+)\s*\)", decl)  # a function pointer member
        fields.append(pointer.group(1) if pointer else re.search(r"(\w+)\s*$", decl).group(1))
    return fields


def page_entries():
    """(kind, name) for every c: directive on the page; members as Struct.member."""
    entries, struct = set(), None
    for line in PAGE.read_text().splitlines():
        match = re.match(r"\s*`{3,}\{c:(\w+)\}\s*(.+)", line)
        if not match:
            continue
        kind, signature = match.groups()
        if kind == "member":
            pointer = re.search(r"\(\s*\*\s*(\w+)\s*\)", signature)
            name = pointer.group(1) if pointer else re.search(r"(\w+)\s*$", signature).group(1)
            entries.add(("member", f"{struct}.{name}"))
            continue
        if kind == "type" and "(*" in signature:
            name = re.search(r"\(\s*\*\s*(\w+)\s*\)", signature).group(1)
        elif kind == "function":
            name = re.search(r"(\w+)\s*\(", signature).group(1)
        else:
            name = re.search(r"(\w+)\s*$", signature).group(1)
        if kind == "struct":
            struct = name
        entries.add((kind, name))
    return entries


def test_the_header_parser_finds_the_api():
    names = public_names()
    assert names["MemBuf_FromMemory"] == "function"
    assert names["import_membuf"] == "function"
    assert names["MemBuf_Spec"] == "struct"
    assert names["MemBuf_ReleaseFunc"] == "type"
    assert names["MEMBUF_DEFER"] == "macro"
    assert len(names) >= 20
    assert struct_fields("MemBuf_Spec")[:2] == ["ptr", "len"]
    assert "IsReleased" in struct_fields("MemBuf_CAPI")


def test_every_public_name_has_an_entry_of_its_kind():
    entries = page_entries()
    missing = [f"{kind} {name}" for name, kind in sorted(public_names().items())
               if (kind, name) not in entries]
    assert not missing, f"docs/c-api.md has no entry for: {missing}"


@pytest.mark.parametrize("struct", ["MemBuf_Spec", "MemBuf_CAPI"])
def test_every_struct_field_has_an_entry(struct):
    entries = page_entries()
    missing = [f for f in struct_fields(struct) if ("member", f"{struct}.{f}") not in entries]
    assert not missing, f"docs/c-api.md: {struct} fields without an entry: {missing}"


def test_the_page_names_nothing_the_header_lacks():
    public = public_names()
    for kind, name in page_entries():
        if kind != "member":
            assert name in public, f"docs/c-api.md documents {name}, which membuf.h does not have"


def test_every_function_states_who_owns_what():
    text = PAGE.read_text()
    for name, kind in public_names().items():
        if kind != "function":
            continue
        entry = re.search(rf"```\{{c:function\}}[^\n]*\b{name}\(.*?\n```", text, re.S).group(0)
        assert re.search(r"borrowed|new reference|ownership|nothing to free|never freed", entry,
                         re.I), f"{name}: no ownership rule"
