"""TIMIT on tiny synthetic corpora in the LDC layout (tests/corpora.py): SPHERE and RIFF audio,
.PHN frame labels, the Halberstadt splits, MFCC features, the verified feature cache, folding,
clear errors, and training (alone, packed) on the task."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import corpora
from odyssey.config import compose, trial_config
from odyssey.errors import DataError
from odyssey.tasks import timit as timit_module
from odyssey.tasks.mfcc import MFCCSettings, frame_centres, mfcc_features, num_frames
from odyssey.tasks.sphere import read_audio, read_sphere_header, write_sphere
from odyssey.tasks.timit import (
    CORE_SPEAKERS,
    DEV_SPEAKERS,
    FOLD_39,
    PHONES,
    PHONES_39,
    TIMITConfig,
    TIMITTask,
    check_full_counts,
    find_root,
    frame_labels,
    read_phn,
    scan_corpus,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The full dev and core-test speaker lists, three train speakers, one utterance as RIFF."""
    dev, core = corpora.full_lists()
    root = corpora.write_timit(tmp_path_factory.mktemp("timit"), dev=dev, core=core, riff=("DR1/FCJF0/SI1027",))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("timit_cache")


def small_config(corpus: Path, cache: Path, **changes) -> TIMITConfig:
    return TIMITConfig(data_dir=str(corpus.parent), expect_full_corpus=False, cache_dir=str(cache), progress=False, **changes)


@pytest.fixture(scope="module")
def task(corpus, cache):
    return small_config(corpus, cache).build()


# --------------------------------------------------------------------------------------------
# Audio


def handmade_sphere(samples: np.ndarray, *, byte_format: str = "01", extra: str = "") -> bytes:
    """A SPHERE file written out by hand (independent of write_sphere)."""
    header = (
        "NIST_1A\n   1024\ndatabase_id -s5 TIMIT\nutterance_id -s8 fcjf0_sa1\nchannel_count -i 1\n"
        f"sample_count -i {len(samples)}\nsample_rate -i 16000\nsample_n_bytes -i 2\n"
        f"sample_byte_format -s2 {byte_format}\nsample_sig_bits -i 16\n{extra}end_head\n"
    ).encode()
    return header.ljust(1024, b" ") + samples.astype("<i2" if byte_format == "01" else ">i2").tobytes()


def test_sphere_header_and_pcm_values(tmp_path):
    samples = np.array([0, 1, -1, 32767, -32768, 1234, -4321, 7], dtype=np.int16)
    path = tmp_path / "SI1027.WAV"
    path.write_bytes(handmade_sphere(samples, extra="sample_coding -s3 pcm\n"))
    fields = read_sphere_header(path)
    assert fields == {
        "header_size": 1024, "database_id": "TIMIT", "utterance_id": "fcjf0_sa1", "channel_count": 1,
        "sample_count": 8, "sample_rate": 16000, "sample_n_bytes": 2, "sample_byte_format": "01",
        "sample_sig_bits": 16, "sample_coding": "pcm",
    }  # fmt: skip
    got, rate = read_audio(path)
    assert rate == 16000 and got.dtype == np.int16 and got.tolist() == samples.tolist()
    path.write_bytes(handmade_sphere(samples, byte_format="10"))  # big-endian
    assert read_audio(path)[0].tolist() == samples.tolist()
    write_sphere(tmp_path / "w.wav", samples)  # the writer the synthetic corpora use
    assert (tmp_path / "w.wav").stat().st_size == 1024 + 2 * len(samples)
    assert read_audio(tmp_path / "w.wav")[0].tolist() == samples.tolist()


def test_riff_and_sphere_give_the_same_samples_and_features(tmp_path):
    import soundfile

    samples = corpora.timit_samples(3)
    write_sphere(tmp_path / "a.WAV", samples)
    soundfile.write(str(tmp_path / "b.WAV"), samples, 16000, subtype="PCM_16", format="WAV")  # same name suffix
    (a, ra), (b, rb) = read_audio(tmp_path / "a.WAV"), read_audio(tmp_path / "b.WAV")
    assert ra == rb == 16000 and np.array_equal(a, b)
    assert np.array_equal(mfcc_features(a, ra), mfcc_features(b, rb))


