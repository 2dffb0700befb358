"""Print the image's requirements, one per line: pyproject.toml's dependencies plus those of each extra
named in the comma list given (the Dockerfile's EXTRAS; empty: none). Used by the Dockerfile and by
docker/wheelhouse.sh, so the wheels downloaded are the wheels the build installs.
    python docker/requirements.py maps > requirements.txt"""

import sys
import tomllib


def requirements(extras: str, pyproject: str = "pyproject.toml") -> list[str]:
    project = tomllib.load(open(pyproject, "rb"))["project"]
    known = {k: v for k, v in project.get("optional-dependencies", {}).items() if k not in ("dev", "bench")}
    out = list(project["dependencies"])
    for extra in filter(None, (e.strip() for e in extras.split(","))):
        if extra not in known:
            raise SystemExit(f"EXTRAS: {extra!r} is not an extra the image takes; expected some of {sorted(known)}")
        out += known[extra]
    return out


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1] if len(sys.argv) > 1 else "")))
