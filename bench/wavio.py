"""Read any uncompressed WAV file, for the benchmarks' audio inputs.

The stdlib ``wave`` module (which ``testkit.audio.load_frames`` uses) takes only integer PCM
with format tag 1, so a benchmark given a float, a 32-bit or a ``WAVE_FORMAT_EXTENSIBLE``
file (what most editors and ``sox``/``ffmpeg`` write for anything beyond 16-bit stereo)
used to crash. This module walks the RIFF chunks itself and decodes:

* format tag 1, integer PCM in 8-bit (unsigned), 16-, 24- or 32-bit (signed) containers;
* format tag 3, IEEE float, 32- or 64-bit;
* format tag 0xFFFE, ``WAVE_FORMAT_EXTENSIBLE``, whose SubFormat GUID is PCM or IEEE float
  (samples are left-justified in their container, so valid bits need no special case);

at any sample rate and channel count; channels are averaged to mono. Chunks other than
``fmt`` and ``data`` (``LIST``, ``fact``, ``cue``, ...) are skipped, with the pad byte that
follows an odd-sized chunk. Anything else raises :class:`WavError` with a one-line reason.

    wav = read_wav(path)                 # float32 mono in [-1, 1], the file's own rate
    pcm = to_pcm16(wav, sample_rate=24000)  # int16 mono, resampled by livekit

livekit's resampler dithers its int16 output (±1-2 LSB of noise that differs from run to
run, even on silence), so what must come out byte-identical every time (the turn-taking
corpus, ``bench/corpus.py``) goes through :func:`resample` instead: a plain polyphase
windowed-sinc filter in numpy, without dither.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from livekit import rtc

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE

# the SubFormat GUIDs of WAVE_FORMAT_EXTENSIBLE are a format tag followed by this suffix
_GUID_SUFFIX = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"

# for error messages: the compressed formats one meets in the wild
_TAG_NAMES = {
    0x0002: "Microsoft ADPCM",
    0x0006: "A-law",
    0x0007: "µ-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MPEG Layer 3",
    0x0092: "Dolby AC-3 SPDIF",
    0x00FF: "AAC",
    0x0161: "Windows Media Audio",
    0x1610: "HE-AAC",
    0xF1AC: "FLAC",
}

# writers that cannot seek back (pipes) leave this in the data chunk's size: "until the end"
_UNKNOWN_SIZE = 0xFFFFFFFF


class WavError(ValueError):
    """The file is not a WAV this module can decode; the message says why, on one line."""


@dataclass(frozen=True)
class Wav:
    """A decoded WAV file: its samples as mono float32 and what the file held."""

    samples: np.ndarray
    """float32, mono (the file's channels averaged), in [-1, 1]."""
    sample_rate: int
    channels: int
    """Channels in the file (``samples`` is always mono)."""
    bits: int
    """Bits per sample as the file declares them (the container size)."""
    format: str
    """``"pcm"``, ``"float"``, ``"extensible-pcm"`` or ``"extensible-float"``."""

    @property
    def duration(self) -> float:
        return self.samples.size / self.sample_rate


def _tag_name(tag: int) -> str:
    name = _TAG_NAMES.get(tag)
    return f"0x{tag:04X} ({name})" if name else f"0x{tag:04X}"


@dataclass(frozen=True)
class _Fmt:
    kind: str  # "pcm" | "float"
    label: str
    channels: int
    sample_rate: int
    block_align: int
    bits: int


def _parse_fmt(body: bytes, path: Path) -> _Fmt:
    if len(body) < 16:
        raise WavError(f"{path}: fmt chunk is {len(body)} bytes, shorter than 16")
    tag, channels, sample_rate, _, block_align, bits = struct.unpack_from("<HHIIHH", body)
    label = ""
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(body) < 40:
            raise WavError(f"{path}: WAVE_FORMAT_EXTENSIBLE fmt chunk is {len(body)} bytes, not 40")
        guid = body[24:40]
        sub = struct.unpack_from("<H", guid)[0]
        if guid[2:] != _GUID_SUFFIX:
            raise WavError(
                f"{path}: WAVE_FORMAT_EXTENSIBLE with unsupported SubFormat {guid.hex()}"
            )
        if sub not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT):
            raise WavError(
                f"{path}: WAVE_FORMAT_EXTENSIBLE with SubFormat {_tag_name(sub)} is "
                "compressed audio, not supported; convert it to PCM"
            )
        tag, label = sub, "extensible-"
    if tag not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT):
        raise WavError(
            f"{path}: format tag {_tag_name(tag)} is compressed audio, not supported; "
            "convert it to PCM"
        )
    kind = "pcm" if tag == WAVE_FORMAT_PCM else "float"
    if channels == 0 or sample_rate == 0:
        raise WavError(f"{path}: fmt declares {channels} channel(s) at {sample_rate} Hz")
    if block_align == 0 or block_align % channels:
        raise WavError(f"{path}: block align {block_align} does not fit {channels} channel(s)")
    width = block_align // channels
    allowed = (1, 2, 3, 4) if kind == "pcm" else (4, 8)
    if width not in allowed or not 0 < bits <= 8 * width:
        raise WavError(f"{path}: {bits}-bit {kind} in {8 * width}-bit containers is not supported")
    return _Fmt(kind, label + kind, channels, sample_rate, block_align, bits)


