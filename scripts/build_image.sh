#!/usr/bin/env bash
# Build the fbml service image on a machine without a container registry, then smoke-test it
# without running a container.
#
#   scripts/build_image.sh [EXTRA PODMAN BUILD ARGS...]     e.g. --build-arg BUNDLE=bundle
#   FBML_TARGET=onnx scripts/build_image.sh                  the lean ONNX Runtime image (no torch)
#
# Steps (each idempotent):
#   1. install podman and debootstrap with apt when missing;
#   2. debootstrap a minimal Debian bookworm root with python3 and import it as the base image
#      (skipped when the base image exists);
#   3. podman build the Containerfile's target on that base;
#   4. a tiny bundle on this machine (`uv run fbml sample`, one epoch of `fbml train --model image`
#      at 32 px; for onnx, then `fbml export-onnx`), unless FBML_SMOKE_BUNDLE names one;
#   5. mount the image read-only, bind the bundle read-only at its /bundle, chroot into it as its own
#      user with its own environment, run `fbml --help`, then the image's CMD on a local port:
#      GET /health, POST /predict/image, GET / (the page) and the image's HEALTHCHECK; for onnx,
#      first check that `import torch` fails in the image.
#
# Environment:
#   DEBIAN_MIRROR      bookworm mirror for debootstrap (default: the one apt on this machine uses)
#   FBML_BUILD_CACHE   work folder for the debootstrapped root (default /var/tmp/fbml-build)
#   FBML_BASE_IMAGE    base image name (default localhost/fbml-base:bookworm)
#   FBML_TARGET        runtime (default: the torch image) or onnx (the lean image, --runtime onnx)
#   FBML_IMAGE         image name (default localhost/fbml:latest, or localhost/fbml:onnx for onnx)
#   FBML_SMOKE_BUNDLE  bundle folder for the smoke test (for onnx: through `fbml export-onnx`)
#                      instead of training a tiny one (needs uv and this checkout's environment)
#   FBML_BUILD_CA_FILE CA bundle trusted while the build downloads, mounted for the build only
#                      (default: $SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt, i.e. what this
#                      machine trusts, e.g. a TLS-intercepting proxy's CA; "none" to not pass one)
#   FBML_SKIP_BUILD=1  only run the smoke test on the existing image
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FBML_BUILD_CACHE:-/var/tmp/fbml-build}
BASE_IMAGE=${FBML_BASE_IMAGE:-localhost/fbml-base:bookworm}
TARGET=${FBML_TARGET:-runtime}
case $TARGET in
    runtime) IMAGE=${FBML_IMAGE:-localhost/fbml:latest} ;;
    onnx) IMAGE=${FBML_IMAGE:-localhost/fbml:onnx} ;;
    *) printf 'build_image.sh: error: FBML_TARGET must be runtime or onnx, not %s\n' "$TARGET" >&2; exit 1 ;;
esac
SUITE=bookworm
START=$SECONDS

step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'build_image.sh: error: %s\n' "$*" >&2; exit 1; }
elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# ---------------------------------------------------------------------------------------------
step "1/5 tools: podman, debootstrap"
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
step "2/5 base image: $BASE_IMAGE"
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
step "3/5 podman build --target $TARGET -> $IMAGE"
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
    podman build --isolation=chroot --format docker --target "$TARGET" \
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
step "4/5 smoke bundle"
work=$CACHE/smoke-$TARGET
bundle=$work/bundle
rm -rf "$work" && mkdir -p "$work"
if [[ -n ${FBML_SMOKE_BUNDLE:-} ]]; then
    [[ -f $FBML_SMOKE_BUNDLE/bundle.json ]] || die "FBML_SMOKE_BUNDLE=$FBML_SMOKE_BUNDLE has no bundle.json"
    cp -r "$FBML_SMOKE_BUNDLE" "$bundle" || die "could not copy $FBML_SMOKE_BUNDLE"
    echo "a copy of $FBML_SMOKE_BUNDLE"
else
    command -v uv >/dev/null 2>&1 || die "the smoke bundle is made with uv and this checkout (or set FBML_SMOKE_BUNDLE)"
    # fbml from this checkout's locked environment (with torch), in $work, logged to $work/fbml.log.
    host_fbml() {
        (cd "$work" && uv run --quiet --frozen --project "$REPO" fbml "$@") >>"$work/fbml.log" 2>&1 \
            || die "fbml $1 failed (log: $work/fbml.log)"
    }
    t=$SECONDS
    host_fbml sample sample --products 60 --seed 0
    host_fbml train --model image --products sample/Products.csv --images sample/Images.csv --image-dir sample/images \
        --out bundle --epochs 1 --image-size 32 --weights none
    if [[ $TARGET == onnx ]]; then
        host_fbml export-onnx bundle
    fi
    echo "$bundle: an image model (one epoch, 32 px)$([[ $TARGET == onnx ]] && echo ' and its ONNX graph') in $(elapsed $((SECONDS - t)))"
fi
# The image's user (another uid) reads the bundle: readable whatever this shell's umask is.
chmod -R a+rX "$bundle"

