"""How well each reading of skin tone ranks faces that look dark-skinned above light-skinned ones, against
a labelling by eye: ITA° as the photo shows it (anonymizer.bank.tone.ita) and the descriptor probe
(anonymizer.bank.tone.SkinTone), on the photos' faces of `--min-size` px and more and, with `--bank`, on
each bank person's most frontal face. Labels are a JSON object of steps (1 very light, 2 light, 3 olive or
tan, 4 brown, 5 dark brown), keyed "PHOTO#FACE" (FACE: YuNet's index at 1x, score 0.6) or by bank
identity; they describe real people's looks and stay out of the repository. Prints the AUCs and writes
JSON.

    python bench/skin_tone_readings.py --labels PHOTO_LABELS.json [--bank BANK --bank-labels BANK_LABELS.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))


def auc(darker: np.ndarray, labels: np.ndarray, from_step: int) -> float | None:
    """How often a face labelled `from_step` or darker reads darker than one labelled 1 or 2."""
    hi, lo = darker[labels >= from_step], darker[labels <= 2]
    if not len(hi) or not len(lo):
        return None
    return round(float(((hi[:, None] > lo[None]) + 0.5 * (hi[:, None] == lo[None])).mean()), 3)


def aucs(readings: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    """Per reading (each oriented so that higher reads darker): brown or dark, and tan or darker, against light."""
    return {name: {"brown_or_dark": auc(v, labels, 4), "tan_or_darker": auc(v, labels, 3)}
            for name, v in readings.items()}


def photo_faces(photos: Path, min_size: float, probe, landmarker):
    from anonymizer.bank import tone
    from anonymizer.detect import build_detector
    from anonymizer.imageio import decode

    detector = build_detector("yunet", {"scales": [1.0], "score_threshold": 0.6})
    for path in sorted(photos.glob("*.jpg")):
        img = decode(path.read_bytes(), 100_000_000).rgb
        for i, f in enumerate(detector.detect(img)):
            if f.size < min_size:
                continue
            ita = tone.ita(img, landmarker(img, f))
            if ita is not None:
                yield f"{path.name}#{i}", ita, probe.darkness(probe.describe(img, f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=Path, required=True)
    ap.add_argument("--photos", type=Path, default=SHARED / "data" / "photos")
    ap.add_argument("--min-size", type=float, default=50.0)
    ap.add_argument("--bank")
    ap.add_argument("--bank-labels", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "skin_tone_readings.json")
    args = ap.parse_args()

    from anonymizer.bank import shape as sh
    from anonymizer.bank import tone

    probe = tone.SkinTone()
    labels = json.loads(args.labels.read_text())
    read = [r for r in photo_faces(args.photos, args.min_size, probe, sh.landmarker("dlib_shape68", None))
            if r[0] in labels]
    steps = np.array([labels[k] for k, _, _ in read])
    result = {"photos": {"faces": len(read), "by_step": {int(s): int((steps == s).sum()) for s in np.unique(steps)},
                         "auc": aucs({"ita": -np.array([r[1] for r in read]),
                                      "descriptor": np.array([r[2] for r in read])}, steps)}}
    if args.bank:
        from anonymizer.bank.store import load_bank, locate_bank

        bank = load_bank(locate_bank(args.bank))
        people = bank.index["identity"].to_numpy()
        kept = json.loads(args.bank_labels.read_text())
        darkness = probe.of_people(bank)
        named = sorted(p for p in darkness if p in kept)
        ita = {p: float(np.nanmedian(bank.tones[people == p])) for p in named}
        bank_steps = np.array([kept[p] for p in named])
        result["bank"] = {"people": len(named),
                          "by_step": {int(s): int((bank_steps == s).sum()) for s in np.unique(bank_steps)},
                          "auc": aucs({"ita": -np.array([ita[p] for p in named]),
                                       "descriptor": np.array([darkness[p] for p in named])}, bank_steps)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
