"""``egw strip read PHOTO… [--profile P] [--json]`` and ``egw strip calibrate``: colloidal-gold cassettes.

``read``: one line per photo: ``PHOTO  C:x.xxx  T:x.xxx  T/C:x.xxx  judgement``; with ``--json`` a list
of objects instead. A photo that cannot be read is named on stderr with what was not found (in the
officer's language, ``EGW_LANG``) and the technical detail, the others are still read, and the exit
status is 1. The photos are only read, never modified: they are the evidence.

``calibrate``: fit a cassette profile from a directory of photos and a truth CSV
(``photo,result``; result positive / suspicious / negative / invalid) and write it as TOML.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from drivers.strip_reader import (
    CassetteProfile,
    StripProfileError,
    StripReader,
    StripReadError,
    StripThresholds,
    builtin_profiles,
    load_profile,
    profile_to_toml,
)
from drivers.strip_reader.calibrate import RESULTS, CalibrationPhoto, calibrate, load_photo
from gateway.commands.common import add_data_dir, add_json, err, open_evidence, out, print_json
from gateway.errors import ConfigError
from gateway.i18n import _

__all__ = ["register", "run_read", "run_calibrate", "read_photos", "refusal_text"]


def refusal_text(reason: str) -> str:
    """What the officer reads for a refused photo: what was not found and what to do, translated."""
    texts = {
        "image": _("The file is not a usable photo. Take the photo again as JPEG or PNG."),
        "compressed": _("The photo is compressed too much. Set the camera to high quality and take it again."),
        "capture": _("The camera gave no picture. Check the camera and try again."),
        "no_cassette": _("No test cassette was found. Put the whole cassette in the picture and take it again."),
        "no_window": _("The result window of the cassette was not found. Photograph the whole cassette from "
                       "straight above, in focus, and check that the right cassette type is chosen."),
        "no_orientation": _("The sample end of the cassette could not be told, so C cannot be told from T. Keep "
                            "the whole cassette in the picture and check that the right cassette type is chosen."),
        "too_small": _("The cassette is too small in the picture. Move the camera closer and take it again."),
        "blurred": _("The photo is too blurred. Hold the camera still, let it focus and take it again."),
        "dark": _("The photo is too dark. Add light and take it again."),
        "overexposed": _("The result window is too bright (glare). Reduce the light or avoid reflections and take "
                         "it again."),
        "uneven": _("A shadow or glare lies across the result window. Take the photo again in even light."),
        "lines": _("The lines are not where this cassette type has them. Check the cassette type and take the "
                   "photo again from straight above."),
    }
    return texts.get(reason, texts["lines"])


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("strip", help="read colloidal-gold test strips from photos")
    strip_sub = parser.add_subparsers(dest="strip_command", metavar="ACTION")
    strip_sub.required = True
    read = strip_sub.add_parser(
        "read", help="read C, T, T/C and the judgement from cassette photos",
        description="Read C and T line intensities, T/C and the judgement (positive / suspicious / negative / "
                    "invalid) from photos of a colloidal-gold test cassette.",
    )
    read.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="photo file(s), JPEG or PNG")
    read.add_argument("--profile", default="egw-sim",
                      help=f"cassette profile: a built-in name ({', '.join(builtin_profiles())}) or a .toml file "
                           "(default egw-sim); it brings the thresholds")
    read.add_argument("--c-min", type=float, help="override the profile: C at or below this is an invalid card")
    read.add_argument("--positive-max", type=float, help="override the profile: T/C at or below this is positive (A)")
    read.add_argument("--negative-min", type=float, help="override the profile: T/C at or above this is negative (B)")
    read.add_argument("--record", action="store_true",
                      help="also keep each photo and its reading as signed evidence (photo + result document, queued for upload)")
    read.add_argument("--sample", help="sample id recorded with --record")
    read.add_argument("--inspector", help="inspector id recorded with --record")
    add_data_dir(read)
    add_json(read)
    read.set_defaults(func=run_read)
    cal = strip_sub.add_parser(
        "calibrate", help="fit a cassette profile from photos with known results",
        description="Fit a cassette profile (window shape, C/T positions, orientation cue, thresholds) from a few "
                    "photos of cassettes with known results, each photographed sample end LEFT and roughly level: "
                    "a clear negative, cards just either side of each cut-off, an invalid card.",
    )
    cal.add_argument("--profile", required=True, type=Path, metavar="NEW.toml", help="the profile file to write")
    cal.add_argument("--photos", required=True, type=Path, metavar="DIR", help="directory holding the photos")
    cal.add_argument("--truth", required=True, type=Path, metavar="CSV",
                     help="CSV with columns photo,result (result: " + " / ".join(RESULTS) + ")")
    cal.add_argument("--name", help="the profile's name (default: the file's stem)")
    cal.add_argument("--force", action="store_true", help="overwrite an existing profile file")
    add_json(cal)
    cal.set_defaults(func=run_calibrate)


def _profile(args: argparse.Namespace) -> CassetteProfile:
    try:
        profile = load_profile(args.profile)
    except StripProfileError as exc:
        raise ConfigError(str(exc), "give --profile a built-in name or a profile .toml file") from exc
    base = profile.thresholds
    try:
        return profile.with_thresholds(StripThresholds(
            c_min=base.c_min if args.c_min is None else args.c_min,
            positive_max=base.positive_max if args.positive_max is None else args.positive_max,
            negative_min=base.negative_min if args.negative_min is None else args.negative_min))
    except ValueError as exc:
        raise ConfigError(f"bad strip thresholds: {exc}",
                          "give --c-min >= 0 and --positive-max <= --negative-min") from exc


def _thresholds(args: argparse.Namespace) -> StripThresholds:
    return _profile(args).thresholds


def read_photos(photos: list[Path], thresholds: StripThresholds | None = None,
                profile: CassetteProfile | None = None) -> list[dict[str, Any]]:
    """Read each photo; a failure becomes an entry with ``ok: false``, the reason code and both texts."""
    reader = StripReader(thresholds=thresholds, profile=profile)
    results: list[dict[str, Any]] = []
    for photo in photos:
        try:
            reading = reader.read_file(photo)
        except StripReadError as exc:
            results.append({"photo": str(photo), "ok": False, "error": str(exc), "error_type": type(exc).__name__,
                            "reason": exc.reason, "message": refusal_text(exc.reason)})
            continue
        item = {"photo": str(photo), "ok": True, **reading.to_json()}
        if reading.judgement.value == "invalid":  # a reading, not a refusal: the card itself failed
            item["officer_note"] = _("No control line (C): the test is invalid. Test the sample again with a new card.")
        results.append(item)
    return results


def record_readings(args: argparse.Namespace, results: list[dict[str, Any]], sample: str | None, inspector: str | None) -> None:
    """The photo is evidence first; the reading is a result document that names the photo by digest."""
    import json as _json

    from gateway.evidence.evidence_service import path_as_data
    from gateway.evidence.manifest import ManifestInput

    with open_evidence(args) as service:
        for item in results:
            if not item["ok"]:
                continue
            photo = Path(item["photo"])
            stored = service.ingest_file(photo, ManifestInput(source_path=path_as_data(photo.absolute()), kind="photo",
                                                              device_id="strip-reader", officer_id=inspector), priority=2)
            document = {"v": "egw.strip-reading/1", "sample_id": sample, "inspector_id": inspector,
                        "photo": {"evidence_id": stored.evidence_id, "sha256": stored.sha256},
                        "reading": {k: v for k, v in item.items() if k not in ("photo", "ok")}}
            result = service.ingest_bytes(_json.dumps(document, indent=2, sort_keys=True).encode(), ManifestInput(
                source_path=f"strip/{stored.sha256}/reading.json", kind="result", media_type="application/vnd.egw.strip-reading+json",
                device_id="strip-reader", officer_id=inspector, extra={"strip": document["reading"], "photo": document["photo"]}), priority=2)
            item["evidence_id"], item["photo_evidence_id"] = result.evidence_id, stored.evidence_id
        service.sign_tree_head()


def run_read(args: argparse.Namespace) -> int:
    profile = _profile(args)
    results = read_photos(list(args.photos), profile=profile)
    if args.record:
        record_readings(args, results, args.sample, args.inspector)
    if args.json:
        print_json(results)
    else:
        for item in results:
            if item["ok"]:
                recorded = f"  evidence {item['evidence_id']}" if "evidence_id" in item else ""
                print(f"{item['photo']}  {item['format']}  {item['judgement']}{recorded}", file=out(), flush=True)
                if "officer_note" in item:
                    print(f"note: {item['photo']}: {item['officer_note']}", file=err())
    failed = [item for item in results if not item["ok"]]
    for item in failed:
        print(f"error: {item['photo']}: {item['message']}\n  ({item['error']})", file=err())
    if failed:
        print(f"hint: {len(failed)} of {len(results)} photo(s) could not be read; re-take those photos as the "
              "messages say", file=err())
        return 1
    return 0


def _truth(path: Path) -> dict[str, str]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ConfigError(f"cannot read truth file {path}: {exc.strerror or exc}", "check the --truth path") from exc
    if not rows or not {"photo", "result"} <= set(rows[0]):
        raise ConfigError(f"{path} has no photo,result columns", "write a header line: photo,result")
    return {row["photo"].strip(): row["result"].strip().lower() for row in rows}


def run_calibrate(args: argparse.Namespace) -> int:
    if args.profile.exists() and not args.force:
        raise ConfigError(f"{args.profile} exists", "choose another file name or pass --force to overwrite it")
    truth = _truth(args.truth)
    photos = []
    for name, result in sorted(truth.items()):
        path = args.photos / name
        if not path.is_file():
            raise ConfigError(f"photo {name} named in {args.truth} is not in {args.photos}", "fix the truth file")
        photos.append(CalibrationPhoto(name=name, image=load_photo(str(path)), result=result))
    name = args.name or args.profile.stem
    try:
        profile = calibrate(photos, name)
    except StripProfileError as exc:
        raise ConfigError(f"calibration failed: {exc}", "re-take the photos or fix the truth file as the message says") from exc
    text = profile_to_toml(profile, comment=f"Calibrated by `egw strip calibrate` from {len(photos)} photos in "
                                             f"{args.photos.name}/ with known results ({args.truth.name}).")
    tmp = args.profile.with_name(args.profile.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.profile)
    load_profile(args.profile)  # what was written reads back
    if args.json:
        print_json({"profile": str(args.profile), "name": name, "photos": len(photos), "thresholds": {
            "c_min": profile.thresholds.c_min, "positive_max": profile.thresholds.positive_max,
            "negative_min": profile.thresholds.negative_min}, "cue": profile.orientation.cue})
    else:
        th = profile.thresholds
        print(f"{args.profile}  {name}: window {profile.window_aspect:.2f}:1, T {profile.line_t:.3f}, "
              f"C {profile.line_c:.3f}, cue {profile.orientation.cue}, C_min {th.c_min:.3f}, A {th.positive_max:.3f}, "
              f"B {th.negative_min:.3f}", file=out(), flush=True)
    return 0