# ---------------------------------------------------------------------------------------------
step "5/5 smoke test (no container): image mount + chroot"
config=$(podman image inspect --format \
    'user={{.Config.User}} cmd={{json .Config.Cmd}} ports={{json .Config.ExposedPorts}} volumes={{json .Config.Volumes}} healthcheck={{json .Config.Healthcheck}}' \
    "$IMAGE")
echo "$config"
[[ $config == *'"8080/tcp"'* ]] || die "image does not expose 8080"
[[ $config == *'/health'* ]] || die "image has no HEALTHCHECK (built without --format docker?)"
[[ $config == *'"serve"'* ]] || die "image CMD does not run fbml serve"
[[ $TARGET != onnx || $config == *'"--runtime","onnx"'* ]] || die "the onnx image's CMD does not serve --runtime onnx"

mnt=$(podman image mount "$IMAGE") || die "podman image mount failed"
trap 'podman image unmount "$IMAGE" >/dev/null || echo "warning: podman image unmount $IMAGE failed" >&2' EXIT
echo "mounted read-only at $mnt"
[[ -d $mnt/bundle ]] || die "the image has no /bundle"

user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
ids=$(awk -F: -v u="${user:-root}" '$1 == u { print $3 ":" $4 }' "$mnt/etc/passwd")
[[ -n $ids ]] || die "image user '${user}' not in the image's /etc/passwd"
home=$(awk -F: -v u="${user:-root}" '$1 == u { print $6 }' "$mnt/etc/passwd")
mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')

# In the image, as its user, with its environment; a private mount namespace gives it /proc, /dev,
# writable tmpfs /tmp and home and the smoke bundle read-only at /bundle (the image itself stays
# read-only) and undoes them on exit.
in_image() {
    unshare --mount --propagation private -- bash -euo pipefail -c '
        mnt=$1 home=$2 ids=$3 bundle=$4; shift 4
        mount -t proc proc "$mnt/proc"
        mount --rbind /dev "$mnt/dev"
        mount -t tmpfs -o mode=1777 tmpfs "$mnt/tmp"
        mount -t tmpfs -o "mode=0755,uid=${ids%%:*},gid=${ids##*:}" tmpfs "$mnt$home"
        mount --bind "$bundle" "$mnt/bundle"
        mount -o remount,bind,ro "$mnt/bundle"
        exec chroot --userspec="$ids" "$mnt" /usr/bin/env -i "$@"
    ' in_image "$mnt" "$home" "$ids" "$bundle" "${image_env[@]}" "HOME=$home" "$@"
}

echo "--- fbml --help (as $user, uid:gid $ids)"
in_image sh -c 'cd "$HOME" && fbml --help' >/dev/null || die "fbml --help failed in the image"
echo "ok"

echo "--- the image's CMD on a local port: /health, /predict/image, the page, the HEALTHCHECK"
in_image env "FBML_SMOKE_TARGET=$TARGET" \
    "FBML_SMOKE_CMD=$(podman image inspect --format '{{json .Config.Cmd}}' "$IMAGE")" \
    "FBML_SMOKE_HEALTHCHECK=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")" \
    python - <<'PY' || die "smoke test failed in the image"
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from PIL import Image

start = time.perf_counter()
if os.environ["FBML_SMOKE_TARGET"] == "onnx":
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        print("import torch -> ModuleNotFoundError (as it should in the onnx image)")
    else:
        sys.exit("torch is importable in the onnx image")


def get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return reply.headers.get("content-type", ""), reply.read().decode()


with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
# The image's CMD as it is, on 127.0.0.1:port instead of 0.0.0.0:8080.
command = ["127.0.0.1" if part == "0.0.0.0" else str(port) if part == "8080" else part
           for part in json.loads(os.environ["FBML_SMOKE_CMD"])]
base = f"http://127.0.0.1:{port}"
log = Path(tempfile.mkdtemp()) / "serve.log"
with log.open("w") as output:
    server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
try:
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None:
            sys.exit(f"{' '.join(command)} exited with status {server.returncode}:\n{log.read_text()}")
        try:
            health = json.loads(get(f"{base}/health")[1])
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"{' '.join(command)}: no answer on /health within 180 s:\n{log.read_text()}")
            time.sleep(0.5)
    print(f"{' '.join(command)}: GET /health -> {json.dumps(health)} after {time.perf_counter() - start:.1f}s")
    assert "image" in health["models"], health

    photo = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(photo, "JPEG")
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{base}/predict/image", data=body,
                                     headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        answer = json.loads(reply.read())
    probabilities = answer["probabilities"]
    assert answer["category"] == max(probabilities, key=probabilities.get), answer
    assert abs(sum(probabilities.values()) - 1) < 1e-4, probabilities
    print(f"POST /predict/image -> {answer['category']} ({probabilities[answer['category']]:.3f}), "
          f"{len(probabilities)} probabilities summing to 1")

    media_type, page = get(f"{base}/")
    assert media_type.startswith("text/html") and "<form" in page, (media_type, page[:200])
    print(f"GET / -> the page ({len(page)} characters of {media_type})")

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

step "OK: $IMAGE ($TARGET) built and smoke-tested in $(elapsed $((SECONDS - START)))"
