"""bench/wavio.py: every supported WAV kind decodes to the right samples; the rest fail clearly.

Regression: ``bench/turn_latency.py --audio FILE`` crashed on WAVE_FORMAT_EXTENSIBLE and
32-bit files, because ``testkit.audio.load_frames`` reads WAVs with the stdlib ``wave`` module.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from bench.wavio import WavError, read_wav, resample, to_pcm16

GUID_SUFFIX = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def chunk(chunk_id: bytes, body: bytes, *, declared: int | None = None) -> bytes:
    size = len(body) if declared is None else declared
    return chunk_id + struct.pack("<I", size) + body + (b"\0" if len(body) % 2 else b"")


def fmt(tag: int, channels: int, rate: int, bits: int, *, sub: int | None = None) -> bytes:
    block = channels * bits // 8
    body = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    if sub is not None:  # WAVE_FORMAT_EXTENSIBLE: cbSize, valid bits, channel mask, GUID
        mask = (1 << channels) - 1
        body += struct.pack("<HHI", 22, bits, mask) + struct.pack("<H", sub) + GUID_SUFFIX
    return chunk(b"fmt ", body)


def write(path: Path, *chunks: bytes) -> Path:
    body = b"WAVE" + b"".join(chunks)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def sine(
    rate: int, *, hz: float = 440.0, amplitude: float = 0.5, seconds: float = 0.2
) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return amplitude * np.sin(2 * np.pi * hz * t)


def interleave(*channels: np.ndarray) -> np.ndarray:
    return np.stack(channels, axis=1).reshape(-1)


def int16_bytes(x: np.ndarray) -> bytes:
    return np.round(x * 32767).astype("<i2").tobytes()


def int24_bytes(x: np.ndarray) -> bytes:
    ints = np.round(x * (2**23 - 1)).astype(np.int64) & 0xFFFFFF
    triples = np.stack([ints & 0xFF, (ints >> 8) & 0xFF, ints >> 16], axis=1)
    return triples.astype(np.uint8).tobytes()


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate / samples.size)


def assert_sine(samples: np.ndarray, rate: int, *, amplitude: float, tolerance: float) -> None:
    assert samples.dtype == np.float32
    assert abs(float(np.max(np.abs(samples))) - amplitude) <= tolerance
    assert abs(peak_hz(samples.astype(np.float64), rate) - 440.0) <= rate / samples.size


def test_pcm16_mono_22050(tmp_path: Path) -> None:
    path = write(tmp_path / "a.wav", fmt(1, 1, 22050, 16), chunk(b"data", int16_bytes(sine(22050))))
    wav = read_wav(path)
    assert (wav.sample_rate, wav.channels, wav.bits, wav.format) == (22050, 1, 16, "pcm")
    assert wav.samples.size == 4410
    assert_sine(wav.samples, 22050, amplitude=0.5, tolerance=1e-4)


def test_pcm16_values_are_exact_and_survive_to_pcm16(tmp_path: Path) -> None:
    values = np.array([0, 1, -1, 32767, -32768, 12345], dtype="<i2")
    path = write(tmp_path / "a.wav", fmt(1, 1, 16000, 16), chunk(b"data", values.tobytes()))
    wav = read_wav(path)
    np.testing.assert_array_equal(wav.samples, values / 32768.0)
    np.testing.assert_array_equal(to_pcm16(wav, 16000), values)


def test_pcm8_is_unsigned(tmp_path: Path) -> None:
    path = write(tmp_path / "a.wav", fmt(1, 1, 8000, 8), chunk(b"data", bytes([0, 128, 255])))
    wav = read_wav(path)
    assert wav.bits == 8
    np.testing.assert_array_equal(wav.samples, np.array([-1.0, 0.0, 127 / 128], np.float32))


def test_pcm8_sine(tmp_path: Path) -> None:
    data = (np.round(sine(8000) * 127) + 128).astype(np.uint8).tobytes()
    wav = read_wav(write(tmp_path / "a.wav", fmt(1, 1, 8000, 8), chunk(b"data", data)))
    assert_sine(wav.samples, 8000, amplitude=0.5, tolerance=1 / 128)


def test_pcm24_stereo_44100_is_averaged(tmp_path: Path) -> None:
    left, right = sine(44100, amplitude=0.6), sine(44100, amplitude=0.2)
    data = int24_bytes(interleave(left, right))
    wav = read_wav(write(tmp_path / "a.wav", fmt(1, 2, 44100, 24), chunk(b"data", data)))
    assert (wav.channels, wav.bits, wav.sample_rate) == (2, 24, 44100)
    assert wav.samples.size == left.size
    assert_sine(wav.samples, 44100, amplitude=0.4, tolerance=1e-4)


def test_pcm24_extremes(tmp_path: Path) -> None:
    data = bytes([0, 0, 0x80, 0xFF, 0xFF, 0x7F, 0, 0, 0x40, 0xFF, 0xFF, 0xFF])
    wav = read_wav(write(tmp_path / "a.wav", fmt(1, 1, 8000, 24), chunk(b"data", data)))
    expected = np.array([-1.0, (2**23 - 1) / 2**23, 0.5, -1 / 2**23], np.float32)
    np.testing.assert_array_equal(wav.samples, expected)


def test_pcm32_int(tmp_path: Path) -> None:
    values = np.array([0, 2**31 - 1, -(2**31), 2**30], dtype="<i4")
    wav = read_wav(
        write(tmp_path / "a.wav", fmt(1, 1, 48000, 32), chunk(b"data", values.tobytes()))
    )
    assert (wav.bits, wav.format) == (32, "pcm")
    np.testing.assert_allclose(wav.samples, [0.0, 1.0, -1.0, 0.5], atol=1e-7)


def test_float32_clipped_to_unit_range(tmp_path: Path) -> None:
    values = np.array([0.0, 0.25, -0.5, 1.5, -2.0], dtype="<f4")
    wav = read_wav(
        write(tmp_path / "a.wav", fmt(3, 1, 16000, 32), chunk(b"data", values.tobytes()))
    )
    assert (wav.bits, wav.format) == (32, "float")
    np.testing.assert_array_equal(wav.samples, [0.0, 0.25, -0.5, 1.0, -1.0])


def test_float64_three_channels(tmp_path: Path) -> None:
    values = np.array([0.3, 0.6, 0.9, -0.3, -0.3, 0.0], dtype="<f8")
    wav = read_wav(
        write(tmp_path / "a.wav", fmt(3, 3, 16000, 64), chunk(b"data", values.tobytes()))
    )
    assert wav.channels == 3
    np.testing.assert_allclose(wav.samples, [0.6, -0.2], atol=1e-7)


def test_extensible_pcm16(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.wav",
        fmt(0xFFFE, 1, 16000, 16, sub=1),
        chunk(b"data", int16_bytes(sine(16000))),
    )
    wav = read_wav(path)
    assert (wav.format, wav.bits) == ("extensible-pcm", 16)
    assert_sine(wav.samples, 16000, amplitude=0.5, tolerance=1e-4)


def test_extensible_float_stereo_48000_resampled(tmp_path: Path) -> None:
    left, right = sine(48000, amplitude=0.5), sine(48000, amplitude=0.3)
    data = interleave(left, right).astype("<f4").tobytes()
    path = write(tmp_path / "a.wav", fmt(0xFFFE, 2, 48000, 32, sub=3), chunk(b"data", data))
    wav = read_wav(path)
    assert (wav.format, wav.channels, wav.sample_rate) == ("extensible-float", 2, 48000)
    assert_sine(wav.samples, 48000, amplitude=0.4, tolerance=1e-6)

    pcm = to_pcm16(wav, 24000)
    assert pcm.dtype == np.int16
    assert pcm.size == wav.samples.size // 2
    middle = pcm[500:-500].astype(np.float64) / 32768  # away from the resampler's edges
    assert abs(float(np.max(np.abs(middle))) - 0.4) < 0.01
    assert abs(peak_hz(middle, 24000) - 440.0) <= 24000 / middle.size


def test_unknown_chunks_and_odd_padding_are_skipped(tmp_path: Path) -> None:
    values = np.array([100, -200, 300], dtype="<i2")
    path = write(
        tmp_path / "a.wav",
        chunk(b"JUNK", b"\0" * 3),  # odd size: followed by a pad byte
        fmt(1, 1, 22050, 16),
        chunk(b"LIST", b"INFOISFT\x05\0\0\0lavf\0"),  # odd size again
        chunk(b"fact", struct.pack("<I", 3)),
        chunk(b"data", values.tobytes()),
        chunk(b"LIST", b"INFO"),  # after the data: ignored
    )
    np.testing.assert_array_equal(to_pcm16(read_wav(path), 22050), values)


def test_pipe_written_data_size_means_until_the_end(tmp_path: Path) -> None:
    values = np.array([1, 2, 3, 4], dtype="<i2")
    header = b"data" + struct.pack("<I", 0xFFFFFFFF)
    path = write(tmp_path / "a.wav", fmt(1, 1, 8000, 16), header + values.tobytes())
    np.testing.assert_array_equal(to_pcm16(read_wav(path), 8000), values)


def test_truncated_data(tmp_path: Path) -> None:
    body = np.zeros(250, dtype="<i2").tobytes()
    path = write(tmp_path / "a.wav", fmt(1, 1, 8000, 16), chunk(b"data", body, declared=1000))
    with pytest.raises(WavError, match=r"truncated: the data chunk declares 1000 bytes.* 500"):
        read_wav(path)


def test_partial_last_frame(tmp_path: Path) -> None:
    path = write(tmp_path / "a.wav", fmt(1, 2, 8000, 16), chunk(b"data", b"\0" * 6))
    with pytest.raises(WavError, match="not a whole number of 4-byte frames"):
        read_wav(path)


def test_alaw_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "a.wav", fmt(6, 1, 8000, 8), chunk(b"data", b"\xd5" * 100))
    with pytest.raises(
        WavError, match=r"format tag 0x0006 \(A-law\) is compressed audio, not supported"
    ):
        read_wav(path)


def test_extensible_with_compressed_subformat_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "a.wav", fmt(0xFFFE, 1, 8000, 8, sub=7), chunk(b"data", b"\0" * 8))
    with pytest.raises(WavError, match=r"SubFormat 0x0007 \(µ-law\)"):
        read_wav(path)


def test_not_riff_wave(tmp_path: Path) -> None:
    path = tmp_path / "a.ogg"
    path.write_bytes(b"OggS" + b"\0" * 40)
    with pytest.raises(WavError, match="not a RIFF/WAVE file"):
        read_wav(path)


def test_missing_chunks(tmp_path: Path) -> None:
    no_data = write(tmp_path / "a.wav", fmt(1, 1, 8000, 16), chunk(b"LIST", b"INFO"))
    with pytest.raises(WavError, match=r"no data chunk$"):
        read_wav(no_data)
    no_fmt = write(tmp_path / "b.wav", chunk(b"LIST", b"INFO"))
    with pytest.raises(WavError, match=r"no fmt chunk$"):
        read_wav(no_fmt)
    data_first = write(tmp_path / "c.wav", chunk(b"data", b"\0\0"), fmt(1, 1, 8000, 16))
    with pytest.raises(WavError, match="data chunk before any fmt chunk"):
        read_wav(data_first)


def test_errors_are_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.wav", fmt(0x55, 2, 44100, 16), chunk(b"data", b"\0" * 8))
    with pytest.raises(WavError) as caught:
        read_wav(path)
    assert "\n" not in str(caught.value)
    assert "MPEG Layer 3" in str(caught.value)


def test_resample_keeps_time_and_tone() -> None:
    impulse = np.zeros(22050)
    impulse[1000] = 1.0
    out = resample(impulse, 22050, 24000)
    assert out.size == 24000
    assert int(np.argmax(out)) == round(1000 * 24000 / 22050)  # no delay

    tone = sine(22050, seconds=1.0)
    out = resample(tone, 22050, 24000)
    expected = sine(24000, seconds=1.0)
    np.testing.assert_allclose(out[100:-100], expected[100:-100], atol=1e-4)

    down = resample(sine(48000, seconds=1.0), 48000, 16000)
    np.testing.assert_allclose(down[100:-100], sine(16000, seconds=1.0)[100:-100], atol=1e-4)
    alias = resample(sine(48000, hz=12000, seconds=1.0), 48000, 16000)  # above 8 kHz
    assert float(np.max(np.abs(alias[100:-100]))) < 1e-3


def test_deterministic_to_pcm16_is_identical_every_time(tmp_path: Path) -> None:
    """livekit's resampler dithers: two calls differ by a few LSB, silence included."""
    tone = sine(22050, seconds=0.5)
    silence = np.zeros(2205)
    data = int16_bytes(np.concatenate([silence, tone, silence]))
    wav = read_wav(write(tmp_path / "a.wav", fmt(1, 1, 22050, 16), chunk(b"data", data)))
    first = to_pcm16(wav, 24000, deterministic=True)
    np.testing.assert_array_equal(first, to_pcm16(wav, 24000, deterministic=True))
    assert first.size == to_pcm16(wav, 24000).size
    assert not np.any(first[:2000])  # silence stays digital silence
