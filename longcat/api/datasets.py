"""Dataset checks that run before any model loads, reporting every problem in one :class:`DatasetError`.

Checked: folders exist; the linked dataset exists; every edit image has a reference with the same relative
name and every reference has an edit image; every edit image has a non-empty ``<name>.txt`` caption; every
image decodes (with the same rules as served requests); the edit and reference VAE caches are separate
folders. Also :func:`resolve_inside`, the path policy for paths that arrive over the network.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from longcat.api.dataloader import DataloaderConfig, DatasetConfig
from longcat.api.training_errors import DatasetError, Problem
from longcat.errors import InvalidArgument, LongCatError
from longcat.images import load_image_file

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_EXTENSION = ".txt"


@dataclass(frozen=True)
class Pair:
    """One training example: the edit image, its reference, and the instruction."""

    name: str                    # relative path without extension, "/"-separated, e.g. "cats/0001"
    edit_path: Path
    reference_path: Path
    caption: str
    edit_dataset: DatasetConfig
    reference_dataset: DatasetConfig
    roots: tuple = ()            # the folders its files must stay inside when read (see read_inside)


@dataclass
class DatasetReport:
    pairs: list[Pair]
    warnings: list[str] = field(default_factory=list)


def validate_datasets(dataloader: DataloaderConfig, use_reference_captions: bool = False, tokenizer=None,
                      decode_images: bool = True) -> DatasetReport:
    """Check the datasets and return their pairs (sorted), or raise :class:`DatasetError` with every problem.

    ``tokenizer`` (optional, cheap to load): also refuse captions over the model's 512-token limit.
    """
    problems: list[Problem] = []
    warnings: list[str] = []
    by_id = dataloader.by_id()
    _check_cache_dirs(dataloader.datasets, problems)

    listings: dict[str, dict[str, Path]] = {}
    for ds in dataloader.datasets:
        listings[ds.id] = _list_images(ds, problems, dataloader.roots)

    # Pair each edit dataset with its reference dataset; a reference dataset may serve several.
    edits_of: dict[str, list[DatasetConfig]] = defaultdict(list)
    pairs: list[Pair] = []
    for edit in dataloader.edit_datasets():
        ref = _reference_of(edit, by_id, problems)
        if edit.caption_strategy != "textfile":
            problems.append(Problem(f"{edit.label}.caption_strategy",
                                    "must be \"textfile\": an edit dataset's captions are the edit instructions"))
        if ref is None:
            continue
        edits_of[ref.id].append(edit)
        if abs(ref.resolution - edit.resolution) > 1e-9 or ref.resolution_type != edit.resolution_type:
            warnings.append(f"{ref.label}: resolution differs from {edit.id}'s; pairs use {edit.id}'s buckets")
        edit_images, ref_images = listings.get(edit.id), listings.get(ref.id)
        if edit_images is None or ref_images is None:
            continue
        for name in sorted(edit_images):
            if name not in ref_images:
                problems.append(Problem(edit.label, f"{name}: no reference image with this name in {ref.id} "
                                                    f"({ref.instance_data_dir})"))
                continue
            caption = _caption(edit, ref, name, edit_images[name], ref_images[name], use_reference_captions,
                               problems, tokenizer, dataloader.roots)
            if caption is not None:
                pairs.append(Pair(name, _real(edit_images[name], dataloader.roots),
                                  _real(ref_images[name], dataloader.roots), caption, edit, ref, dataloader.roots))

    for ref_id, edits in edits_of.items():
        ref_images = listings.get(ref_id) or {}
        wanted = set().union(*(listings.get(e.id) or {} for e in edits))
        for name in sorted(set(ref_images) - wanted):
            problems.append(Problem(by_id[ref_id].label, f"{name}: reference image has no edit image with this "
                                                         f"name in {', '.join(e.id for e in edits)}"))

    for ds in dataloader.datasets:
        if ds.id not in edits_of and not ds.conditioning_data:
            problems.append(Problem(ds.label, "has no conditioning_data and no edit dataset links to it; an edit "
                                              "dataset must list its reference dataset in conditioning_data"))
    if not dataloader.edit_datasets():
        problems.append(Problem("dataloader", "has no edit dataset (one whose conditioning_data names the "
                                              "reference dataset)"))

    if decode_images:
        _check_images(pairs, listings, problems, warnings)
    if not pairs and not problems:
        problems.append(Problem("dataloader", "holds no image pairs"))
    if problems:
        raise DatasetError(problems, dataloader.source)
    for w in warnings:
        log.warning("dataset: %s", w, extra={"event": "dataset_warning"})
    return DatasetReport(sorted(pairs, key=lambda p: (p.edit_dataset.index, p.name)), warnings)


def _reference_of(edit: DatasetConfig, by_id: dict[str, DatasetConfig], problems: list[Problem]):
    refs = edit.conditioning_data
    if len(refs) != 1:
        problems.append(Problem(f"{edit.label}.conditioning_data",
                                f"must name exactly one reference dataset, got {refs}"))
        return None
    ref = by_id.get(refs[0])
    if ref is None:
        known = ", ".join(sorted(by_id)) or "none"
        problems.append(Problem(f"{edit.label}.conditioning_data",
                                f"names dataset {refs[0]!r}, which is not in the dataloader (datasets: {known})"))
        return None
    if ref.id == edit.id or ref.conditioning_data:
        problems.append(Problem(f"{edit.label}.conditioning_data",
                                f"names {ref.id!r}, which is itself an edit dataset, not a reference dataset"))
        return None
    return ref


def _check_cache_dirs(datasets: list[DatasetConfig], problems: list[Problem]) -> None:
    owners: dict[str, str] = {}
    for ds in datasets:
        if not ds.cache_dir_vae:
            continue
        real = os.path.realpath(os.path.abspath(ds.cache_dir_vae))
        if real in owners:
            problems.append(Problem(f"{ds.label}.cache_dir_vae",
                                    f"is the same folder as {owners[real]}'s; edit and reference VAE caches must "
                                    "be separate paths"))
        else:
            owners[real] = ds.id


def _list_images(ds: DatasetConfig, problems: list[Problem], roots: tuple = ()) -> dict[str, Path] | None:
    """{relative name without extension: path} of every image under the dataset folder, or None if unusable."""
    root = Path(ds.instance_data_dir)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        problems.append(Problem(f"{ds.label}.instance_data_dir", f"{str(root)!r} {what}"))
        return None
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith(".") or not fname.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = Path(dirpath) / fname
            name = path.relative_to(root).with_suffix("").as_posix()
            if roots and not _inside(path, roots):
                problems.append(Problem(f"{ds.label}.instance_data_dir", f"{name}: {fname} is a symlink leading "
                                                                         "outside the data folders (refused)"))
                continue
            if name in found:
                problems.append(Problem(ds.label, f"{name}: several images share this name ({found[name].name}, "
                                                  f"{fname}); pairs are matched by name"))
                continue
            found[name] = path
    if not found:
        problems.append(Problem(f"{ds.label}.instance_data_dir", f"{str(root)!r} holds no images "
                                                                 f"({', '.join(IMAGE_EXTENSIONS)})"))
    return found


def _read_caption(image_path: Path, roots: tuple = ()) -> tuple[str | None, str | None]:
    """(caption, problem) from ``<name>.txt`` beside the image."""
    path = image_path.with_suffix(CAPTION_EXTENSION)
    if roots and path.is_symlink() and not _inside(path, roots):
        return None, f"caption file {path.name} is a symlink leading outside the data folders (refused)"
    if not path.is_file():
        return None, f"caption file {path.name} is missing"
    try:
        text = path.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError:
        return None, f"caption file {path.name} is not UTF-8 text"
    except OSError as exc:
        return None, f"caption file {path.name} cannot be read ({exc.strerror or exc})"
    if not text:
        return None, f"caption file {path.name} is empty"
    return text, None


def _caption(edit, ref, name, edit_path, ref_path, use_reference_captions, problems, tokenizer,
             roots: tuple = ()) -> str | None:
    # Reference captions replace edit captions only when asked (the quickstart: usually not wanted).
    if use_reference_captions and ref.caption_strategy == "textfile":
        text, _ = _read_caption(ref_path, roots)
        if text is not None:
            return _check_length(text, edit, name, problems, tokenizer)
    text, problem = _read_caption(edit_path, roots)
    if problem:
        problems.append(Problem(edit.label, f"{name}: {problem}"))
        return None
    return _check_length(text, edit, name, problems, tokenizer)


def _check_length(text, edit, name, problems, tokenizer) -> str | None:
    if tokenizer is not None:
        from longcat.api.prompts import MAX_PROMPT_TOKENS, prompt_token_ids

        n = len(prompt_token_ids(tokenizer, text))
        if n > MAX_PROMPT_TOKENS:
            problems.append(Problem(edit.label, f"{name}: caption is {n} tokens; the model reads at most "
                                                f"{MAX_PROMPT_TOKENS}"))
            return None
    return text


def _check_images(pairs: list[Pair], listings, problems: list[Problem], warnings: list[str]) -> None:
    """Decode every image once; pairs whose aspects differ are cropped separately (warned)."""
    sizes: dict[Path, tuple[int, int]] = {}
    by_path = {path: (ds_id, name) for ds_id, found in listings.items() if found for name, path in found.items()}
    labels = {p.edit_dataset.id: p.edit_dataset.label for p in pairs}
    labels.update({p.reference_dataset.id: p.reference_dataset.label for p in pairs})
    for path, (ds_id, name) in sorted(by_path.items()):
        try:
            sizes[path] = load_image_file(path, field=name).size
        except LongCatError as exc:
            problems.append(Problem(labels.get(ds_id, f"datasets[{ds_id}]"), f"{name}: {path.name} {exc.reason}"))
    for p in pairs:
        a, b = sizes.get(p.edit_path), sizes.get(p.reference_path)
        if a and b and abs(a[0] / a[1] - b[0] / b[1]) > 0.01:
            warnings.append(f"{p.name}: edit is {a[0]}x{a[1]} but reference is {b[0]}x{b[1]}; each is center-"
                            "cropped to the same bucket separately")


def _inside(path: Path, roots: tuple) -> bool:
    """``path`` with every symlink resolved lies inside one of ``roots`` (themselves resolved)."""
    real = Path(os.path.realpath(path))
    return any(real == Path(os.path.realpath(r)) or real.is_relative_to(os.path.realpath(r)) for r in roots)


def _real(path: Path, roots: tuple) -> Path:
    """Confined pairs carry their files' resolved paths: what was checked is what gets read."""
    return Path(os.path.realpath(path)) if roots else path


