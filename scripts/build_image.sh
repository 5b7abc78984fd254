#!/usr/bin/env bash
# Build the fbml service image on a machine without a container registry, then smoke-test it
# without running a container.
#
#   scripts/build_image.sh [EXTRA PODMAN BUILD ARGS...]     e.g. --build-arg BUNDLE=bundle
#
# Steps (each idempotent):
#   1. install podman and debootstrap with apt when missing;
#   2. debootstrap a minimal Debian bookworm root with python3 and import it as the base image
#      (skipped when the base image exists);
#   3. podman build the Containerfile on that base;
#   4. mount the image read-only, chroot into it as its own user with its own environment, run
#      `fbml --help` and an in-process request (a tiny bundle from freshly initialised models; the
#      app's GET /health through Litestar's TestClient when fbml/api.py is there).
#
# Environment:
#   DEBIAN_MIRROR      bookworm mirror for debootstrap (default: the one apt on this machine uses)
#   FBML_BUILD_CACHE   work folder for the debootstrapped root (default /var/tmp/fbml-build)
#   FBML_BASE_IMAGE    base image name (default localhost/fbml-base:bookworm)
#   FBML_IMAGE         image name (default localhost/fbml:latest)
#   FBML_BUILD_CA_FILE CA bundle trusted while the build downloads, mounted for the build only
#                      (default: $SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt, i.e. what this
#                      machine trusts, e.g. a TLS-intercepting proxy's CA; "none" to not pass one)
#   FBML_SKIP_BUILD=1  only run the smoke test on the existing image
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FBML_BUILD_CACHE:-/var/tmp/fbml-build}
BASE_IMAGE=${FBML_BASE_IMAGE:-localhost/fbml-base:bookworm}
IMAGE=${FBML_IMAGE:-localhost/fbml:latest}
SUITE=bookworm
START=$SECONDS

step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'build_image.sh: error: %s\n' "$*" >&2; exit 1; }
elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# ---------------------------------------------------------------------------------------------
step "1/4 tools: podman, debootstrap"
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}; run as root or install them: apt-get install ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    echo "installing ${missing[*]}"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed"
fi
echo "podman $(podman version --format '{{.Client.Version}}'), debootstrap $(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null || echo '?')"
[[ $(id -u) -eq 0 ]] || die "run as root: the smoke test mounts the image and chroots into it (rootless: wrap in 'podman unshare')"

# The bookworm mirror apt uses here (deb822 .sources or one-line .list), unless DEBIAN_MIRROR is set.
apt_mirror() {
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; ok = 0; deb = 0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) deb = 1
                    if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/); uris = u[1] }
                    if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
                }
                if (deb && ok && uris != "") { print uris; exit }
            }' "$file"
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$file"
    done
}

# ---------------------------------------------------------------------------------------------
step "2/4 base image: $BASE_IMAGE"
if podman image exists "$BASE_IMAGE"; then
    echo "exists, skipped ($(podman image inspect --format '{{.Created}}' "$BASE_IMAGE"))"
else
    mirror=${DEBIAN_MIRROR:-$(apt_mirror | head -n 1)}
    [[ -n $mirror ]] || die "no $SUITE mirror in /etc/apt/sources.list*; set DEBIAN_MIRROR"
    mirror=${mirror%/}
    root=$CACHE/rootfs-$SUITE
    tarball=$CACHE/rootfs-$SUITE.tar
    mkdir -p "$CACHE"
    if [[ ! -f $CACHE/rootfs-$SUITE.ok ]]; then
        rm -rf "$root" "$tarball"
        echo "debootstrap --variant=minbase $SUITE from $mirror into $root"
        t=$SECONDS
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            "$SUITE" "$root" "$mirror" || die "debootstrap failed (log: $root/debootstrap/debootstrap.log)"
        # No package lists or downloaded .debs in the image.
        rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
        touch "$CACHE/rootfs-$SUITE.ok"
        echo "debootstrap took $(elapsed $((SECONDS - t)))"
    else
        echo "reusing $root"
    fi
    tar --numeric-owner -C "$root" -cf "$tarball" . || die "could not tar $root"
    podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $SUITE + python3" \
        "$tarball" "$BASE_IMAGE" >/dev/null || die "podman import failed"
    rm -f "$tarball"
    echo "imported $BASE_IMAGE: $(chroot "$root" python3 --version)"
