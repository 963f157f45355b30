#!/usr/bin/env bash
# get_lm_eval_wheels.sh [DIR] — lm-evaluation-harness and the packages it
# needs that the device image lacks, as wheels for an offline
# `pip install --no-index` there (scripts/device_hf.sh; docs/huggingface.md).
# The device's image (Python 3.12) already holds torch, transformers,
# tokenizers, huggingface-hub, accelerate, peft, pandas, pyarrow, scipy,
# scikit-learn, sacrebleu, lxml, xxhash, aiohttp, jinja2, pyyaml, tqdm, ...;
# what it lacks is fetched here, each pinned, without dependencies. Pure
# Python source distributions (sqlitedict, rouge-score, word2number) are built
# into wheels here. Idempotent: skips a package whose wheel is there.
# Needs pip and a package registry; writes DIR (default .wheels/lm_eval).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.wheels/lm_eval}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
# name==version: lm-eval 0.4.13 and its missing requirements (base, no extras)
PKGS=(
    lm-eval==0.4.13
    datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0
    pytablewriter==1.2.1 dataproperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5
    tcolorpy==0.1.7 typepy==1.3.5 chardet==6.0.0.post1
    rouge-score==0.1.2 nltk==3.10.4 defusedxml==0.7.1 sqlitedict==2.1.0 word2number==1.1 more-itertools==11.2.1
    pytz==2026.6 python-dateutil==2.9.0.post0
)
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for spec in "${PKGS[@]}"; do
    name=${spec%%==*} ver=${spec##*==}
    norm=$(tr 'A-Z-' 'a-z_' <<<"$name")
    if compgen -G "$DIR/${norm}-${ver}-*.whl" >/dev/null; then continue; fi
    echo "wheels: $spec"
    if ! "$PY" -m pip download -q --disable-pip-version-check --no-deps "${PLAT[@]}" -d "$DIR" "$spec" 2>/dev/null; then
        # a source distribution only: build a (pure Python) wheel of it
        "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$DIR" "$spec"
    fi
done
du -sh "$DIR"