def read_inside(path: str | os.PathLike, roots: tuple = (), field: str = "image") -> bytes:
    """A dataset file's bytes for the trainer. With ``roots`` (a confined job): the path must still resolve
    inside them, and the file is opened without following a symlink (one swapped in after the submission was
    checked is refused, not followed)."""
    if not roots:
        return Path(path).read_bytes()
    real = os.path.realpath(path)
    if not _inside(Path(real), roots):
        raise InvalidArgument(f"{os.fspath(path)!r} leads outside the data folders", field)
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise InvalidArgument(f"{os.fspath(path)!r} cannot be read ({exc.strerror or exc})", field) from exc
    with os.fdopen(fd, "rb") as f:
        return f.read()


def resolve_inside(path: str | os.PathLike, roots: Iterable[str | os.PathLike], field: str) -> Path:
    """``path`` resolved (symlinks followed) if it lies inside one of ``roots``; else :class:`InvalidArgument`.

    Relative paths are taken relative to the first root. ``..`` components are refused outright, and a
    symlink that points outside every root is refused, so a request can only reach the configured folders.
    """
    roots = [Path(os.path.realpath(r)) for r in roots]
    if not roots:
        raise InvalidArgument("no data roots are configured on this server, so no path is allowed", field)
    raw = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not raw or "\x00" in raw:
        raise InvalidArgument(f"must be a non-empty path, got {path!r}", field)
    candidate = Path(raw)
    if ".." in candidate.parts:
        raise InvalidArgument(f"{raw!r} must not contain '..'", field)
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    real = Path(os.path.realpath(candidate))
    for root in roots:
        if real == root or real.is_relative_to(root):
            return real
    raise InvalidArgument(f"{raw!r} is outside the allowed data folders ({', '.join(str(r) for r in roots)})", field)
