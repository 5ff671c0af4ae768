"""Build the embedded audio set `src/diffusers_spectrum/assets/audio/` (16 kHz mono FLAC + `metadata.jsonl`).

Sources (Debian packages, offline; install with `apt-get install -y flite sound-theme-freedesktop`):

- CMU Flite (`flite`): English speech synthesised from public-domain text (the opening of Lewis Carroll's "Alice's
  Adventures in Wonderland", 1865) with the four built-in US English voices. The voices and the engine are under
  CMU's permissive licence (free use, modification and redistribution; keep the notice, mark modifications, do not
  use the authors' names to endorse), reproduced in `LICENSES.md`.
- `sound-theme-freedesktop`: the desktop sounds whose Debian copyright file gives a Creative Commons licence,
  CC-BY-3.0 or CC-BY-SA-3.0 (attribution kept per file; the converted files stay under the same licence).

Left out on purpose (see the metadata's reasoning in `LICENSES.md`): the GPL-2 voice recordings of `alsa-utils`
and the GPL files of the sound theme (GPL terms on media files, with their source-offer duties, do not suit an
Apache-2.0 package's default data), `dialog-warning.oga` (its copyright entry is garbled), and espeak-ng speech
(GPL-3+ engine whose phoneme data include recorded fragments, so the output's licence is unclear).

Processing of every file: decode, average the channels to mono, resample to 16 kHz (`resample_audio` of the
package), write 16-bit FLAC. Run: `python scripts/build_embedded_audio.py`.
"""

import argparse
import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

import soundfile

from diffusers_spectrum.data.audio import convert_channels, decode_audio, resample_audio
from diffusers_spectrum.data.sources import embedded_audio_dir


SAMPLE_RATE = 16000
THEME_DIR = Path("/usr/share/sounds/freedesktop/stereo")
CC_BY_3 = ("CC-BY-3.0", "https://creativecommons.org/licenses/by/3.0/")
CC_BY_SA_3 = ("CC-BY-SA-3.0", "https://creativecommons.org/licenses/by-sa/3.0/")
# (file stem, copyright holder as in /usr/share/doc/sound-theme-freedesktop/copyright, licence)
THEME_SOUNDS = [
    ("bell", "Dr. Richard Boulanger et al", CC_BY_3),
    ("complete", "Dr. Richard Boulanger et al", CC_BY_3),
    ("trash-empty", "Dr. Richard Boulanger et al", CC_BY_3),
    ("alarm-clock-elapsed", "Tim/corsica_s", CC_BY_SA_3),
    ("audio-volume-change", "Lucas McCallister", CC_BY_SA_3),
    ("camera-shutter", "freesound user horsthorstensen", CC_BY_SA_3),
    ("device-added", "Ivica Bukvic", CC_BY_SA_3),
    ("device-removed", "Ivica Bukvic", CC_BY_SA_3),
    ("message", "Ivica Bukvic", CC_BY_SA_3),
    ("dialog-information", "Ivica Bukvic", CC_BY_SA_3),
    ("suspend-error", "Red Hat, Inc.", CC_BY_SA_3),
]
FLITE_VOICES = ("kal16", "slt", "rms", "awb")
# Public domain text: Lewis Carroll, "Alice's Adventures in Wonderland" (1865), chapter I.
SENTENCES = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do.",
    "Down, down, down. Would the fall never come to an end?",
)
FLITE_LICENSE = ("CMU-Flite (permissive, MIT-like; see LICENSES.md)", "http://cmuflite.org")
PROCESSING = "decoded, channels averaged to mono, resampled to 16000 Hz (scipy.signal.resample_poly), 16-bit FLAC"


LICENSES_TEXT = """# Licences of the embedded sounds

Each file's source, copyright holder, licence and processing are in `metadata.jsonl`. Every file here is modified
from its source (converted to 16 kHz mono 16-bit FLAC by `scripts/build_embedded_audio.py`).

## speech_*.flac: CMU Flite

Synthesised with CMU Flite (Debian package `flite`) from public-domain text. Flite and its voices:

    Copyright (c) 1999-2001 by Language Technologies Institute, Carnegie Mellon University. All Rights Reserved.

    Permission is hereby granted, free of charge, to use and distribute this software and its documentation without
    restriction, including without limitation the rights to use, copy, modify, merge, publish, distribute,
    sublicense, and/or sell copies of this work, and to permit persons to whom this work is furnished to do so,
    subject to the following conditions:
     1. The code must retain the above copyright notice, this list of conditions and the following disclaimer.
     2. Any modifications must be clearly marked as such.
     3. Original authors' names are not deleted.
     4. The authors' names are not used to endorse or promote products derived from this software without specific
        prior written permission.

    CARNEGIE MELLON UNIVERSITY AND THE CONTRIBUTORS TO THIS WORK DISCLAIM ALL WARRANTIES WITH REGARD TO THIS
    SOFTWARE, INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS, IN NO EVENT SHALL CARNEGIE MELLON
    UNIVERSITY NOR THE CONTRIBUTORS BE LIABLE FOR ANY SPECIAL, INDIRECT OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES
    WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN ACTION OF CONTRACT, NEGLIGENCE OR OTHER
    TORTIOUS ACTION, ARISING OUT OF OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.

## theme_*.flac: freedesktop sound theme

From the Debian package `sound-theme-freedesktop`; holders as in its copyright file.

- CC-BY-3.0 (https://creativecommons.org/licenses/by/3.0/): bell, complete, trash-empty by Dr. Richard Boulanger
  et al.
- CC-BY-SA-3.0 (https://creativecommons.org/licenses/by-sa/3.0/): alarm-clock-elapsed by Tim/corsica_s,
  audio-volume-change by Lucas McCallister, camera-shutter by freesound user horsthorstensen, device-added,
  device-removed, message and dialog-information by Ivica Bukvic, suspend-error by Red Hat, Inc. These converted
  files are adaptations and are distributed under CC-BY-SA-3.0 as well.

## Not included

The GPL-2 voice recordings of `alsa-utils` and the GPL-2/GPL-2+ files of the sound theme, `dialog-warning.oga`
(garbled copyright entry) and espeak-ng speech (licence of its output unclear) are left out, so every file here is
under a permissive or Creative Commons attribution licence.
"""