@pytest.mark.parametrize(
    "header, problem",
    [
        (b"NIST_1B\n   1024\nend_head\n", "is neither NIST SPHERE (starts with NIST_1A) nor RIFF WAV"),
        (b"NIST_1A\n   1000\nend_head\n", "header size 1000 is not a positive multiple of 1024"),
        (b"NIST_1A\n   abc\nend_head\n", "line 2 should be the header size"),
        (b"NIST_1A\n   1024\nsample_rate 16000\nend_head\n", "line 3 'sample_rate 16000' is not 'key -type value'"),
        (b"NIST_1A\n   1024\nsample_rate -i 16k\nend_head\n", "'16k' is not of type -i"),
        (b"NIST_1A\n   1024\nsample_rate -i 16000\n", "no 'end_head' line"),
    ],
)
def test_corrupt_sphere_header_is_refused_with_its_name(tmp_path, header, problem):
    path = tmp_path / "SX127.WAV"
    path.write_bytes(header.ljust(1024, b" ") + b"\0" * 32)
    with pytest.raises(DataError) as err:
        read_audio(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_unknown_audio_compressed_sphere_and_short_file_are_refused(tmp_path):
    path = tmp_path / "x.wav"
    path.write_bytes(b"fLaC\0\0\0\0" + b"\0" * 100)
    with pytest.raises(DataError, match="neither NIST SPHERE .* nor RIFF WAV"):
        read_audio(path)
    samples = np.zeros(16, dtype=np.int16)
    path.write_bytes(handmade_sphere(samples, extra="sample_coding -s26 pcm,embedded-shorten-v2.00\n"))
    with pytest.raises(DataError, match="sph2pipe"):
        read_audio(path)
    path.write_bytes(handmade_sphere(samples)[:-8])  # 4 samples short of sample_count
    with pytest.raises(DataError, match=r"holds 12 samples; its header announces 16"):
        read_audio(path)


# --------------------------------------------------------------------------------------------
# Labels and features


def test_phn_parsing_and_frame_labels_at_centres(tmp_path):
    phn = tmp_path / "SI1027.PHN"
    phn.write_text("".join(f"{a} {b} {p}\n" for a, b, p in corpora.SEGMENTS))
    starts, ends, phones = read_phn(phn)
    assert starts.tolist() == [0, 360, 840, 1160] and ends.tolist() == [360, 840, 1160, 1600]
    centres = frame_centres(1600, 16000)
    assert centres.tolist() == [200, 360, 520, 680, 840, 1000, 1160, 1320]  # t * 160 + 200
    labels = frame_labels(centres, starts, ends, phones)
    # a centre on a boundary (360, 840, 1160) belongs to the phone starting there: ends are exclusive
    assert [PHONES[i] for i in labels] == ["h#", "ix", "ix", "ix", "q", "q", "zh", "zh"]
    short = frame_labels(centres, starts[:2], ends[:2], phones[:2])  # segments end at 840: uncovered after
    assert short.tolist() == [PHONES.index("h#")] + [PHONES.index("ix")] * 3 + [-1] * 4
    for text, problem in [("0 100\n", "expected 'start_sample end_sample phone'"), ("0 100 xx\n", "unknown phone 'xx'"),
                          ("0 100 h#\n50 200 aa\n", "overlaps")]:  # fmt: skip
        phn.write_text(text)
        with pytest.raises(DataError, match=problem) as err:
            read_phn(phn)
        assert str(phn) in str(err.value) and "line" in str(err.value)


def test_mfcc_shape_energy_and_deltas():
    samples = corpora.timit_samples(1)
    s = MFCCSettings()
    feats = mfcc_features(samples, 16000)
    assert s.size == 39 and feats.shape == (num_frames(1600, 16000), 39) == (8, 39) and feats.dtype == np.float32
    x = samples / 32768.0
    emph = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    for t in (0, 5):
        frame = emph[t * 160 : t * 160 + 400] * (0.54 - 0.46 * np.cos(2 * np.pi * np.arange(400) / 399))
        assert feats[t, 12] == pytest.approx(math.log((frame**2).sum()), rel=1e-5)  # log energy
    static = feats[:, :13].astype(np.float64)
    d3 = sum(n * (static[3 + n] - static[3 - n]) for n in (1, 2)) / 10  # HTK regression, interior frame
    assert np.allclose(feats[3, 13:26], d3, rtol=1e-4, atol=1e-5)
    padded = np.vstack([static[:1], static[:1], static])  # edges repeated
    d0 = sum(n * (padded[2 + n] - padded[2 - n]) for n in (1, 2)) / 10
    assert np.allclose(feats[0, 13:26], d0, rtol=1e-4, atol=1e-5)
    assert mfcc_features(samples[:399], 16000).shape == (0, 39)  # shorter than one window


def test_cepstra_match_an_independent_htk_style_computation():
    """c1..c12 from numpy alone: HTK mel triangles (peak 1) on the 512-point power spectrum, ln,
    orthonormal DCT-II written out."""
    samples = corpora.timit_samples(2)
    feats = mfcc_features(samples, 16000)
    x = samples / 32768.0
    emph = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = hz(np.linspace(0, mel(8000), 26 + 2))
    freqs = np.arange(257) * 16000 / 512
    bank = np.array([np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
                     for lo, c, hi in zip(edges, edges[1:], edges[2:])])  # fmt: skip
    n = np.arange(26)
    dct = np.sqrt(2 / 26) * np.cos(np.pi * np.arange(1, 13)[:, None] * (2 * n + 1) / 52)  # (12, 26)
    for t in (0, 4, 7):
        frame = emph[t * 160 : t * 160 + 400] * np.hamming(400)
        power = np.abs(np.fft.rfft(frame, 512)) ** 2
        ceps = dct @ np.log(np.maximum(bank @ power, 1e-10))
        np.testing.assert_allclose(feats[t, :12], ceps, rtol=1e-4, atol=1e-4)


def test_features_are_normalised_with_the_training_set(task):
    assert task.input_size == 39 and task.output_size == 61
    train = torch.cat([s.inputs for s in task.splits["train"]]).double()
    assert train.shape == (24 * 8, 39)
    torch.testing.assert_close(train.mean(0), torch.zeros(39, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.std(0, unbiased=False), torch.ones(39, dtype=torch.float64), atol=1e-4, rtol=0)
    valid = torch.cat([s.inputs for s in task.splits["valid"]]).double()
    assert valid.mean(0).abs().max() > 1e-3  # the same transform, not its own statistics
    seq = task.splits["valid"][0]
    assert seq.inputs.shape == (8, 39) and [PHONES[i] for i in seq.targets] == ["h#", "ix", "ix", "ix", "q", "q", "zh", "zh"]
    assert bool(seq.mask.all())


def test_fold_39(corpus, cache):
    assert len(PHONES) == 61 and len(PHONES_39) == 39 and "sil" in PHONES_39 and "q" not in PHONES_39
    assert {FOLD_39[p] for p in ("pcl", "h#", "pau", "epi")} == {"sil"} and FOLD_39["q"] is None
    assert (FOLD_39["ao"], FOLD_39["ix"], FOLD_39["zh"], FOLD_39["nx"], FOLD_39["ux"]) == ("aa", "ih", "sh", "n", "uw")
    folded = small_config(corpus, cache, fold_39=True).build()
    assert folded.output_size == 39
    seq = folded.splits["train"][0]
    assert [PHONES_39[i] if m else None for i, m in zip(seq.targets, seq.mask)] == ["sil", "ih", "ih", "ih", None, None, "sh", "sh"]


# --------------------------------------------------------------------------------------------
# Layout and splits


def uids(splits):
    return {s: [u.uid for u in us] for s, us in splits.items()}


def test_split_membership(corpus):
    splits = scan_corpus(find_root(corpus.parent))
    assert {u.speaker for u in splits["train"]} == {"FCJF0", "MDPK0", "FAEM0"}
    assert {u.speaker for u in splits["valid"]} == DEV_SPEAKERS and {u.speaker for u in splits["test"]} == CORE_SPEAKERS
    assert all(not u.name.startswith("SA") for us in splits.values() for u in us)  # SA sentences dropped
    assert {s: len(u) for s, u in splits.items()} == {"train": 24, "valid": 400, "test": 192}
    assert "FKLC0" not in {u.speaker for us in splits.values() for u in us}  # neither dev nor core
    assert splits["train"][0].uid == "DR1/FCJF0/SI1027" and splits["train"][0].wav.name == "SI1027.WAV"


def test_lowercase_layout_reads_the_same(tmp_path):
    dev, core = corpora.full_lists()
    upper = corpora.write_timit(tmp_path / "u", dev=dev, core=core, empty_audio=True)
    lower = corpora.write_timit(tmp_path / "l", dev=dev, core=core, empty_audio=True, lowercase=True)
    assert lower.name == "timit" and (lower / "train" / "dr1" / "fcjf0" / "si1027.wav").is_file()
    assert find_root(tmp_path / "l") == lower and find_root(lower) == lower
    assert uids(scan_corpus(lower)) == uids(scan_corpus(upper))


def test_full_corpus_counts_are_halberstadts(tmp_path):
    """A layout with the real split sizes: 462 train speakers x 8 SI/SX (+ 2 SA), the 50 dev and
    24 core speakers and other test speakers; empty audio (only the layout is read)."""
    dev, core = corpora.full_lists()
    train = [(f"DR{1 + i % 8}", f"M{i:03d}0") for i in range(462)]
    root = corpora.write_timit(tmp_path, train=train, dev=dev, core=core, empty_audio=True)
    splits = scan_corpus(root)
    assert {s: len(u) for s, u in splits.items()} == {"train": 3696, "valid": 400, "test": 192}
    check_full_counts(root, splits)
    (root / "TRAIN" / "DR2" / "M0010" / "SX37.WAV").unlink()
    with pytest.raises(DataError, match=r"has no \.WAV file"):
        scan_corpus(root)
    (root / "TRAIN" / "DR2" / "M0010" / "SX37.PHN").unlink()
    with pytest.raises(DataError, match=r"3695/400/192 .*462 train speakers.*3696/400/192.*M0010.*expect_full_corpus=false"):
        check_full_counts(root, scan_corpus(root))


def test_missing_or_partial_corpus_names_what_is_expected(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=rf"TIMIT data directory {tmp_path / 'nowhere'} does not exist; expected TRAIN/ and TEST/"):
        TIMITConfig(data_dir=str(tmp_path / "nowhere")).build()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no TIMIT corpus: expected TRAIN/ and TEST/"):
        TIMITConfig(data_dir=str(tmp_path / "empty")).build()
    (tmp_path / "half" / "TIMIT" / "TRAIN").mkdir(parents=True)
    with pytest.raises(DataError, match=r"TIMIT corpus at .*half/TIMIT is partial: it has no TEST/ folder"):
        TIMITConfig(data_dir=str(tmp_path / "half")).build()
    root = corpora.write_timit(tmp_path / "few", empty_audio=True)  # only some dev/core speakers
    with pytest.raises(DataError, match=r"69 speaker\(s\) of the dev/core test lists are missing .*FADG0"):
        scan_corpus(root)
    for var in ("ODYSSEY_TIMIT_DIR", "ODYSSEY_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DataError, match=r"set task\.data_dir \(or \$ODYSSEY_TIMIT_DIR"):
        TIMITConfig().build()


def test_a_corrupt_file_in_the_corpus_is_named(tmp_path):
    dev, core = corpora.full_lists()
    root = corpora.write_timit(tmp_path, train=corpora.TRAIN_SPEAKERS[:1], dev=dev, core=core, utterances=("SX37",))
    bad = root / "TEST" / "DR8" / "FMLD0" / "SX37.WAV"
    bad.write_bytes(b"NIST_1A\n   1024\nsample_rate 16000\n".ljust(1024) + b"\0" * 3200)
    with pytest.raises(DataError) as err:
        TIMITConfig(data_dir=str(root), expect_full_corpus=False, cache_dir=str(tmp_path / "c"), progress=False).build()
    assert str(bad) in str(err.value) and "corrupt header" in str(err.value)


# --------------------------------------------------------------------------------------------
# The feature cache


def test_cache_hit_verification_and_corruption(corpus, tmp_path, monkeypatch, capsys):
    calls = []
    extract = timit_module._extract
    monkeypatch.setattr(timit_module, "_extract", lambda *a: calls.append(1) or extract(*a))
    first = small_config(corpus, tmp_path).build()
    (npz,) = tmp_path.glob("timit-*.npz")
    (manifest,) = tmp_path.glob("timit-*.json")
    assert calls == [1] and '"sha256"' in manifest.read_text()
    again = small_config(corpus, tmp_path).build()
    assert calls == [1]  # a hit: nothing re-extracted
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(first.splits["test"], again.splits["test"]))
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    rebuilt = small_config(corpus, tmp_path).build()
    assert calls == [1, 1] and "fails its sha256 check" in capsys.readouterr().err
    assert torch.equal(rebuilt.splits["train"][3].inputs, first.splits["train"][3].inputs)
    phn = corpus / "TRAIN" / "DR1" / "FCJF0" / "SX37.PHN"  # a changed corpus file: a new entry
    text = phn.read_text()
    phn.write_text(text.replace("1160 1600 zh", "1160 1600 sh"))
    try:
        changed = small_config(corpus, tmp_path).build()
    finally:
        phn.write_text(text)
    assert calls == [1, 1, 1] and len(list(tmp_path.glob("timit-*.npz"))) == 2
    assert PHONES[int(changed.splits["train"][6].targets[-1])] == "sh"


# --------------------------------------------------------------------------------------------
# Training


def timit_trial(corpus: Path, cache: Path, *overrides: str):
    return trial_config(compose("train", [
        "task=timit", f"task.data_dir={corpus}", "task.expect_full_corpus=false", f"task.cache_dir={cache}",
        "task.progress=false", "model=bidirectional", "model.hidden_size=4", "train.max_epochs=1",
        "train.lr=1e-2", "train.batch_size=8", *overrides,
    ]))  # fmt: skip


def test_a_tiny_trial_trains_and_packed_equals_alone(task, corpus, cache):
    """Members with classical momentum and clipping to [-1, 1] or [-0.01, 0.01] (the TIMIT
    search's booleans): metrics, best epochs and weights as alone."""
    from test_packs import assert_same_trial, run_alone, run_packed

    task = TIMITTask({"train": task.splits["train"][:12], "valid": task.splits["valid"][:24], "test": task.splits["test"][:24]})
    cfgs = [
        timit_trial(corpus, cache, "train.dtype=float64", "seed=1", "train.clip_value=1.0", "train.nesterov=false"),
        timit_trial(corpus, cache, "train.dtype=float64", "seed=2", "model.hidden_size=3", "train.clip_value=0.01"),
    ]
    alone = [run_alone(c, task) for c in cfgs]
    for result, metrics, _ in alone:
        assert result.status == "completed" and 0.0 <= result.test["error"] <= 1.0
        assert math.isfinite(metrics[0]["train/loss"]) and 0.0 <= metrics[0]["val/error"] <= 1.0
    packed = run_packed(cfgs, task)
    for i in range(len(cfgs)):
        assert_same_trial(alone[i], (packed[0][i], packed[1][i], packed[2][i]), rel=1e-10)
