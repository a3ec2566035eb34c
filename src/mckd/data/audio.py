"""WAV reading and the two MFCC recipes of Audiovision-MNIST.

WAV files are read with the standard library (PCM, 8/16/24/32-bit, any
number of channels, mixed to mono by the mean), scaled to [-1, 1) as
soundfile (and so ``librosa.load``) scales them: ``int16 / 32768`` and so on.

The MFCCs need librosa (the ``audio`` extra), imported only when a recipe
runs; its first call compiles with numba for about 13 s.

- ``smil``: SMIL's recipe (Ma et al., 2021), exactly: load at the native
  rate (8 kHz for FSDD), keep every third sample, then
  ``librosa.feature.mfcc(y, sr=8000, n_mfcc=20)`` with librosa's default
  frames (n_fft 2048, hop 512, centred, 128 mel bands), zero-padded or cut to
  20 frames. Declaring 8 kHz for a signal that is really at 8/3 kHz stretches
  every frequency by 3 and every duration by 1/3; the 2048-sample window is
  longer than nearly every decimated clip (1,475 of the 1,500 FSDD clips;
  1,316 are under 1,500 samples, the longest 6,087), so librosa warns that
  n_fft is too large, and most clips give 2-4 real frames followed by zero
  columns. It is kept because the published AV-MNIST numbers (SMIL, ShaSpec,
  MCKD) were made with it; that one warning is silenced because it is the
  recipe's known, expected behaviour, not a fault of the clip.
- ``clean`` (the default): the whole clip at its true 8 kHz; the hop is
  ``ceil(L / 19)`` samples and the clip is zero-padded to ``19 * hop``, so
  exactly 20 centred frames span it from start to end whatever its length;
  the window is the smallest power of two >= 2 * hop (at least 256 samples,
  32 ms), 40 mel bands up to 4 kHz, the power spectrum divided by the
  window's energy (so clips of different lengths are on one scale), log
  (dB), then 20 DCT coefficients. No warning is raised.
"""

from __future__ import annotations

import math
import re
import struct
import warnings
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from mckd.errors import DataError
from mckd.io import file_problem, folder_problem