def _package_version(package: str) -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"Debian package {package!r} is not installed; run `apt-get install -y {package}`.")
    return result.stdout


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _convert(source: Path, target: Path) -> float:
    """Write `source` as 16 kHz mono 16-bit FLAC at `target`; returns the duration in seconds."""
    waveform, rate = decode_audio(str(source))  # (channels, frames)
    mono = resample_audio(convert_channels(waveform, 1), rate, SAMPLE_RATE)[0]
    soundfile.write(target, mono.clip(-1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return round(len(mono) / SAMPLE_RATE, 3)


def _remove_previous_build(output_dir: Path) -> None:
    """Delete what an earlier build wrote (the clips its `metadata.jsonl` lists, that file and LICENSES.md), nothing
    else: the folder may hold files this script did not write."""
    metadata = output_dir / "metadata.jsonl"
    if metadata.is_file():
        for line in metadata.read_text(encoding="utf-8").splitlines():
            name = json.loads(line).get("file_name", "") if line.strip() else ""
            if name and "/" not in name and (output_dir / name).is_file():
                (output_dir / name).unlink()
    for name in ("metadata.jsonl", "LICENSES.md"):
        if (output_dir / name).is_file():
            (output_dir / name).unlink()


def build(output_dir: Path) -> list[dict]:
    theme_version, flite_version = _package_version("sound-theme-freedesktop"), _package_version("flite")
    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous_build(output_dir)
    records = []
    # 1. Desktop sounds (Creative Commons)
    for stem, holder, (license_name, license_url) in THEME_SOUNDS:
        source = THEME_DIR / f"{stem}.oga"
        target = output_dir / f"theme_{stem.replace('-', '_')}.flac"
        duration = _convert(source, target)
        records.append(
            {
                "file_name": target.name,
                "kind": "desktop sound",
                "source_package": f"sound-theme-freedesktop {theme_version}",
                "original_file": str(source),
                "original_sha256": _sha256(source),
                "copyright": holder,
                "license": license_name,
                "license_url": license_url,
                "processing": PROCESSING,
                "duration_s": duration,
            }
        )
    # 2. Synthesised speech (CMU Flite, public-domain text)
    with tempfile.TemporaryDirectory() as scratch:
        for voice in FLITE_VOICES:
            for index, sentence in enumerate(SENTENCES):
                raw = Path(scratch) / f"{voice}_{index}.wav"
                subprocess.run(["flite", "-voice", voice, "-t", sentence, "-o", str(raw)], check=True)
                target = output_dir / f"speech_{voice}_{index}.flac"
                duration = _convert(raw, target)
                records.append(
                    {
                        "file_name": target.name,
                        "kind": "synthesised speech",
                        "source_package": f"flite {flite_version}",
                        "original_file": f"flite -voice {voice} -t {sentence!r}",
                        "text_source": "Lewis Carroll, Alice's Adventures in Wonderland (1865), ch. I; public domain",
                        "copyright": "Carnegie Mellon University (Flite engine and voices)",
                        "license": FLITE_LICENSE[0],
                        "license_url": FLITE_LICENSE[1],
                        "processing": "synthesised by Flite at 16000 Hz (kal16/slt/rms/awb), then " + PROCESSING,
                        "duration_s": duration,
                    }
                )
    with open(output_dir / "metadata.jsonl", "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    (output_dir / "LICENSES.md").write_text(LICENSES_TEXT, encoding="utf-8")
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=Path, default=embedded_audio_dir(), help="where to write the set")
    args = parser.parse_args()
    records = build(args.output_dir)
    total = sum((args.output_dir / r["file_name"]).stat().st_size for r in records)
    print(f"wrote {len(records)} clips ({total / 2**20:.2f} MiB) to {args.output_dir}")


if __name__ == "__main__":
    main()