fi

# ---------------------------------------------------------------------------------------------
step "3/4 podman build -> $IMAGE"
if [[ ${FBML_SKIP_BUILD:-0} == 1 ]]; then
    podman image exists "$IMAGE" || die "FBML_SKIP_BUILD=1 but $IMAGE does not exist"
    echo "skipped (FBML_SKIP_BUILD=1)"
else
    ca=${FBML_BUILD_CA_FILE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
    ca_args=()
    if [[ $ca != none ]]; then
        [[ -f $ca ]] || die "CA bundle $ca not found (set FBML_BUILD_CA_FILE, or none)"
        echo "trusting $ca during the build (mounted, not copied into the image)"
        ca_args=(-v "$ca:/run/fbml-build-ca.crt:ro" --build-arg BUILD_CA_FILE=/run/fbml-build-ca.crt)
    fi
    previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    t=$SECONDS
    # --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
    podman build --isolation=chroot --format docker \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" "${ca_args[@]}" \
        -f "$REPO/Containerfile" -t "$IMAGE" "$@" "$REPO" || die "podman build failed"
    echo "build took $(elapsed $((SECONDS - t)))"
    # The image this build replaced is ~6 GB of untagged layers: drop it (kept if something uses it).
    if [[ -n $previous && $previous != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
        podman rmi "$previous" >/dev/null 2>&1 && echo "removed the image it replaces (${previous:0:12})" || true
    fi
fi
echo "$IMAGE: $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.2f GB", $1 / 1e9 }')"

# ---------------------------------------------------------------------------------------------
step "4/4 smoke test (no container): image mount + chroot"
config=$(podman image inspect --format \
    'user={{.Config.User}} cmd={{json .Config.Cmd}} ports={{json .Config.ExposedPorts}} volumes={{json .Config.Volumes}} healthcheck={{json .Config.Healthcheck}}' \
    "$IMAGE")
echo "$config"
[[ $config == *'"8080/tcp"'* ]] || die "image does not expose 8080"
[[ $config == *'/health'* ]] || die "image has no HEALTHCHECK (built without --format docker?)"
[[ $config == *'"serve"'* ]] || die "image CMD does not run fbml serve"

mnt=$(podman image mount "$IMAGE") || die "podman image mount failed"
trap 'podman image unmount "$IMAGE" >/dev/null || echo "warning: podman image unmount $IMAGE failed" >&2' EXIT
echo "mounted read-only at $mnt"

user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
ids=$(awk -F: -v u="${user:-root}" '$1 == u { print $3 ":" $4 }' "$mnt/etc/passwd")
[[ -n $ids ]] || die "image user '${user}' not in the image's /etc/passwd"
home=$(awk -F: -v u="${user:-root}" '$1 == u { print $6 }' "$mnt/etc/passwd")
mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')

# In the image, as its user, with its environment; a private mount namespace gives it /proc, /dev
# and writable tmpfs /tmp and home (the image itself stays read-only) and undoes them on exit.
in_image() {
    unshare --mount --propagation private -- bash -euo pipefail -c '
        mnt=$1 home=$2 ids=$3; shift 3
        mount -t proc proc "$mnt/proc"
        mount --rbind /dev "$mnt/dev"
        mount -t tmpfs -o mode=1777 tmpfs "$mnt/tmp"
        mount -t tmpfs -o "mode=0755,uid=${ids%%:*},gid=${ids##*:}" tmpfs "$mnt$home"
        exec chroot --userspec="$ids" "$mnt" /usr/bin/env -i "$@"
    ' in_image "$mnt" "$home" "$ids" "${image_env[@]}" "HOME=$home" "$@"
}

echo "--- fbml --help (as $user, uid:gid $ids)"
in_image sh -c 'cd "$HOME" && fbml --help' || die "fbml --help failed in the image"

echo "--- in-process request, then fbml serve on a socket and the image's HEALTHCHECK"
healthcheck=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")
in_image env "FBML_SMOKE_HEALTHCHECK=$healthcheck" python - <<'PY' || die "smoke test failed in the image"
import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

start = time.perf_counter()
import numpy as np
import torch

import fbml
from fbml.bundle.store import Bundle, BundleModel, ImageSettings, TextSettings, build_model, load_bundle, save_bundle
from fbml.text.labels import LabelCodec
from fbml.text.vocabulary import Vocabulary
from fbml.text.word2vec import WordVectors

print(f"python {sys.version.split()[0]}, torch {torch.__version__}, fbml {getattr(fbml, '__version__', '?')}, "
      f"imports {time.perf_counter() - start:.1f}s")

# A tiny bundle from freshly initialised models (no training, nothing downloaded).
codec = LabelCodec(["electronics", "garden", "toys"])
vocabulary = Vocabulary(["<pad>", "<unk>", "phone", "lawn", "mower", "lego", "bricks"])
words = vocabulary.tokens[2:]
vectors = WordVectors(words, np.random.default_rng(0).normal(size=(len(words), 16)))
text = TextSettings(vocabulary, vectors, 12)
image = ImageSettings(64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
bundle = Bundle(codec, image=image, text=text)
for kind in ("text", "image"):
    bundle = bundle.with_model(BundleModel(kind, build_model(kind, {}, codec.num_classes, text), {}))

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "bundle"
    save_bundle(bundle, path)
    loaded = load_bundle(path)
    with torch.no_grad():
        tokens = torch.as_tensor(vocabulary.encode_texts(["lego bricks", "lawn mower"], text.length)).long()
        text_logits = loaded.model("text")(tokens).logits
        image_logits = loaded.model("image")(torch.rand(2, 3, image.size, image.size)).logits
    assert text_logits.shape == image_logits.shape == (2, codec.num_classes), (text_logits.shape, image_logits.shape)
    print(f"bundle: saved and loaded {sorted(loaded.models)} ({sum(f.stat().st_size for f in path.iterdir()) / 1e6:.0f} MB),"
          f" text logits {tuple(text_logits.shape)}, image logits {tuple(image_logits.shape)}")

    try:
        import fbml.serving.app as api
    except ModuleNotFoundError as error:
        if error.name != "fbml.serving.app":
            raise
        print("fbml.serving.app: not in this image yet; GET /health skipped")
    else:
        create_app = getattr(api, "create_app", None)
        if create_app is None:
            print("fbml.serving.app imported; it has no create_app, GET /health skipped")
        else:
            from litestar.testing import TestClient

            first = next(iter(inspect.signature(create_app).parameters.values()), None)
            wants_bundle = first is not None and "Bundle" in str(first.annotation) and "Path" not in str(first.annotation)
            app = create_app(loaded if wants_bundle else path)
            with TestClient(app=app) as client:
                response = client.get("/health")
            print(f"TestClient GET /health -> {response.status_code} {response.text.strip()}")
            assert response.status_code == 200, response.text

            # The real server on a real socket, as the image's CMD runs it, then its HEALTHCHECK.
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            command = ["fbml", "serve", str(path), "--host", "127.0.0.1", "--port", str(port)]
            log = Path(tmp) / "serve.log"
            with log.open("w") as output:
                server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 120
                while True:
                    if server.poll() is not None:
                        sys.exit(f"fbml serve exited with status {server.returncode}:\n{log.read_text()}")
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                            body = reply.read().decode().strip()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            sys.exit(f"fbml serve: no answer on /health within 120 s:\n{log.read_text()}")
                        time.sleep(0.5)
                print(f"{' '.join(command[:2])} (port {port}): GET /health -> {body}")
                test = json.loads(os.environ["FBML_SMOKE_HEALTHCHECK"])["Test"]
                assert test[0] == "CMD", test
                status = subprocess.run([part.replace(":8080/", f":{port}/") for part in test[1:]]).returncode
                print(f"image HEALTHCHECK command -> exit status {status}")
                assert status == 0
            finally:
                server.terminate()
                server.wait(timeout=30)
print(f"smoke test passed in {time.perf_counter() - start:.1f}s")
PY

step "OK: $IMAGE built and smoke-tested in $(elapsed $((SECONDS - START)))"
