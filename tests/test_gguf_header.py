"""The fast GGUF header reader against gguf-py's GGUFReader (the reference), and its refusal of damaged files."""

import numpy as np
import pytest

from teeny_core.formats.gguf_header import GGUFHeaderError, read_gguf_header


def write(path, endian="little", alignment=None):
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian.BIG if endian == "big"
                             else gguf.GGUFEndian.LITTLE)
    if alignment:
        writer.add_custom_alignment(alignment)
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -5)
    writer.add_uint16("t.u16", 60000)
    writer.add_int16("t.i16", -300)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -7)
    writer.add_float32("t.f32", 0.25)
    writer.add_uint64("t.u64", 2**40)
    writer.add_int64("t.i64", -(2**40))
    writer.add_float64("t.f64", 1e-300)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo")
    writer.add_array("t.ints", [1, 2, 3])
    writer.add_array("t.strs", ["a", "bb", "", "ccc"] * 1000)
    writer.add_context_length(8192)
    rng = np.random.default_rng(0)
    writer.add_tensor("a.weight", rng.random((3, 5), dtype=np.float32))
    writer.add_tensor("b.weight", rng.random((64, 7)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.random((4, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("c.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("endian,alignment", [("little", None), ("big", None), ("little", 64)])
def test_header_matches_gguf_py(tmp_path, endian, alignment):
    import gguf

    path = write(tmp_path / "m.gguf", endian, alignment)
    header = read_gguf_header(path)
    reader = gguf.GGUFReader(str(path), "r")
    expected_meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        is_array = field.types[0] == gguf.GGUFValueType.ARRAY
        expected_meta[key] = len(field.data) if is_array else field.contents()
        assert (key in header.arrays) == is_array, key
    assert header.metadata.keys() == expected_meta.keys()
    for key, value in expected_meta.items():
        if isinstance(value, float):
            assert header.metadata[key] == pytest.approx(value, rel=1e-7), key
        else:
            assert header.metadata[key] == value, key
    assert header.metadata["t.str"] == "héllo" and header.metadata["t.strs"] == 4000
    assert [t.name for t in header.tensors] == [t.name for t in reader.tensors]
    for mine, theirs in zip(header.tensors, reader.tensors):
        assert mine.shape == tuple(int(d) for d in theirs.shape)
        assert mine.type == int(theirs.tensor_type) and mine.type_name == theirs.tensor_type.name
        assert (mine.n_elements, mine.n_bytes) == (int(theirs.n_elements), int(theirs.n_bytes))
        assert header.data_start + mine.offset == int(theirs.data_offset)
    assert header.version == 3


def test_damaged_files_are_refused_with_what_is_wrong(tmp_path):
    path = write(tmp_path / "m.gguf")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    header = read_gguf_header(path)
    last = header.tensors[-1]
    cut.write_bytes(data[:header.data_start + last.offset + last.n_bytes - 1])  # its last byte of data is missing
    with pytest.raises(GGUFHeaderError, match="c.weight.*past the end"):
        read_gguf_header(cut)
    cut.write_bytes(data[:3000])  # inside the metadata
    with pytest.raises(GGUFHeaderError, match="cut short|past the end"):
        read_gguf_header(cut)
    cut.write_bytes(b"GGUF" + data[4:8].replace(b"\x03", b"\x09") + data[8:])
    with pytest.raises(GGUFHeaderError, match="version 9"):
        read_gguf_header(cut)
    cut.write_bytes(b"GGML" + data[4:])
    with pytest.raises(GGUFHeaderError, match="magic"):
        read_gguf_header(cut)


def test_hostile_headers_are_refused_in_one_error_not_a_crash(tmp_path):
    import struct

    def header(kv: bytes, n_kv: int = 1) -> bytes:
        return b"GGUF" + struct.pack("<IQQ", 3, 0, n_kv) + kv

    def key(name: str) -> bytes:
        return struct.pack("<Q", len(name)) + name.encode()

    path = tmp_path / "h.gguf"
    # arrays of arrays nested 100,000 deep: a recursion bomb for a naive reader
    path.write_bytes(header(key("a") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 100_000
                            + struct.pack("<IQ", 4, 0)))
    with pytest.raises(GGUFHeaderError, match="nested too deep"):
        read_gguf_header(path)
    # an alignment that is not a positive integer
    for value in (struct.pack("<I", 8) + key("x"), struct.pack("<I", 4) + struct.pack("<I", 0)):
        path.write_bytes(header(key("general.alignment") + value) + b"\0" * 64)
        with pytest.raises(GGUFHeaderError, match="general.alignment"):
            read_gguf_header(path)
    # a string length far past the end of the file
    path.write_bytes(header(struct.pack("<Q", 2**62) + b"k"))
    with pytest.raises(GGUFHeaderError, match="past the end"):
        read_gguf_header(path)