def _decode(data: bytes, fmt: _Fmt) -> np.ndarray:
    """Interleaved samples → float64 in [-1, 1], shape (frames, channels)."""
    width = fmt.block_align // fmt.channels
    if fmt.kind == "float":
        values = np.frombuffer(data, dtype="<f4" if width == 4 else "<f8").astype(np.float64)
        values = np.clip(np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    elif width == 1:  # 8-bit WAV is unsigned, centred on 128
        values = (np.frombuffer(data, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 3:
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        values = ints.astype(np.float64) / (1 << 23)
    else:
        dtype = "<i2" if width == 2 else "<i4"
        values = np.frombuffer(data, dtype=dtype).astype(np.float64) / 2.0 ** (8 * width - 1)
    return values.reshape(-1, fmt.channels)


def read_wav(path: Path | str) -> Wav:
    """Decode the WAV file at ``path``; :class:`WavError` when it cannot be."""
    path = Path(path)
    blob = path.read_bytes()
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        found = blob[:4].decode("latin-1") if len(blob) >= 4 else "a file this short"
        raise WavError(f"{path}: not a RIFF/WAVE file (starts with {found!r})")

    fmt: _Fmt | None = None
    data: bytes | None = None
    pos = 12
    while pos + 8 <= len(blob) and data is None:
        chunk_id, size = struct.unpack_from("<4sI", blob, pos)
        body_at = pos + 8
        if chunk_id == b"data":
            if fmt is None:
                raise WavError(f"{path}: data chunk before any fmt chunk")
            if size == _UNKNOWN_SIZE:
                size = len(blob) - body_at
            if body_at + size > len(blob):
                raise WavError(
                    f"{path}: truncated: the data chunk declares {size} bytes, the file "
                    f"holds {len(blob) - body_at}"
                )
            data = blob[body_at : body_at + size]
            break
        if body_at + size > len(blob):
            raise WavError(
                f"{path}: truncated: chunk {chunk_id!r} declares {size} bytes, the file "
                f"holds {len(blob) - body_at}"
            )
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(blob[body_at : body_at + size], path)
        pos = body_at + size + (size & 1)  # odd-sized chunks are followed by a pad byte

    if fmt is None:
        raise WavError(f"{path}: no fmt chunk")
    if data is None:
        raise WavError(f"{path}: no data chunk")
    if len(data) % fmt.block_align:
        raise WavError(
            f"{path}: truncated: the data chunk holds {len(data)} bytes, not a whole number "
            f"of {fmt.block_align}-byte frames"
        )
    frames = _decode(data, fmt)
    mono = frames.mean(axis=1) if fmt.channels > 1 else frames[:, 0]
    return Wav(
        samples=mono.astype(np.float32),
        sample_rate=fmt.sample_rate,
        channels=fmt.channels,
        bits=fmt.bits,
        format=fmt.label,
    )


def to_pcm16(wav: Wav, sample_rate: int, *, deterministic: bool = False) -> np.ndarray:
    """``wav`` as int16 mono at ``sample_rate``.

    Resampled with livekit's ``AudioResampler`` (HIGH quality, dithered), or with
    :func:`resample` when ``deterministic`` (the same input always gives the same samples).
    16-bit input at the same rate comes back exactly as it was in the file.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if deterministic or wav.sample_rate == sample_rate:
        return _pcm16(resample(wav.samples, wav.sample_rate, sample_rate))
    pcm16 = _pcm16(wav.samples)
    if pcm16.size == 0:
        return pcm16
    resampler = rtc.AudioResampler(
        input_rate=wav.sample_rate,
        output_rate=sample_rate,
        quality=rtc.AudioResamplerQuality.HIGH,
    )
    frames = [*resampler.push(bytearray(pcm16.tobytes())), *resampler.flush()]
    return np.concatenate(
        [np.frombuffer(f.data, dtype=np.int16) for f in frames] or [np.zeros(0, np.int16)]
    )


def _pcm16(samples: np.ndarray) -> np.ndarray:
    scaled = np.round(np.asarray(samples, dtype=np.float64) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


RESAMPLE_HALF_WIDTH = 32  # input samples on each side of an output sample
RESAMPLE_BETA = 8.6  # Kaiser window: about 80 dB of stop-band attenuation
RESAMPLE_ROLLOFF = 0.95  # pass band, as a fraction of the lower Nyquist frequency


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """``samples`` (float, mono) at ``to_rate``: deterministic, no dither, no delay.

    Output sample *n* sits at input position ``n * from_rate / to_rate``, so times carry
    over exactly, and there are ``round(len * to_rate / from_rate)`` of them, as with
    livekit's resampler. Each is a Kaiser-windowed sinc over ``2 * RESAMPLE_HALF_WIDTH``
    input samples; the filter bank has one row per phase of the rational ratio.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"rates must be positive, got {from_rate} and {to_rate}")
    x = np.asarray(samples, dtype=np.float64)
    if from_rate == to_rate or x.size == 0:
        return x.copy()
    g = math.gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    width = RESAMPLE_HALF_WIDTH
    cutoff = RESAMPLE_ROLLOFF * min(1.0, to_rate / from_rate)  # of the input's Nyquist
    taps = np.arange(-width + 1, width + 1)
    distance = np.arange(up)[:, None] / up - taps[None, :]  # (phase, tap), in input samples
    window = np.i0(RESAMPLE_BETA * np.sqrt(np.clip(1 - (distance / width) ** 2, 0, 1)))
    bank = cutoff * np.sinc(cutoff * distance) * window / np.i0(RESAMPLE_BETA)

    count = round(x.size * to_rate / from_rate)
    padded = np.concatenate([np.zeros(width), x, np.zeros(2 * width)])
    rows = np.lib.stride_tricks.sliding_window_view(padded, 2 * width)
    out = np.zeros(count)
    # output n = r + m * up sits at input (r * down) // up + m * down, plus the fraction
    # (r * down % up) / up: one filter row and one stride for each r
    for r in range(min(up, count)):
        first = r * down // up + 1  # + width of padding - (width - 1) taps before
        out[r::up] = rows[first::down][: len(range(r, count, up))] @ bank[r * down % up]
    return out


__all__ = ["Wav", "WavError", "read_wav", "resample", "to_pcm16"]
