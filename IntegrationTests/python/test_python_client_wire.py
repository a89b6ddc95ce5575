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
        ("UNREGISTER_SHM", w.OP_UNREGISTER_SHM), ("ROUTE", w.OP_ROUTE), ("STATS", w.OP_STATS), ("PING", w.OP_PING),
        ("SET_PLACEMENT", w.OP_SET_PLACEMENT), ("EXPERT_LOAD", w.OP_EXPERT_LOAD),
        ("OPEN_CHANNEL", w.OP_OPEN_CHANNEL), ("CLOSE_CHANNEL", w.OP_CLOSE_CHANNEL)]}
    assert parse_enum("moe_dtype") == {f"MOE_DTYPE_{d.name}": int(d) for d in DType}
    assert parse_enum("moe_method") == {f"MOE_METHOD_{m.name}": int(m) for m in Method}
    assert parse_enum("moe_scoring") == {f"MOE_SCORING_{s.name}": int(s) for s in Scoring}
    assert parse_enum("moe_nonfinite") == {f"MOE_NONFINITE_{n.name}": int(n) for n in Nonfinite}
    assert parse_enum("moe_buffer_kind") == {"MOE_BUF_INLINE": w.BUF_INLINE, "MOE_BUF_SHM": w.BUF_SHM,
                                             "MOE_BUF_NONE": w.BUF_NONE}
    text = header_text()
    for macro, value in [("MOE_PROTOCOL_MAGIC", w.MAGIC), ("MOE_PROTOCOL_VERSION", w.VERSION),
                         ("MOE_PROTOCOL_MIN_VERSION", w.MIN_VERSION),
                         ("MOE_NAME_BYTES", w.NAME_BYTES), ("MOE_SHM_NAME_BYTES", w.SHM_NAME_BYTES),
                         ("MOE_TAG_BYTES", w.TAG_BYTES), ("MOE_MAX_MESSAGE_TEXT", w.MAX_MESSAGE_TEXT)]:
        m = re.search(r"#define\s+" + macro + r"\s+(0x[0-9A-Fa-f]+|\d+)u?", text)
        assert m and int(m.group(1), 0) == value, macro


def anonymous_enum_values():
    """Every NAME = value of the header's anonymous enums (feature bits, load flags)."""
    out = {}
    for body in re.findall(r"enum\s*\{(.*?)\}", header_text(), re.S):
        for item in body.split(","):
            if "=" in item:
                key, value = (p.strip() for p in item.split("="))
                out[key] = int(value.rstrip("uU"), 0)
    return out


def test_v2_flags_match_the_header():
    flags = anonymous_enum_values()
    assert {k: v for k, v in flags.items() if k.startswith("MOE_FEATURE_")} == {
        "MOE_FEATURE_MASK": w.FEATURE_MASK, "MOE_FEATURE_TOKEN_IDS": w.FEATURE_TOKEN_IDS,
        "MOE_FEATURE_PLACEMENT": w.FEATURE_PLACEMENT, "MOE_FEATURE_EXPERT_LOAD": w.FEATURE_EXPERT_LOAD,
        "MOE_FEATURE_CHANNELS": w.FEATURE_CHANNELS}
    assert flags["MOE_LOAD_RESET_WINDOW"] == w.LOAD_RESET_WINDOW


def test_v2_sizes_are_the_static_asserted_ones():
    """The sizes and offsets Include/moe_router_wire.h static-asserts, read from the header itself
    (so this holds without a C compiler too)."""
    text = header_text()
    by_name = {s.c_name: s for s in w.ALL_STRUCTS}
    sizes = re.findall(r"MOE_STATIC_ASSERT\(sizeof\((\w+)\) == (\d+)", text)
    offsets = re.findall(r"MOE_STATIC_ASSERT\(offsetof\((\w+), (\w+)\) == (\d+)", text)
    assert len(sizes) >= 25 and offsets
    for name, size in sizes:
        if name in by_name:
            assert by_name[name].size == int(size), name
    for name, field_name, off in offsets:
        st = by_name[name]
        first = next(n for n in st.names if n == field_name or n.startswith(field_name + "."))
        assert st.offsets[first] == int(off), (name, field_name)


def test_v2_route_body_layout():
    refs = [(w.BUF_INLINE, 0, 0, 16), (w.BUF_SHM, 7, 64, 8), (w.BUF_INLINE, 0, 0, 8), (w.BUF_SHM, 7, 128, 16),
            (w.BUF_NONE, 0, 0, 0)]
    body = w.route_body_v2(3, 1, 2, refs, 8)
    assert len(body) == w.ROUTE_REQ_V2.size == 192
    d = w.ROUTE_REQ_V2.unpack(body)
    assert (d["base.layer_id"], d["base.dtype"], d["base.tokens"]) == (3, 1, 2)
    assert (d["token_ids.kind"], d["token_ids.handle"], d["token_ids.offset"], d["token_ids.length"]) == (1, 7, 128, 16)
    assert (d["mask.kind"], d["mask.handle"], d["mask.offset"], d["mask.length"]) == (2, 0, 0, 0)
    assert d["token_id_bytes"] == 8 and d["reserved"] == 0 and d["reserved2"] == 0
    # the version-1 body is the version-2 body's first 112 bytes
    assert body[:w.ROUTE_REQ.size] == w.route_body(3, 1, 2, refs[:3])


def test_v2_error_classes():
    assert issubclass(moe_router.NotPermittedError, PermissionError)
    assert issubclass(moe_router.BadPlacementError, ValueError)
    err = moe_router.error_for(30, "token_ids[3] = 200000 is outside", token=3)
    assert type(err) is moe_router.TokenIdError and err.token == 3 and isinstance(err, ValueError)
    err = moe_router.error_for(31, "mask[1] = 2", token=1)
    assert type(err) is moe_router.BadMaskError and err.token == 1
    assert moe_router.Status(28).c_name == "MOE_ERR_NOT_PERMITTED"
