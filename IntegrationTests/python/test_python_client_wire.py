"""Pins the Python client's wire layout and status codes to Include/moe_router_wire.h (the one
definition of the protocol): a C program prints sizeof/offsetof of every field, and the header's
enums are parsed and compared. IntegrationTests/python/moe_wire.py takes its tables from the package, so
this pins the tests' raw frames too."""
import pathlib
import re
import shutil
import struct
import subprocess

import pytest

import moe_router
from moe_router import _wire as w
from moe_router.types import DType, Method, Nonfinite, Scoring

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADER = ROOT / "Include" / "moe_router_wire.h"


def header_text():
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return text


def parse_enum(name):
    m = re.search(r"typedef\s+enum\s+" + name + r"\s*\{(.*?)\}", header_text(), re.S)
    assert m, f"enum {name} not found in {HEADER}"
    out = {}
    for item in m.group(1).split(","):
        item = item.strip()
        if item:
            key, value = (s.strip() for s in item.split("="))
            out[key] = int(value, 0)
    return out


def parse_structs():
    """{struct name: [field names, nested structs flattened as "outer.inner"]} of the wire header."""
    raw = {}
    for m in re.finditer(r"typedef\s+struct\s+(\w+)\s*\{(.*?)\}\s*(\w+)\s*;", header_text(), re.S):
        fields = []
        for decl in m.group(2).split(";"):
            decl = decl.strip()
            if not decl:
                continue
            fm = re.match(r"(\w+)\s+(\w+)\s*(\[[^\]]*\])?$", decl)
            assert fm, f"unparsed field declaration in {m.group(1)}: {decl!r}"
            fields.append((fm.group(1), fm.group(2)))
        raw[m.group(3)] = fields

    def flatten(struct_name, prefix=""):
        names = []
        for ctype, fname in raw[struct_name]:
            if ctype in raw:
                names += flatten(ctype, prefix + fname + ".")
            else:
                names.append(prefix + fname)
        return names
    return {name: flatten(name) for name in raw}


def test_python_has_every_header_struct_with_the_same_fields():
    header = parse_structs()
    python = {s.c_name: s.names for s in w.ALL_STRUCTS}
    assert set(header) == set(python), "structs differ between Include/moe_router_wire.h and moe_router/_wire.py"
    for name, fields in header.items():
        assert python[name] == fields, f"{name}: fields differ"


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_sizes_and_offsets_match_the_c_compiler(tmp_path):
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "moe_router_wire.h"', "int main(void) {"]
    for s in w.ALL_STRUCTS:
        lines.append(f'printf("{s.c_name} sizeof %zu\\n", sizeof({s.c_name}));')
        for f in s.names:
            lines.append(f'printf("{s.c_name} {f} %zu %zu\\n", offsetof({s.c_name}, {f}), '
                         f'sizeof((({s.c_name} *)0)->{f}));')
    lines += ["return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", f"-I{ROOT / 'Include'}", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    c = {}
    for line in filter(None, out):
        parts = line.split()
        c[(parts[0], parts[1])] = tuple(int(p) for p in parts[2:])
    for s in w.ALL_STRUCTS:
        assert c[(s.c_name, "sizeof")] == (s.size,), f"sizeof({s.c_name})"
        for name, fmt in s.fields:
            assert c[(s.c_name, name)] == (s.offsets[name], struct.calcsize("<" + fmt)), f"{s.c_name}.{name}"


def test_status_codes_match_the_header_both_ways():
    header = parse_enum("moe_status")
    python = {s.c_name: int(s) for s in moe_router.Status}
    missing = sorted(set(header) - set(python))
    extra = sorted(set(python) - set(header))
    assert not missing, f"Include/moe_router_wire.h has status codes the Python client lacks: {missing}"
    assert not extra, f"the Python client has status codes the header lacks: {extra}"
    assert header == python


def test_one_exception_class_per_error_status():
    codes = {v for k, v in parse_enum("moe_status").items() if k != "MOE_OK"}
    assert set(moe_router.ERRORS) == codes
    classes = list(moe_router.ERRORS.values())
    assert len(set(classes)) == len(classes), "two codes share an exception class"
    for code, cls in moe_router.ERRORS.items():
        assert issubclass(cls, moe_router.MoERouterError)
        assert cls.status == code
        err = moe_router.error_for(code, "why")
        assert type(err) is cls and err.status == code and err.message == "why"
        assert getattr(moe_router, cls.__name__) is cls, "exported from the package"
    future = moe_router.error_for(99, "new code")
    assert type(future) is moe_router.MoERouterError and future.status == 99


def test_other_enums_and_constants_match_the_header():
    assert parse_enum("moe_op") == {f"MOE_OP_{n}": v for n, v in [
        ("HELLO", w.OP_HELLO), ("LIST_LAYERS", w.OP_LIST_LAYERS), ("REGISTER_SHM", w.OP_REGISTER_SHM),
        ("UNREGISTER_SHM", w.OP_UNREGISTER_SHM), ("ROUTE", w.OP_ROUTE), ("STATS", w.OP_STATS), ("PING", w.OP_PING)]}
    assert parse_enum("moe_dtype") == {f"MOE_DTYPE_{d.name}": int(d) for d in DType}
    assert parse_enum("moe_method") == {f"MOE_METHOD_{m.name}": int(m) for m in Method}
    assert parse_enum("moe_scoring") == {f"MOE_SCORING_{s.name}": int(s) for s in Scoring}
    assert parse_enum("moe_nonfinite") == {f"MOE_NONFINITE_{n.name}": int(n) for n in Nonfinite}
    assert parse_enum("moe_buffer_kind") == {"MOE_BUF_INLINE": w.BUF_INLINE, "MOE_BUF_SHM": w.BUF_SHM}
    text = header_text()
    for macro, value in [("MOE_PROTOCOL_MAGIC", w.MAGIC), ("MOE_PROTOCOL_VERSION", w.VERSION),
                         ("MOE_NAME_BYTES", w.NAME_BYTES), ("MOE_SHM_NAME_BYTES", w.SHM_NAME_BYTES),
                         ("MOE_TAG_BYTES", w.TAG_BYTES), ("MOE_MAX_MESSAGE_TEXT", w.MAX_MESSAGE_TEXT)]:
        m = re.search(r"#define\s+" + macro + r"\s+(0x[0-9A-Fa-f]+|\d+)u?", text)
        assert m and int(m.group(1), 0) == value, macro
