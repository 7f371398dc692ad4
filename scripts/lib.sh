# Shared helpers for the setup scripts (sourced, not run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf '\033[1;34m[leadgrid]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[leadgrid] %s\033[0m\n' "$*" >&2; exit 1; }

APT_UPDATED=0
# apt_install PKG... : install missing Debian packages, or print the exact command without root.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else
      die "missing system packages: ${missing[*]}. Run this once, then retry:
    sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    fi
  fi
  command -v apt-get >/dev/null || die "no apt-get here; install these packages yourself: ${missing[*]}"
  say "installing system packages: ${missing[*]}"
  if [ "$APT_UPDATED" -eq 0 ]; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
