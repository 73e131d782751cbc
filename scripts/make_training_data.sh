#!/usr/bin/env bash
# Make our training data: fetch the listed photos, then synthesise rain, snow and haze pairs.
# Writes data/photos/ and data/synth/ (git-ignored); data/synth/synth.json records everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_train_photos.sh data/photos
# 18 photos -> 14 for training, 4 held out for validation (split by photo, seed 0);
# per photo 40 crops of 160 px for each weather type, and 8 clean pairs (input = ground truth).
python3 -m unweather.cli synth data/photos -o data/synth --weather rain snow haze \
    --crops 40 --size 160 --seed 0 --valid-fraction 0.2 --clean-pairs 8
