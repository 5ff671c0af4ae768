"""Audio decoding, resampling, channel conversion, seeded crops, bad files and the resumable loader."""

import json
import os

import datasets
import numpy as np
import pytest
import soundfile
import torch

from diffusers_spectrum.data import ResumableStream, make_dataloader
from diffusers_spectrum.data.audio import (
    AudioReader,
    AudioSkipCounter,
    AudioTransform,
    convert_channels,
    decode_audio,
    resample_audio,
    source_sample_rates,
)
from diffusers_spectrum.data.sources import embedded_audio_dir, list_audio_files, load_audio_dataset


RATE = 16000


def _sine(frequency_hz, seconds, rate, channels=1, amplitude=0.5):
    time = np.arange(int(round(seconds * rate))) / rate
    wave = amplitude * np.sin(2 * np.pi * frequency_hz * time)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1)  # (frames, channels)


# ------------------------------------------------------------------------------------------------
# Decoding, resampling, channels


@pytest.mark.parametrize("suffix, subtype", [(".wav", "PCM_16"), (".flac", "PCM_16"), (".ogg", "VORBIS")])
def test_decode_audio_reads_wav_flac_and_ogg_from_paths_and_bytes(tmp_path, suffix, subtype):
    data = _sine(440.0, 0.25, 22050, channels=2)
    path = tmp_path / f"clip{suffix}"
    soundfile.write(path, data, 22050, subtype=subtype)
    for cell in (str(path), {"bytes": None, "path": str(path)}, {"bytes": path.read_bytes(), "path": None}):
        waveform, rate = decode_audio(cell)
        assert rate == 22050 and waveform.dtype == np.float32 and waveform.shape[0] == 2
        if subtype == "PCM_16":  # lossless: exact up to 16-bit quantisation
            np.testing.assert_allclose(waveform, data.T, atol=1 / 2**15)
        else:  # lossy Vorbis: same length, same tone
            assert waveform.shape[1] == data.shape[0]
            assert np.corrcoef(waveform[0], data[:, 0])[0, 1] > 0.99


def test_resampling_a_sine_matches_the_sine_at_the_new_rate():
    source = _sine(1000.0, 0.5, 44100).T  # (1, 22050)
    resampled = resample_audio(source, 44100, RATE)  # polyphase 160 / 441
    assert resampled.shape == (1, int(np.ceil(22050 * RATE / 44100)))
    expected = _sine(1000.0, 0.5, RATE).T
    # away from the edges the Kaiser-windowed polyphase filter leaves errors around 1e-3 of full scale
    np.testing.assert_allclose(resampled[:, 200:-200], expected[:, 200:-200], atol=5e-3)


def test_an_odd_sample_rate_is_resampled_exactly_for_a_periodic_clip():
    source = _sine(440.0, 1.0, 7999).T  # 7999 and 16000 are coprime: FFT resampler; 440 whole cycles in the clip
    resampled = resample_audio(source, 7999, RATE)
    np.testing.assert_allclose(resampled, _sine(440.0, 1.0, RATE).T, atol=1e-4)


