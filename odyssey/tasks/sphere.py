"""Audio files of a speech corpus: NIST SPHERE (TIMIT's ``.WAV``) or RIFF WAV, told apart by magic bytes.

A NIST SPHERE file is a 1024-byte ASCII header followed by the samples::

    NIST_1A
       1024
    database_id -s5 TIMIT
    sample_count -i 46797
    sample_rate -i 16000
    channel_count -i 1
    sample_n_bytes -i 2
    sample_byte_format -s2 01
    sample_coding -s3 pcm
    end_head

Each line is ``key -type value``: ``-i`` integer, ``-r`` real, ``-sN`` a string of N bytes. The
second line is the header size in bytes. ``sample_byte_format`` ``01`` is little-endian 16-bit,
``10`` big-endian. :func:`read_sphere_header` checks the header itself (so that a corrupt one is
refused with the file's name and the problem, not a libsndfile message), and the samples are read
by libsndfile (the ``soundfile`` package), which reads SPHERE and RIFF alike. Shorten-compressed
SPHERE (``sample_coding pcm,embedded-shorten-...``, some LDC discs) is refused with the fix
(``sph2pipe``).

Example:
    >>> samples, rate = read_audio("TIMIT/TRAIN/DR1/FCJF0/SI1027.WAV")  # doctest: +SKIP
    >>> samples.dtype, rate
    (dtype('int16'), 16000)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from odyssey.errors import DataError

__all__ = ["SPHERE_MAGIC", "read_audio", "read_sphere_header", "write_sphere"]

SPHERE_MAGIC = b"NIST_1A"
RIFF_MAGIC = b"RIFF"
_TYPES = {"-i": int, "-r": float}


def read_sphere_header(path: str | Path, head: bytes | None = None) -> dict[str, int | float | str]:
    """The fields of a SPHERE header, typed (``sample_rate`` -> 16000), plus ``header_size``.

    Raises:
        DataError: naming the file and what is wrong (no ``NIST_1A``, a bad size line, a
            malformed ``key -type value`` line, no ``end_head``).
    """
    path = Path(path)
    if head is None:
        with open(path, "rb") as f:
            head = f.read(1024)
    bad = f"NIST SPHERE file {path} has a corrupt header"
    lines = head.split(b"\n")
    if not lines or lines[0].strip() != SPHERE_MAGIC:
        raise DataError(f"{bad}: it does not start with {SPHERE_MAGIC.decode()}")
    try:
        size = int(lines[1].strip())
    except (IndexError, ValueError):
        raise DataError(f"{bad}: line 2 should be the header size (e.g. 1024), got {lines[1:2]!r}") from None
    if size < 16 or size % 1024:
        raise DataError(f"{bad}: header size {size} is not a positive multiple of 1024")
    if size > len(head):
        with open(path, "rb") as f:
            head = f.read(size)
        if len(head) < size:
            raise DataError(f"{bad}: the file is shorter ({len(head)} bytes) than its header size {size}")
        lines = head.split(b"\n")
    fields: dict[str, int | float | str] = {"header_size": size}
    for number, raw in enumerate(lines[2:], start=3):
        line = raw.decode("ascii", errors="replace").strip()
        if line == "end_head":
            return fields
        if not line or line.startswith(";"):
            continue
        parts = line.split(None, 2)
        if len(parts) != 3 or not parts[1].startswith("-") or not (parts[1] in _TYPES or parts[1].startswith("-s")):
            raise DataError(f"{bad}: line {number} {line!r} is not 'key -type value' (-i, -r or -sN)")
        key, kind, value = parts
        try:
            fields[key] = _TYPES[kind](value) if kind in _TYPES else value
        except ValueError:
            raise DataError(f"{bad}: line {number} {line!r}: {value!r} is not of type {kind}") from None
    raise DataError(f"{bad}: no 'end_head' line in its first {size} bytes")


def _check_sphere(path: Path, fields: dict) -> None:
    bad = f"NIST SPHERE file {path}"
    coding = str(fields.get("sample_coding", "pcm"))
    if "shorten" in coding or coding not in ("pcm", "linear"):
        raise DataError(
            f"{bad} holds sample_coding {coding!r}; only uncompressed 16-bit PCM is read "
            "(decompress shorten files with sph2pipe -f wav, or use a copy with plain PCM)"
        )
    for key, expected in (("sample_n_bytes", 2), ("channel_count", 1)):
        if fields.get(key, expected) != expected:
            raise DataError(f"{bad} has {key} {fields[key]!r}; expected {expected} (16-bit mono PCM)")
    order = str(fields.get("sample_byte_format", "01"))
    if order not in ("01", "10"):
        raise DataError(f"{bad} has sample_byte_format {order!r}; expected 01 (little-endian) or 10 (big-endian)")
    if not isinstance(fields.get("sample_rate"), int) or fields["sample_rate"] <= 0:
        raise DataError(f"{bad} has no valid sample_rate (-i, in Hz) in its header")


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The samples (N,) int16 and the sample rate of a mono 16-bit SPHERE or RIFF WAV file.

    The format is told by the first bytes (``NIST_1A`` or ``RIFF``), not by the file name.

    Raises:
        DataError: naming the file: unknown format, corrupt SPHERE header, compressed or
            non-16-bit or multichannel audio, fewer samples than the header announces, or a file
            libsndfile cannot read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as exc:
        raise DataError(f"audio file {path} cannot be read: {exc.strerror or exc}") from None
    if head.startswith(SPHERE_MAGIC):
        fields = read_sphere_header(path, head)
        _check_sphere(path, fields)
        kind = "NIST SPHERE"
    elif head.startswith(RIFF_MAGIC):
        fields, kind = {}, "RIFF WAV"
    else:
        raise DataError(
            f"audio file {path} is neither NIST SPHERE (starts with NIST_1A) nor RIFF WAV (starts with RIFF): "
            f"its first bytes are {head[:8]!r}"
        )
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise DataError(f"{kind} file {path} cannot be decoded by libsndfile: {exc}") from None
    if samples.shape[1] != 1:
        raise DataError(f"{kind} file {path} has {samples.shape[1]} channels; expected mono")
    samples = samples[:, 0]
    expected = fields.get("sample_count")
    if isinstance(expected, int) and expected != len(samples):
        raise DataError(f"{kind} file {path} holds {len(samples)} samples; its header announces {expected} (truncated?)")
    return np.ascontiguousarray(samples), int(rate)


def write_sphere(path: str | Path, samples: np.ndarray, rate: int = 16000, *, byte_format: str = "01") -> None:
    """Write 16-bit mono PCM as a NIST SPHERE file with a 1024-byte header (TIMIT's layout).

    For tests and conversions: the header holds the fields TIMIT's files hold.
    """
    samples = np.asarray(samples, dtype=np.int16)
    lines = [
        "NIST_1A",
        "   1024",
        "database_id -s5 TIMIT",
        "database_version -s3 1.0",
        "utterance_id -s8 synthetic",
        "channel_count -i 1",
        f"sample_count -i {len(samples)}",
        f"sample_rate -i {rate}",
        "sample_min -i {}".format(int(samples.min()) if len(samples) else 0),
        "sample_max -i {}".format(int(samples.max()) if len(samples) else 0),
        "sample_n_bytes -i 2",
        f"sample_byte_format -s2 {byte_format}",
        "sample_sig_bits -i 16",
        "end_head",
    ]
    header = ("\n".join(lines) + "\n").encode("ascii")
    header += b" " * (1024 - len(header))
    data = samples.astype("<i2" if byte_format == "01" else ">i2").tobytes()
    Path(path).write_bytes(header + data)
