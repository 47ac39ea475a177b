"""Checks dist/bootstrap.zip as Lambda will read it: one entry, `bootstrap`, executable by
everyone; unpacks it into a directory (keeping the mode) so `make package` can run it.

Usage: python tests/package/unpack.py ZIP DIR
"""

from __future__ import annotations

import stat
import sys
import zipfile
from pathlib import Path


def main() -> None:
    archive, out = Path(sys.argv[1]), Path(sys.argv[2])
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
        if names != ["bootstrap"]:
            sys.exit(f"{archive}: expected the single entry 'bootstrap', found {names}")
        mode = zipped.getinfo("bootstrap").external_attr >> 16
        if mode & 0o555 != 0o555:
            sys.exit(f"{archive}: bootstrap has mode {stat.filemode(mode)}; Lambda needs it readable and executable")
        out.mkdir(parents=True, exist_ok=True)
        target = Path(zipped.extract("bootstrap", out))
        target.chmod(mode & 0o777)
    print(f"{archive}: bootstrap {stat.filemode(mode)}, {target.stat().st_size / 1048576:.1f} MiB unpacked")


if __name__ == "__main__":
    main()
