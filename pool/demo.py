"""The demo pool, built from real public-domain material available offline.

- Clip art: Debian's ``openclipart-svg`` (public domain), rasterised with cairosvg. Its metadata is
  human-written and noisy like web alt-text: a title (often terse, sometimes a file name or another
  language), a description (sometimes "Made with Sodipodi"-style noise), keywords. Each image gets
  up to four candidate captions: the title (source ``alt``), the description when it is real text
  (``human``), "clip art of <keywords>" (``synthetic``) and a hard negative: the title of another
  drawing from the same category (``synthetic``).
- Photos: the real photos shipped in scikit-image, scikit-learn and matplotlib, with captions written
  for this demo and a hard negative.

The builder writes PNGs and a JSONL manifest, then imports it through the same ``pool_import`` path
users take. It also writes ``truth.jsonl`` (image file, caption, role), which simulated annotators use
as their hidden preference: the true description > the title > keywords > a negative.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image as PILImage

OPENCLIPART_ROOT = Path("/usr/share/openclipart/svg")
NS = {"dc": "http://purl.org/dc/elements/1.1/", "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#"}
# Descriptions that editors left behind instead of describing the drawing.
NOISE_DESCRIPTION = re.compile(r"sodipodi|inkscape|created with|made with|^\s*$|openclipart|http", re.I)
# Hidden quality of each caption role for simulated annotators (higher is better).
ROLE_QUALITY = {"description": 0.9, "photo_caption": 0.95, "title": 0.6, "keywords": 0.45, "negative": 0.05}

PHOTOS = [
    # (package, file or loader, human caption, short alt title)
    (
        "skimage",
        "astronaut.png",
        "Portrait of astronaut Eileen Collins in an orange flight suit in front of an American flag",
        "astronaut",
    ),
    ("skimage", "chelsea.png", "A ginger tabby cat looking to the side, close-up", "chelsea the cat"),
    (
        "skimage",
        "coffee.png",
        "A cup of coffee with latte art on a saucer, seen from above on a red table",
        "coffee",
    ),
    ("skimage", "rocket.jpg", "A rocket on the launch pad under a blue sky", "rocket"),
    (
        "skimage",
        "camera.png",
        "Black and white photo of a man with a camera on a tripod in a field",
        "cameraman",
    ),
    ("skimage", "coins.png", "Greyscale photo of many old coins laid out in rows", "coins"),
    ("skimage", "horse.png", "Black silhouette of a horse standing, on a white background", "horse"),
    (
        "skimage",
        "hubble_deep_field.jpg",
        "Hubble deep field image: countless distant galaxies on black space",
        "hubble",
    ),
    ("skimage", "moon.png", "Greyscale close-up of the cratered surface of the moon", "moon"),
    ("skimage", "page.png", "A scanned page of printed text with uneven lighting", "page"),
    ("skimage", "motorcycle_left.png", "A red motorcycle parked in front of a plain wall", "motorcycle"),
    ("skimage", "retina.jpg", "Fundus photograph of a human retina with blood vessels", "retina"),
    ("skimage", "brick.png", "Greyscale texture of a brick wall", "brick"),
    ("skimage", "grass.png", "Greyscale texture of grass blades", "grass"),
    ("sklearn", "china.jpg", "A Chinese pagoda temple among trees under a clear sky", "china"),
    ("sklearn", "flower.jpg", "Close-up of a pink flower with a yellow centre", "flower"),
    (
        "matplotlib",
        "grace_hopper.jpg",
        "Portrait of Rear Admiral Grace Hopper in US Navy uniform",
        "grace hopper",
    ),
]


@dataclass
class DemoItem:
    image_file: str  # relative to the manifest folder
    category: str
    captions: dict[str, str] = field(default_factory=dict)  # role -> text


def _photo_bytes(package: str, name: str) -> bytes | None:
    """The photo's bytes, or None if this install lacks it (it is then simply not in the demo)."""
    try:
        if package == "skimage":
            import skimage

            path = Path(skimage.__file__).parent / "data" / name
            return path.read_bytes()
        if package == "sklearn":
            import sklearn

            path = Path(sklearn.__file__).parent / "datasets" / "images" / name
            return path.read_bytes()
        if package == "matplotlib":
            import matplotlib

            return (Path(matplotlib.get_data_path()) / "sample_data" / name).read_bytes()
    except OSError:
        return None
    return None


