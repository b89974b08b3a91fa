"""quantize.int8: 7-bit weights exactly where u8 x s8 products could saturate int16."""

from __future__ import annotations

from pathlib import Path

from quantize.int8 import cpu_has_vnni, weight_bits_for


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
                    f"flags\t\t: {flags}\n")
    return path


def test_vnni_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    assert cpu_has_vnni(cpuinfo(tmp_path, "fpu sse2 avx2 avx512f avx512bw avx512_vnni"))
    assert cpu_has_vnni(cpuinfo(tmp_path, "fpu sse2 avx2 avx_vnni"))
    assert not cpu_has_vnni(cpuinfo(tmp_path, "fpu sse2 avx2 avx512f avx512bw"))
    assert not cpu_has_vnni(tmp_path / "missing"), "unknown CPU: the safe answer"


def test_seven_bit_weights_only_for_uint8_without_vnni() -> None:
    assert weight_bits_for("uint8", vnni=False) == 7
    assert weight_bits_for("uint8", vnni=True) == 8
    assert weight_bits_for("int8", vnni=False) == 8, "TensorRT's int8 path has no int16 pairs"
    # The reason: with |w| <= 64 the largest u8 x s8 pair still fits int16; with 127 it does not.
    assert 255 * 64 * 2 <= 32767 < 255 * 127 * 2