def test_channel_conversion_downmixes_duplicates_and_refuses_surround_to_stereo():
    stereo = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(convert_channels(stereo, 1), [[0.5, 0.5]])
    np.testing.assert_array_equal(convert_channels(stereo[:1], 2), [[1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_array_equal(convert_channels(np.ones((6, 3), np.float32), 1), np.ones((1, 3)))
    with pytest.raises(ValueError, match="6 channels and 2 were requested"):
        convert_channels(np.ones((6, 3), np.float32), 2)


# ------------------------------------------------------------------------------------------------
# Crops


def test_crops_depend_only_on_seed_epoch_and_position_and_are_slices_of_the_clip():
    waveform = np.arange(1000, dtype=np.float32)[None] / 1000
    transform = AudioTransform(RATE, 100, seed=3)
    first = transform(waveform, RATE, position=5, epoch=1)
    assert torch.equal(first, AudioTransform(RATE, 100, seed=3)(waveform, RATE, position=5, epoch=1))
    offset = int(round(first[0, 0].item() * 1000))
    torch.testing.assert_close(first, torch.from_numpy(waveform[:, offset : offset + 100]))
    others = {transform(waveform, RATE, position=p, epoch=e)[0, 0].item() for p in range(4) for e in range(3)}
    assert len(others) > 1
    centred = AudioTransform(RATE, 100, random_crop=False)(waveform, RATE)
    torch.testing.assert_close(centred, torch.from_numpy(waveform[:, 450:550]))


def test_short_clips_are_zero_padded_or_refused_as_asked():
    short = np.full((1, 30), 0.25, dtype=np.float32)
    clip, padded = AudioTransform(RATE, 100, channels=2).crop(short, RATE)
    assert padded and clip.shape == (2, 100) and (clip[:, :30] == 0.25).all() and (clip[:, 30:] == 0).all()
    with pytest.raises(ValueError, match="fewer than sample_size=100"):
        AudioTransform(RATE, 100, too_short="skip")(short, RATE)
    with pytest.raises(ValueError, match="channels"):
        AudioTransform(RATE, 100, channels=3)


# ------------------------------------------------------------------------------------------------
# Bad files in a folder


def _bad_folder(tmp_path):
    """A folder with 3 good files and one of each kind of bad file; returns the folder."""
    folder = tmp_path / "audio"
    (folder / "sub").mkdir(parents=True)
    soundfile.write(folder / "good_mono.wav", _sine(300.0, 0.2, RATE), RATE)
    soundfile.write(folder / "sub" / "good_stereo_44k.flac", _sine(500.0, 0.2, 44100, channels=2), 44100)
    soundfile.write(folder / "odd_rate.wav", _sine(700.0, 0.3, 7999), 7999)
    soundfile.write(folder / "too_short.wav", _sine(300.0, 0.01, RATE), RATE)  # 160 samples < 1024
    soundfile.write(folder / "surround.wav", _sine(300.0, 0.2, RATE, channels=6), RATE)
    soundfile.write(folder / "header_only.wav", np.zeros((0, 1)), RATE)
    soundfile.write(folder / "nan.wav", np.full((2000, 1), np.nan), RATE, subtype="FLOAT")
    (folder / "corrupt.flac").write_bytes(b"fLaC" + os.urandom(200))
    (folder / "empty.ogg").write_bytes(b"")
    (folder / "notes.txt").write_text("not audio")
    os.mkfifo(folder / "pipe.wav")  # would block a reader forever if opened
    return folder


def test_a_folder_with_bad_files_streams_the_good_ones_and_counts_the_rest(tmp_path):
    folder = _bad_folder(tmp_path)
    assert "pipe.wav" not in {path.name for path in list_audio_files(folder)}
    dataset = load_audio_dataset(train_data_dir=folder)
    assert len(dataset) == 9  # every audio file but the FIFO
    counter = AudioSkipCounter()
    stream = ResumableStream(
        dataset,
        AudioReader(AudioTransform(RATE, 1024, channels=2)),
        shuffle=False,
        infinite=False,
        skip_counter=counter,
    )
    clips = list(stream)
    # kept: good mono, good stereo 44.1 kHz, odd rate (resampled), too short (padded); skipped: surround (6 -> 2
    # channels), header-only, NaN, corrupt, empty
    counts = stream.state_dict()["counts"]
    assert len(clips) == 4 and counter.count == 5 and counts["skipped"] == 5 and counts["padded"] == 1
    assert source_sample_rates(counts) == {"7999": 1, str(RATE): 2, "44100": 1}  # kept clips per file rate
    assert all(c["waveforms"].shape == (2, 1024) and torch.isfinite(c["waveforms"]).all() for c in clips)
    mono = list(ResumableStream(dataset, AudioReader(AudioTransform(RATE, 1024)), shuffle=False, infinite=False))
    assert len(mono) == 5  # the 6-channel file downmixes to mono
    # with two workers: the same clips, counted over the workers
    loader = make_dataloader(
        ResumableStream(dataset, AudioReader(AudioTransform(RATE, 1024, channels=2)), shuffle=False, infinite=False),
        1,
        num_workers=2,
        drop_last=False,
    )
    assert len(list(loader)) == 4 and loader.counts() == {**counts, "skipped": 5, "padded": 1}


def test_decoding_a_fifo_raises_at_once_instead_of_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")
    with pytest.raises(ValueError, match="not a regular file"):
        decode_audio(str(tmp_path / "pipe.wav"))


def test_load_audio_dataset_gives_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no audio files"):
        load_audio_dataset(train_data_dir=tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        load_audio_dataset(train_data_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="not both"):
        load_audio_dataset(dataset_name="x", train_data_dir=tmp_path)


# ------------------------------------------------------------------------------------------------
# HF datasets with an Audio column (a local parquet dataset stands in for the Hub, offline)


def test_an_hf_dataset_audio_column_is_read_without_torchcodec(tmp_path):
    cells = []
    for index, rate in enumerate((RATE, 22050, 8000)):
        path = tmp_path / f"clip{index}.flac"
        soundfile.write(path, _sine(200.0 * (index + 1), 0.2, rate), rate)
        cells.append({"bytes": path.read_bytes(), "path": path.name})
    table = datasets.Dataset.from_dict({"sound": cells, "label": [0, 1, 2]})
    table = table.cast_column("sound", datasets.Audio(decode=False))
    (tmp_path / "hub").mkdir()
    table.to_parquet(str(tmp_path / "hub" / "train.parquet"))
    dataset = load_audio_dataset(dataset_name=str(tmp_path / "hub"), audio_column="sound")
    assert isinstance(dataset, datasets.IterableDataset)
    assert dataset.features["sound"].decode is False
    stream = ResumableStream(dataset, AudioReader(AudioTransform(RATE, 2048), audio_column="sound"))
    batch = next(iter(make_dataloader(stream, 3)))
    assert batch["waveforms"].shape == (3, 1, 2048) and torch.isfinite(batch["waveforms"]).all()
    with pytest.raises(ValueError, match="Pass --audio_column"):
        load_audio_dataset(dataset_name=str(tmp_path / "hub"), audio_column="audio")


# ------------------------------------------------------------------------------------------------
# Resume


@pytest.mark.parametrize("workers", [0, 2])
def test_resuming_from_a_loader_state_gives_the_same_batches(tmp_path, workers):
    folder = tmp_path / "clips"
    folder.mkdir()
    for index in range(5):
        soundfile.write(folder / f"{index}.wav", _sine(100.0 + 50 * index, 0.3, RATE), RATE)
    (folder / "corrupt.wav").write_bytes(b"RIFF" + os.urandom(64))
    dataset = load_audio_dataset(train_data_dir=folder)
    transform = AudioTransform(RATE, 512, seed=7)

    def loader(state=None):
        stream = ResumableStream(dataset, AudioReader(transform), seed=11)
        return make_dataloader(stream, 2, num_workers=workers, state=state)

    uninterrupted = [next(loader_iter) for loader_iter in [iter(loader())] for _ in range(7)]  # crosses epochs
    first = loader()
    first_iter = iter(first)
    for _ in range(3):
        next(first_iter)
    resumed = iter(loader(json.loads(json.dumps(first.state_dict()))))
    for expected in uninterrupted[3:]:
        assert torch.equal(next(resumed)["waveforms"], expected["waveforms"])


# ------------------------------------------------------------------------------------------------
# Embedded sounds


def test_embedded_sounds_have_provenance_and_a_licence_and_decode():
    folder = embedded_audio_dir()
    records = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    files = {path.name for path in list_audio_files(folder)}
    assert {record["file_name"] for record in records} == files and len(files) >= 10
    for record in records:
        assert record["license"] and record["source_package"] and record["original_file"] and record["processing"]
        assert "GPL" not in record["license"]  # only permissive / attribution(-share-alike) sounds are shipped
    total_bytes = sum((folder / name).stat().st_size for name in files)
    assert total_bytes < 3 * 2**20
    waveform, rate = decode_audio(str(folder / sorted(files)[0]))
    assert rate == RATE and waveform.shape[0] == 1
    stream = ResumableStream(load_audio_dataset(), AudioReader(AudioTransform(RATE, 4096)), infinite=False)
    assert len(list(stream)) == len(files)
