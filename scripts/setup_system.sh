#!/usr/bin/env bash
# Install the system packages audiosep needs (FluidSynth + a GM soundfont for `audiosep synth`,
# ffmpeg/ffprobe for museval's import chain, headless Chromium for the listening-report test)
# when they are missing. Idempotent: a no-op when everything is present. Never fails the build: when it cannot install, it says what to do in
# one line and the features that need the package are skipped or refused with a clear message.
#
#   scripts/setup_system.sh              # what the package and its tests need
#   scripts/setup_system.sh soundfonts   # also the training soundfonts of recipes/piano_violin
#                                        # (and TimGM6mb, its unseen-timbre check)
set -u
missing=()
command -v fluidsynth >/dev/null 2>&1 || missing+=(fluidsynth)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || missing+=(fluid-soundfont-gm)
{ command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1; } || missing+=(ffmpeg)
# headless Chromium: the test that renders `audiosep report` pages (skipped without it)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${1:-}" = soundfonts ]; then
    [ -f /usr/share/sounds/sf3/FluidR3Mono_GM.sf3 ] || missing+=(fluidr3mono-gm-soundfont)
    [ -f /usr/share/sounds/sf2/sf_GMbank.sf2 ] || missing+=(csound-soundfont)
    [ -f /usr/share/sounds/sf2/OPL-3_FM_128M.sf2 ] || missing+=(opl3-soundfont)
    [ -f /usr/share/sounds/sf2/TimGM6mb.sf2 ] || missing+=(timgm6mb-soundfont)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "audiosep setup: missing ${missing[*]}; install them (e.g. 'sudo apt-get install ${missing[*]}') — continuing without them." >&2
    exit 0
fi
echo "audiosep setup: apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
    echo "audiosep setup: apt-get could not install ${missing[*]}; install them by hand — continuing without them." >&2
fi
exit 0