def svg_metadata(path: Path) -> dict:
    """Title, description and keywords of an openclipart SVG (its ``cc:Work`` metadata)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return {}
    # Old files use the web.resource.org cc namespace, newer ones creativecommons.org: match by local name.
    work = next((el for el in root.iter() if isinstance(el.tag, str) and el.tag.endswith("}Work")), None)
    if work is None:
        return {}
    title = (work.findtext("dc:title", default="", namespaces=NS) or "").strip()
    description = (work.findtext("dc:description", default="", namespaces=NS) or "").strip()
    keywords = [
        (li.text or "").strip()
        for li in work.findall("dc:subject/rdf:Bag/rdf:li", NS)
        if (li.text or "").strip()
    ]
    return {"title": title, "description": description, "keywords": keywords}


def _rasterise(args: tuple[str, str]) -> tuple[str, str | None]:
    """SVG -> PNG on white, longest side 384 px. Returns (output, error)."""
    import cairosvg

    svg_path, out_path = args
    try:
        png = cairosvg.svg2png(url=svg_path, output_width=384, background_color="white", unsafe=False)
        with PILImage.open(io.BytesIO(png)) as img:
            img = img.convert("RGB")
            if img.height > 2 * img.width:  # absurd aspect ratios are usually broken exports
                return out_path, "aspect ratio"
            img.save(out_path, format="PNG", optimize=False)
        return out_path, None
    except Exception as exc:  # noqa: BLE001 - cairosvg raises many types on broken SVGs
        return out_path, f"{type(exc).__name__}: {exc}"[:200]


def _clipart_candidates(limit: int) -> Iterator[tuple[str, Path, dict]]:
    """Up to ``limit`` SVGs with a usable title, round-robin across categories for variety."""
    by_category: dict[str, list[Path]] = defaultdict(list)
    for svg in sorted(OPENCLIPART_ROOT.rglob("*.svg")):
        by_category[svg.relative_to(OPENCLIPART_ROOT).parts[0]].append(svg)
    iterators = {cat: iter(paths) for cat, paths in sorted(by_category.items())}
    produced = 0
    while iterators and produced < limit:
        for category in list(iterators):
            svg = next(iterators[category], None)
            if svg is None:
                del iterators[category]
                continue
            meta = svg_metadata(svg)
            if not meta.get("title"):
                continue
            yield category, svg, meta
            produced += 1
            if produced >= limit:
                return


def demo_source_build(*, out_dir: Path, clipart_limit: int, workers: int = 2, progress=None) -> dict:
    """Write demo images and ``manifest.jsonl`` + ``truth.jsonl`` into ``out_dir``. Returns counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images_dir = out_dir / "images"
    images_dir.mkdir(exist_ok=True)
    items: list[DemoItem] = []

    for index, (package, name, caption, title) in enumerate(PHOTOS):
        data = _photo_bytes(package, name)
        if data is None:
            continue
        target = images_dir / f"photo-{index:02d}{Path(name).suffix}"
        target.write_bytes(data)
        items.append(
            DemoItem(
                target.relative_to(out_dir).as_posix(), "photos", {"photo_caption": caption, "title": title}
            )
        )

    jobs, metas = [], []
    if OPENCLIPART_ROOT.is_dir() and clipart_limit > 0:
        for index, (category, svg, meta) in enumerate(_clipart_candidates(clipart_limit)):
            target = images_dir / f"clipart-{index:05d}.png"
            jobs.append((str(svg), str(target)))
            metas.append((category, meta, target))
    failed = 0
    done_paths: set[str] = set()
    if jobs:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for count, (out_path, error) in enumerate(pool.map(_rasterise, jobs, chunksize=8), start=1):
                if error:
                    failed += 1
                else:
                    done_paths.add(out_path)
                if progress:
                    progress(count, len(jobs))
    for category, meta, target in metas:
        if str(target) not in done_paths:
            continue
        captions = {"title": meta["title"]}
        if meta["description"] and not NOISE_DESCRIPTION.search(meta["description"]):
            captions["description"] = meta["description"]
        if meta["keywords"]:
            captions["keywords"] = "clip art of " + ", ".join(meta["keywords"][:6])
        items.append(DemoItem(target.relative_to(out_dir).as_posix(), category, captions))

    _add_hard_negatives(items)
    manifest = out_dir / "manifest.jsonl"
    truth = out_dir / "truth.jsonl"
    with manifest.open("w") as m, truth.open("w") as t:
        for item in items:
            row = {"image": item.image_file, "category": item.category}
            # A missing caption is null (no caption), not "" (which would import as an empty caption).
            row["title"] = item.captions.get("title")
            row["description"] = item.captions.get("description") or item.captions.get("photo_caption")
            row["keywords"] = item.captions.get("keywords")
            row["negative"] = item.captions.get("negative")
            m.write(json.dumps(row) + "\n")
            for role, text in item.captions.items():
                t.write(json.dumps({"image": item.image_file, "text": text, "role": role}) + "\n")
    return {"images": len(items), "rasterise_failed": failed, "manifest": str(manifest), "truth": str(truth)}


def _add_hard_negatives(items: list[DemoItem]) -> None:
    """Each image gets another image's title from the same category: plausible but wrong."""
    by_category: dict[str, list[DemoItem]] = defaultdict(list)
    for item in items:
        by_category[item.category].append(item)
    for group in by_category.values():
        if len(group) < 2:
            continue
        for position, item in enumerate(group):
            other = group[(position + 1 + len(group) // 2) % len(group)]
            candidate = other.captions.get("photo_caption") or other.captions.get("title", "")
            if candidate and candidate.strip().lower() != item.captions.get("title", "").strip().lower():
                item.captions["negative"] = candidate


def demo_truth_load(truth_file: Path) -> dict[tuple[str, str], float]:
    """``{(image sha256, caption text): hidden quality}`` for simulated annotators."""
    import hashlib

    quality: dict[tuple[str, str], float] = {}
    base = truth_file.parent
    sha_of: dict[str, str] = {}
    with truth_file.open() as handle:
        for line in handle:
            row = json.loads(line)
            if row["image"] not in sha_of:
                sha_of[row["image"]] = hashlib.sha256((base / row["image"]).read_bytes()).hexdigest()
            # Longer true descriptions are slightly better: more complete, more vivid.
            bonus = (
                min(len(row["text"]), 200) / 2000 if row["role"] in {"description", "photo_caption"} else 0.0
            )
            quality[(sha_of[row["image"]], row["text"].strip())] = ROLE_QUALITY[row["role"]] + bonus
    return quality