Recipe = Literal["smil", "clean"]
RECIPES: tuple[str, ...] = ("smil", "clean")
N_MFCC = 20
N_FRAMES = 20
FSDD_RATE = 8000
FSDD_SPEAKERS = ("jackson", "nicolas", "theo")  # the three original speakers, as in SMIL
_FSDD_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z]+)_(?P<index>\d+)\.wav$")
_SMIL_WARNING = r"n_fft=\d+ is too large for input signal of length=\d+"


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file: mono float32 samples in [-1, 1) ``[L]`` and the sampling rate (Hz).

    Raises:
        DataError: naming the file, when it is missing, not a PCM WAV, or empty.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise DataError(f"WAV file {str(path)!r} {problem}")
    try:
        with wave.open(str(path), "rb") as stream:
            channels, width, rate, frames = (stream.getnchannels(), stream.getsampwidth(),
                                             stream.getframerate(), stream.getnframes())
            raw = stream.readframes(frames)
    except (wave.Error, EOFError, RuntimeError, struct.error, ValueError, OSError) as error:
        # RuntimeError: the wave module's chunk reader seeking past the end of a truncated file
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise DataError(f"WAV file {str(path)!r} is not a readable PCM WAV file ({reason}); it may be truncated or corrupt") from None
    if frames == 0 or len(raw) < channels * width:
        raise DataError(f"WAV file {str(path)!r} holds no samples")
    if rate <= 0:
        raise DataError(f"WAV file {str(path)!r} declares a sample rate of {rate} Hz; expected a positive rate "
                        "(8000 for the Free Spoken Digit recordings)")
    raw = raw[: (len(raw) // (channels * width)) * channels * width]  # a truncated last frame is dropped
    if width == 1:  # unsigned 8-bit, centred on 128
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:  # 24-bit little-endian: widen to int32 by the top three bytes
        bytes3 = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        widened = (bytes3[:, 0].astype(np.int32) << 8) | (bytes3[:, 1].astype(np.int32) << 16) \
            | (bytes3[:, 2].astype(np.int32) << 24)
        samples = (widened >> 8).astype(np.float32) / 8388608.0
    elif width == 4:
        samples = (np.frombuffer(raw, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    else:
        raise DataError(f"WAV file {str(path)!r} has {8 * width}-bit samples; expected 8, 16, 24 or 32-bit PCM")
    samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)  # (L,): librosa's mono is the mean
    return np.ascontiguousarray(samples, dtype=np.float32), rate


@dataclass(frozen=True)
class Recording:
    """One FSDD recording, ``{digit}_{speaker}_{index}.wav``."""

    path: Path
    digit: int
    speaker: str
    index: int


def list_fsdd(folder: str | Path, speakers: Sequence[str] = FSDD_SPEAKERS) -> list[Recording]:
    """The recordings of ``speakers`` in an FSDD ``recordings`` folder, sorted by (speaker, digit, index).

    Files whose names do not follow ``{digit}_{speaker}_{index}.wav`` are ignored.

    Raises:
        DataError: when the folder is missing or a requested speaker has no recording.
    """
    folder = Path(folder)
    problem = folder_problem(folder)
    if problem:
        raise DataError(f"FSDD recordings folder {str(folder)!r} {problem}")
    wanted = set(speakers)
    found: list[Recording] = []
    for path in folder.iterdir():
        match = _FSDD_NAME.match(path.name)
        if match and match["speaker"] in wanted:
            found.append(Recording(path, int(match["digit"]), match["speaker"], int(match["index"])))
    absent = sorted(wanted - {r.speaker for r in found})
    if absent:
        raise DataError(f"FSDD folder {str(folder)!r} has no recording of speaker(s) {absent} "
                        "(files are named {digit}_{speaker}_{index}.wav)")
    return sorted(found, key=lambda r: (speakers.index(r.speaker) if r.speaker in speakers else 0, r.digit, r.index))


def fit_frames(mfcc: np.ndarray, frames: int = N_FRAMES) -> np.ndarray:
    """Zero-pad on the right or cut to ``frames`` columns: ``[C, T] -> [C, frames]``."""
    if mfcc.shape[1] >= frames:
        return mfcc[:, :frames]
    return np.pad(mfcc, ((0, 0), (0, frames - mfcc.shape[1])))


def _librosa():
    try:
        import librosa
    except ImportError:
        raise DataError("MFCCs need librosa: pip install 'mckd[audio]' (librosa and soundfile)") from None
    return librosa


def mfcc_smil(samples: np.ndarray) -> np.ndarray:
    """SMIL's MFCC ``[20, 20]`` float32 of a clip read at its native rate (see the module docstring)."""
    librosa = _librosa()
    decimated = np.ascontiguousarray(samples[::3])
    with warnings.catch_warnings():
        # Expected for every FSDD clip: the default 2048-sample window exceeds the decimated clip.
        warnings.filterwarnings("ignore", message=_SMIL_WARNING, category=UserWarning)
        mfcc = librosa.feature.mfcc(y=decimated, sr=8000, n_mfcc=N_MFCC)  # (20, T), T = 1 + len // 512
    return fit_frames(mfcc).astype(np.float32)


def clean_frame_settings(length: int) -> tuple[int, int]:
    """``(hop, n_fft)`` for a clip of ``length`` samples: 20 centred frames from start to end."""
    hop = max(1, math.ceil(length / (N_FRAMES - 1)))
    n_fft = max(256, 1 << (2 * hop - 1).bit_length())  # smallest power of two >= 2 * hop
    return hop, n_fft


def mfcc_clean(samples: np.ndarray, rate: int) -> np.ndarray:
    """The clean MFCC ``[20, 20]`` float32 of a whole clip (resampled to 8 kHz if needed)."""
    librosa = _librosa()
    if rate != FSDD_RATE:
        samples = librosa.resample(samples, orig_sr=rate, target_sr=FSDD_RATE)
    hop, n_fft = clean_frame_settings(len(samples))
    padded = np.zeros(hop * (N_FRAMES - 1), dtype=np.float32)  # (19 * hop,) >= L
    padded[: len(samples)] = samples
    power = librosa.feature.melspectrogram(y=padded, sr=FSDD_RATE, n_fft=n_fft, hop_length=hop, n_mels=40,
                                           fmax=FSDD_RATE / 2, center=True)  # (40, 20)
    window_energy = float(np.sum(np.hanning(n_fft + 1)[:-1] ** 2))  # periodic Hann, as librosa's
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(power / window_energy), n_mfcc=N_MFCC)  # (20, 20)
    if mfcc.shape != (N_MFCC, N_FRAMES):  # by construction; a librosa change would show here
        raise DataError(f"clean MFCC recipe gave shape {mfcc.shape}, expected {(N_MFCC, N_FRAMES)}")
    return mfcc.astype(np.float32)


def mfcc(samples: np.ndarray, rate: int, recipe: str) -> np.ndarray:
    """The ``[20, 20]`` MFCC of a clip by ``recipe`` (``smil`` or ``clean``)."""
    if recipe == "smil":
        return mfcc_smil(samples)
    if recipe == "clean":
        return mfcc_clean(samples, rate)
    raise DataError(f"MFCC recipe must be one of {list(RECIPES)}, got {recipe!r}")
