#!/usr/bin/env bash
# Train the models that ship in the package: three single-weather teachers, then the two-stage students
# (KC with CKT, then KE) `fast` (student_small: the runs nomcr_fast, fast_wide, fast_full, fast_recolour) and
# `quality` (student_base: student_quality, student_quality_more, student_quality_polish, quality_wide,
# quality_haze), and the other rows of the quality table (student_fast: the same two-stage student_small with
# MCR; direct_fast: trained without teachers). `ablations`: the haze head alone (fast_haze), with fresh
# haze but no recolouring (fast_resynth), and fast_recolour with balanced weathers (fast_balanced), README
# "Default models".
#
#   bash scripts/train_default_models.sh [all|lanes|teachers|fast|quality|baselines|ablations|corpus|ship|RUN...]
#
# Idempotent and resumable: a run whose output exists is skipped; a run directory holding a checkpoint is
# continued with --resume (stop any run with Ctrl-C or SIGINT: it saves a checkpoint first). Run
# directories go to data/runs/<run>/ and networks to data/models/ (both git-ignored); `ship` copies the
# students into unweather/weights/ and the small run records into training_runs/.
#
# Needs data/synth from scripts/make_training_data.sh. On a 2-core CPU, two jobs of one thread each run
# faster together than one job on two threads, so `lanes` (the default) runs two queues side by side.
set -euo pipefail
cd "$(dirname "$0")/.."

META=${META:-data/synth}
RUNS=${RUNS:-data/runs}
MODELS=${MODELS:-data/models}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# Lengths (steps). Changing one after a run started makes --resume refuse it: use a new run name.
# Sized for about 100 minutes of a 2-core machine shared with other work. Measured with one-thread lanes:
# teacher ~2 steps/s; student_small ~2-5 steps/s in KC and ~6-15 in KE; student_base ~1 step/s.
TEACHER_STEPS=${TEACHER_STEPS:-3000}
HAZE_TEACHER_STEPS=${HAZE_TEACHER_STEPS:-2500}
FAST_KC=${FAST_KC:-4000}
FAST_KE=${FAST_KE:-4000}
QUALITY_KC=${QUALITY_KC:-1500}
QUALITY_KE=${QUALITY_KE:-1500}
# More KE steps for the quality student, from where student_quality ended (at a lower peak lr), then a
# last KE without the contrastive term (measured: it costs PSNR at this scale, see README "Default models").
QUALITY_MORE_KE=${QUALITY_MORE_KE:-3000}
QUALITY_POLISH_KE=${QUALITY_POLISH_KE:-3000}
# Students train on 64 px crops (2.25x cheaper than the preset's 96) to fit the time.
STUDENT_CROP=${STUDENT_CROP:-64}
HAZE_STEPS=${HAZE_STEPS:-3000}
HAZE_LR_SCALE=${HAZE_LR_SCALE:-20}
QUALITY_HAZE_STEPS=${QUALITY_HAZE_STEPS:-1500}
BALANCED_STEPS=${BALANCED_STEPS:-2000}
COMMON=(--preset cpu --threads 1 --no-progress)
# The two-stage students' loss settings on top of the cpu preset (read when each student starts).
STUDENTS_YAML=scripts/default_students.yaml

mkdir -p "$RUNS" "$MODELS"

# run NAME ARGS...: train into $MODELS/NAME.safetensors with run directory $RUNS/NAME, resuming if it can.
run() {
    local name=$1
    shift
    local out="$MODELS/$name.safetensors" dir="$RUNS/$name"
    if [[ -f "$out" ]]; then
        echo "[$(date -u +%H:%M:%S)] $name: done ($out)"
        return 0
    fi
    local resume=()
    [[ -f "$dir/last.json" ]] && resume=(--resume)
    mkdir -p "$dir"
    echo "[$(date -u +%H:%M:%S)] $name: start ${resume[*]}"
    python3 -m unweather.cli train "$@" --meta-dir "${RUN_META:-$META}" "${COMMON[@]}" -o "$out" --run-dir "$dir" "${resume[@]}" \
        >>"$dir/train.log" 2>&1
    echo "[$(date -u +%H:%M:%S)] $name: finished"
}

TEACHERS=(rain="$MODELS/teacher_rain.safetensors" snow="$MODELS/teacher_snow.safetensors"
          haze="$MODELS/teacher_haze.safetensors")

teacher_rain() { run teacher_rain teacher --weather rain --steps "$TEACHER_STEPS"; }
teacher_snow() { run teacher_snow teacher --weather snow --steps "$TEACHER_STEPS"; }
teacher_haze() { run teacher_haze teacher --weather haze --steps "$HAZE_TEACHER_STEPS"; }
# The shipped students: KC (T-pixel, PFE, PFV, SCR) then KE (G-pixel, HCR), contrast in the teachers' taps.
student_fast() {
    run student_fast student --model student_small --teachers "${TEACHERS[@]}" --mcr teacher --config "$STUDENTS_YAML" \
        --crop "$STUDENT_CROP" --kc-steps "$FAST_KC" --ke-steps "$FAST_KE"
}
student_quality() {
    run student_quality student --model student_base --teachers "${TEACHERS[@]}" --mcr teacher --config "$STUDENTS_YAML" \
        --crop "$STUDENT_CROP" --kc-steps "$QUALITY_KC" --ke-steps "$QUALITY_KE"
}
student_quality_more() {
    [[ -f "$MODELS/student_quality.safetensors" ]] || student_quality
    run student_quality_more student --model student_base --teachers "${TEACHERS[@]}" --mcr teacher \
        --config "$STUDENTS_YAML" --crop "$STUDENT_CROP" --kc-steps 0 --ke-steps "$QUALITY_MORE_KE" --lr 2e-4 \
        --init "$MODELS/student_quality.safetensors"
}
student_quality_polish() {
    [[ -f "$MODELS/student_quality_more.safetensors" ]] || student_quality_more
    run student_quality_polish student --model student_base --teachers "${TEACHERS[@]}" --mcr none \
        --config "$STUDENTS_YAML" --crop "$STUDENT_CROP" --kc-steps 0 --ke-steps "$QUALITY_POLISH_KE" --lr 1e-4 \
        --init "$MODELS/student_quality_more.safetensors"
}
# A last stage on 128 px crops (the validation frames are 160 px): L1 to the ground truth, so the pooled
# global path sees most of a frame's haze; 64 px crops left both students below the dark channel prior on haze.
WIDE_CROP=${WIDE_CROP:-128}
FAST_WIDE_STEPS=${FAST_WIDE_STEPS:-2000}
QUALITY_WIDE_STEPS=${QUALITY_WIDE_STEPS:-1200}
fast_wide() {
    [[ -f "$MODELS/nomcr_fast.safetensors" ]] || nomcr_fast
    run fast_wide student --model student_small --direct --crop "$WIDE_CROP" --kc-steps 0 \
        --ke-steps "$FAST_WIDE_STEPS" --lr 1e-4 --init "$MODELS/nomcr_fast.safetensors"
}
# Then whole 160 px frames with plain L1 (no per-weather balancing, so haze's larger errors weigh more):
# the haze gap to the dark channel prior narrowed by 0.4 dB more, rain and snow moved by 0.2 dB.
FAST_FULL_STEPS=${FAST_FULL_STEPS:-1500}
fast_full() {
    [[ -f "$MODELS/fast_wide.safetensors" ]] || fast_wide
    run fast_full student --model student_small --direct --crop 160 --kc-steps 0 --ke-steps "$FAST_FULL_STEPS" \
        --lr 5e-5 --set loss.pixel_balance=none --init "$MODELS/fast_wide.safetensors"
}
# The haze head (explicit inversion of the scattering model) added to a trained student, on whole 160 px
# frames: haze_run NAME ARCH INIT STEPS [ARGS...]. The head's new layers learn HAZE_LR_SCALE times faster.
haze_run() {
    local name=$1 arch=$2 init=$3 steps=$4
    shift 4
    [[ -f "$MODELS/$init.safetensors" ]] || "$init"
    run "$name" student --model "$arch" --direct --crop 160 --kc-steps 0 --ke-steps "$steps" --lr 1e-4 \
        --set 'model.options={haze_head: true}' --set "optim.lr_scale={haze: $HAZE_LR_SCALE}" "$@" \
        --init "$MODELS/$init.safetensors"
}
# Haze rendered afresh each step on a recoloured ground truth (clean pairs recoloured alike).
FRESH=(--set 'data.resynth=[haze]' --set data.resynth_recolour=true)
fast_recolour() { haze_run fast_recolour student_small fast_full "$HAZE_STEPS" --set loss.pixel_balance=none "${FRESH[@]}"; }
quality_haze() { haze_run quality_haze student_base quality_wide "$QUALITY_HAZE_STEPS" "${FRESH[@]}"; }
# Ablations: the head alone, fresh haze without recolouring, and fast_recolour with each weather's pixel
# loss divided by its input error (the preset's balance).
fast_haze() { haze_run fast_haze student_small fast_full "$HAZE_STEPS" --set loss.pixel_balance=none; }
fast_resynth() {
    haze_run fast_resynth student_small fast_full "$HAZE_STEPS" --set loss.pixel_balance=none --set 'data.resynth=[haze]'
}
fast_balanced() { haze_run fast_balanced student_small fast_full "$BALANCED_STEPS" "${FRESH[@]}"; }
quality_wide() {
    [[ -f "$MODELS/student_quality_polish.safetensors" ]] || student_quality_polish
    run quality_wide student --model student_base --direct --crop "$WIDE_CROP" --kc-steps 0 \
        --ke-steps "$QUALITY_WIDE_STEPS" --lr 1e-4 --init "$MODELS/student_quality_polish.safetensors"
}
# Baselines of the quality table, for the fast student: direct training for the same number of steps,
# and the two-stage student without the contrastive terms.
direct_fast() {
    run direct_fast student --model student_small --direct --crop "$STUDENT_CROP" --kc-steps "$FAST_KC" --ke-steps "$FAST_KE"
}
nomcr_fast() {
    run nomcr_fast student --model student_small --teachers "${TEACHERS[@]}" --mcr none --config "$STUDENTS_YAML" \
        --crop "$STUDENT_CROP" --kc-steps "$FAST_KC" --ke-steps "$FAST_KE"
}

# The corpus runs: photos of many packages (scripts/corpus.tsv, fetched by name), weather rendered afresh every
# step in two renderer styles at every intensity with the camera on top (the third style is kept for
# evaluation), a third of each batch clean, validated on the photos of other packages (whole 640x360
# frames; a checkpoint loses a dB of score for each dB its clean frames fall below 40). The students start
# from the shipped ones, made grid-free (bilinear up-sampling from the mean of their shuffle phases,
# phase-balanced outputs, a gated and bounded haze gain).
CORPUS=${CORPUS:-data/corpus}
CORPUS_META=${CORPUS_META:-data/corpus_meta}
FAST_CORPUS_STEPS=${FAST_CORPUS_STEPS:-3000}
QUALITY_CORPUS_STEPS=${QUALITY_CORPUS_STEPS:-1500}
corpus_data() {
    python3 scripts/fetch_corpus.py "$CORPUS"
    python3 -m unweather.training.corpus "$CORPUS" "$CORPUS_META"
}
GRID_FREE='model.options={haze_head: true, upsample: bilinear, phase_balance: true, haze_gate: true}'
CORPUS_SET=(--set 'data.resynth=[rain, snow, haze]' --set 'data.render_styles=[particles, noise]' --set data.camera=true
            --set data.clean_per_batch=6 --set data.val_max_pairs=36 --set data.val_crop=0 --set log.clean_floor=40
            --set loss.pixel_balance=none --set "$GRID_FREE" --set 'optim.lr_scale={haze: 5}')
# corpus_run NAME ARCH INIT CROP STEPS [ARGS...]
corpus_run() {
    local name=$1 arch=$2 init=$3 crop=$4 steps=$5
    shift 5
    [[ -f $CORPUS_META/prepare.json ]] || corpus_data
    RUN_META=$CORPUS_META run "$name" student --model "$arch" --direct --crop "$crop" --kc-steps 0 --ke-steps "$steps" \
        --lr 2e-4 "${CORPUS_SET[@]}" --init "$init" "$@"
}
fast_corpus() { corpus_run fast_corpus student_small unweather/weights/fast.safetensors 160 "$FAST_CORPUS_STEPS"; }
quality_corpus() { corpus_run quality_corpus student_base unweather/weights/quality.safetensors 128 "$QUALITY_CORPUS_STEPS"; }
# Then night scenes lit by windows and lamps (15 % of samples, clean and weather): the corpus has few night
# photos, and fast_corpus darkened a night city's lit windows as if they were snow.
# It starts from FAST_NIGHT_INIT: the first session took fast_corpus's best validated checkpoint (step 500,
# copied to $MODELS/fast_corpus_step500.safetensors), as the later ones had lost haze on the cross-source set.
FAST_NIGHT_STEPS=${FAST_NIGHT_STEPS:-600}
FAST_NIGHT_INIT=${FAST_NIGHT_INIT:-$MODELS/fast_corpus.safetensors}
fast_night() {
    [[ -f "$FAST_NIGHT_INIT" ]] || fast_corpus
    RUN_META=$CORPUS_META run fast_night student --model student_small --direct --crop 160 --kc-steps 0 \
        --ke-steps "$FAST_NIGHT_STEPS" --lr 5e-5 "${CORPUS_SET[@]}" --set data.night=0.15 \
        --init "$FAST_NIGHT_INIT"
}
# Half of each batch clean (12 of 24): the shipped fast darkens a real night city's lit windows by 10 levels
# (fast_night's synthetic night lights made it 20). Starts from the shipped fast.
FAST_CLEAN_STEPS=${FAST_CLEAN_STEPS:-600}
fast_clean() {
    [[ -f $CORPUS_META/prepare.json ]] || corpus_data
    RUN_META=$CORPUS_META run fast_clean student --model student_small --direct --crop 160 --kc-steps 0 \
        --ke-steps "$FAST_CLEAN_STEPS" --lr 5e-5 "${CORPUS_SET[@]}" --set data.clean_per_batch=12 \
        --init unweather/weights/fast.safetensors
}
# Lit windows added at the scene's own exposure to 30 % of samples (clean and weather; `lit_scene`): small bright
# lights that are scene content, on scenes that are not dark. Starts from the shipped fast.
FAST_LIGHTS_STEPS=${FAST_LIGHTS_STEPS:-600}
fast_lights() {
    [[ -f $CORPUS_META/prepare.json ]] || corpus_data
    RUN_META=$CORPUS_META run fast_lights student --model student_small --direct --crop 160 --kc-steps 0 \
        --ke-steps "$FAST_LIGHTS_STEPS" --lr 5e-5 "${CORPUS_SET[@]}" --set data.lights=0.3 \
        --init unweather/weights/fast.safetensors
}
# Teachers on the corpus: each starts from the shipped quality (all weathers) and specialises on its own weather,
# rendered afresh in the two training styles with the camera on top (a teacher sees no clean pairs). For the
# two-stage students on the corpus (KC from these teachers, then KE).
TEACHER_CORPUS_STEPS=${TEACHER_CORPUS_STEPS:-1000}
teacher_corpus() {
    local weather=$1 kept=training_runs/teacher_${1}_corpus/teacher.safetensors
    # A finished teacher is kept in the repository (fp16): a fresh machine starts from it instead of retraining.
    if [[ -f $kept && ! -f $MODELS/teacher_${weather}_corpus.safetensors ]]; then
        cp "$kept" "$MODELS/teacher_${weather}_corpus.safetensors"
    fi
    [[ -f $CORPUS_META/prepare.json ]] || corpus_data
    RUN_META=$CORPUS_META run "teacher_${weather}_corpus" teacher --weather "$weather" --steps "$TEACHER_CORPUS_STEPS" \
        --crop 128 --lr 1e-4 --set "data.resynth=[$weather]" --set 'data.render_styles=[particles, noise]' \
        --set data.camera=true --set data.val_max_pairs=36 --set data.val_crop=0 --set loss.pixel_balance=none \
        --set "$GRID_FREE" --set 'optim.lr_scale={haze: 5}' --init "$(quality_corpus_file)"
}
teacher_rain_corpus() { teacher_corpus rain; }
teacher_snow_corpus() { teacher_corpus snow; }
teacher_haze_corpus() { teacher_corpus haze; }
# The two-stage students on the corpus: KC from the three corpus teachers (CKT into their taps, SCR), then KE
# (HCR), starting from the shipped students, the corpus data as above (a third of each batch clean).
CORPUS_TEACHERS=(rain="$MODELS/teacher_rain_corpus.safetensors" snow="$MODELS/teacher_snow_corpus.safetensors"
                 haze="$MODELS/teacher_haze_corpus.safetensors")
FAST_KD_KC=${FAST_KD_KC:-2000}
FAST_KD_KE=${FAST_KD_KE:-3000}
QUALITY_KD_KC=${QUALITY_KD_KC:-1500}
QUALITY_KD_KE=${QUALITY_KD_KE:-2000}
# kd_corpus NAME ARCH INIT CROP KC KE
kd_corpus() {
    local name=$1 arch=$2 init=$3 crop=$4 kc=$5 ke=$6 weather
    for weather in rain snow haze; do
        [[ -f $MODELS/teacher_${weather}_corpus.safetensors ]] || teacher_corpus "$weather"
    done
    RUN_META=$CORPUS_META run "$name" student --model "$arch" --teachers "${CORPUS_TEACHERS[@]}" --mcr teacher \
        --config "$STUDENTS_YAML" --crop "$crop" --kc-steps "$kc" --ke-steps "$ke" --lr 1e-4 "${CORPUS_SET[@]}" \
        --init "$init"
}
fast_kd() { kd_corpus fast_kd student_small unweather/weights/fast.safetensors 128 "$FAST_KD_KC" "$FAST_KD_KE"; }
quality_kd() { kd_corpus quality_kd student_base "$(quality_corpus_file)" 96 "$QUALITY_KD_KC" "$QUALITY_KD_KE"; }
# Heavy haze stayed 4-5 dB below the dark channel prior: the haze head adds the prior's own gain, scaled by a
# learned global weight that starts at 0 (haze_prior), from the shipped fast.
FAST_PRIOR_STEPS=${FAST_PRIOR_STEPS:-1000}
PRIOR_SET=(--set 'model.options={haze_head: true, upsample: bilinear, phase_balance: true, haze_gate: true, haze_prior: true}')
# More checkpoints to choose from: validated every 125 steps, the best 5 kept.
DENSE_VAL=(--set schedule.val_every_steps=125 --set log.keep_best=5)
fast_prior() {
    corpus_run fast_prior student_small unweather/weights/fast.safetensors 160 "$FAST_PRIOR_STEPS" \
        "${PRIOR_SET[@]}"
}
# The prior's weight barely moved in fast_prior (|w| 0.1 after 1000 steps): 10x its learning rate, and more
# checkpoints to choose from (validated every 125 steps, the best 5 kept).
fast_prior_fast_lr() {
    corpus_run fast_prior_lr student_small unweather/weights/fast.safetensors 160 "$FAST_PRIOR_STEPS" \
        "${PRIOR_SET[@]}" \
        --set 'optim.lr_scale={haze.prior: 50, haze: 5}' "${DENSE_VAL[@]}"
}
# The learned weight stayed small in both: start it at 0.7 instead (the prior's gain mostly on, the network to
# learn where it is wrong). The init is the shipped fast with that one weight added.
fast_prior_on() {
    [[ -f "$MODELS/fast_prior_init.safetensors" ]] || python3 scripts/prior_init.py unweather/weights/fast.safetensors \
        0.7 "$MODELS/fast_prior_init.safetensors"
    corpus_run fast_prior_on student_small "$MODELS/fast_prior_init.safetensors" 160 "$FAST_PRIOR_STEPS" \
        "${PRIOR_SET[@]}" \
        --set 'optim.lr_scale={haze.prior: 50, haze: 5}' "${DENSE_VAL[@]}"
}
# 500 more corpus steps from `fast` (the fast_prior runs) were better on clean, night, light and medium weather:
# the same from `quality`, validated every 125 steps, the best 5 kept.
QUALITY_MORE_STEPS=${QUALITY_MORE_STEPS:-1000}
# The quality shipped before the soup (quality_corpus's step 1250), from the repository's history.
QUALITY_CORPUS_COMMIT=1525bb7c9556fb861131671ae3862f57766fe122
quality_corpus_file() {
    local file="$MODELS/quality_corpus_shipped.safetensors"
    [[ -f $file ]] || git show "$QUALITY_CORPUS_COMMIT:unweather/weights/quality.safetensors" >"$file"
    echo "$file"
}
quality_more() {
    corpus_run quality_more student_base "$(quality_corpus_file)" 128 "$QUALITY_MORE_STEPS" \
        "${DENSE_VAL[@]}"
}
# The shipped quality: the mean of the weights of the quality before it and quality_more's steps 875 (its best
# validated) and 250 (its best on clean frames), chosen on the cross-source set among seven averages.
quality_soup() {
    [[ -f "$MODELS/quality_more.safetensors" ]] || quality_more
    [[ -f "$MODELS/quality_soup.safetensors" ]] && return 0
    python3 scripts/average_weights.py "$MODELS/quality_soup.safetensors" "$(quality_corpus_file)" \
        "$RUNS"/quality_more/best/step0000875-*.safetensors "$RUNS"/quality_more/best/step0000250-*.safetensors
}
# quality_more for `fast`: 1000 more corpus steps from it, validated every 125, the best 5 kept.
FAST_MORE_STEPS=${FAST_MORE_STEPS:-1000}
fast_more() {
    corpus_run fast_more student_small unweather/weights/fast.safetensors 160 "$FAST_MORE_STEPS" \
        "${DENSE_VAL[@]}"
}
# The haze heads' learned airlight was 0.8 on heavy haze and their gain 1.5-1.9 where the dark channel prior
# applies 3-10; inverting the veil with the image's own airlight (haze_dcp: He et al.'s estimate, in the graph)
# scored 18.3 dB on heavy haze with a strength of 0.95 and 27 on medium with 0.5. The strength is learned per
# image (a global weight from the haze statistics); the gain bound goes to 10 (t down to 0.1, as the prior's).
DCP_STEPS=${DCP_STEPS:-1000}
DCP_OPTIONS=(--set 'model.options={haze_head: true, upsample: bilinear, phase_balance: true, haze_gate: true, haze_dcp: true, haze_max_gain: 10.0}')
DCP_SET=("${DCP_OPTIONS[@]}" --set 'optim.lr_scale={haze.prior: 100, haze: 5}')
fast_dcp() {
    corpus_run fast_dcp student_small unweather/weights/fast.safetensors 160 "$DCP_STEPS" "${DCP_SET[@]}" "${DENSE_VAL[@]}"
}
quality_dcp() {
    corpus_run quality_dcp student_base unweather/weights/quality.safetensors 128 "$DCP_STEPS" "${DCP_SET[@]}" \
        "${DENSE_VAL[@]}"
}
# Trained end to end the strength stayed low (0.3-0.5 on heavy haze, where 0.8-0.95 restores best): it is fitted
# alone first (scripts/fit_haze_strength.py: the prior's own PSNR at each strength on rendered training frames),
# then kept fixed with the encoder that feeds it while the rest of the network learns around it.
FROZEN_ENCODER='haze.prior: 0, stem: 0, down1: 0, enc1: 0, down2: 0, enc2: 0, down3: 0, enc3: 0, context.reduce: 0'
# dcp_fit_run NAME ARCH INIT CROP [FROZEN...]: the strength fitted on INIT, then the rest trained around it.
dcp_fit_run() {
    local name=$1 arch=$2 init=$3 crop=$4 frozen=${5:-}
    [[ -f "$MODELS/${name}_init.safetensors" ]] || python3 scripts/fit_haze_strength.py "$init" "$MODELS/${name}_init.safetensors"
    corpus_run "$name" "$arch" "$MODELS/${name}_init.safetensors" "$crop" "$DCP_STEPS" "${DCP_OPTIONS[@]}" \
        --set "optim.lr_scale={$FROZEN_ENCODER$frozen, haze: 5}" "${DENSE_VAL[@]}"
}
# student_small has no residual blocks at full size (enc0 is empty).
fast_dcp_fit() { dcp_fit_run fast_dcp_fit student_small unweather/weights/fast.safetensors 160; }
quality_dcp_fit() { dcp_fit_run quality_dcp_fit student_base unweather/weights/quality.safetensors 128 ", enc0: 0"; }
# quality_kd led on light and medium rain and snow but edited clean frames (39.4 dB, `quality` 50.7): the corpus
# runs' plain L1 with a third of each batch clean, from it.
QUALITY_KD_POLISH_STEPS=${QUALITY_KD_POLISH_STEPS:-1000}
quality_kd_polish() {
    [[ -f "$MODELS/quality_kd.safetensors" ]] || quality_kd
    corpus_run quality_kd_polish student_base "$MODELS/quality_kd.safetensors" 96 "$QUALITY_KD_POLISH_STEPS"
}
# The video student: the frame student (VIDEO_FRAME, default the shipped fast) frozen, its temporal fusion
# trained on clips cut from the corpus photos (still, pan, zoom, shake, cuts) with weather drawn afresh
# every frame, validated on clips of the validation photos.
VIDEO_FRAME=${VIDEO_FRAME:-unweather/weights/fast.safetensors}
VIDEO_STEPS=${VIDEO_STEPS:-1500}
VIDEO_LONG_STEPS=${VIDEO_LONG_STEPS:-600}
VIDEO_RESET_STEPS=${VIDEO_RESET_STEPS:-450}
VIDEO_RESET_LONG_STEPS=${VIDEO_RESET_LONG_STEPS:-300}
# video_run NAME INIT ARGS...: train the video student NAME from INIT (a frame or video network), resuming.
video_run() {
    local name=$1 init=$2
    shift 2
    local out="$MODELS/$name.safetensors" dir="$RUNS/$name" resume=()
    [[ -f $CORPUS_META/prepare.json ]] || corpus_data
    if [[ -f "$out" ]]; then echo "[$(date -u +%H:%M:%S)] $name: done ($out)"; return 0; fi
    [[ -f "$dir/last_state.pt" ]] && resume=(--resume)
    mkdir -p "$dir"
    echo "[$(date -u +%H:%M:%S)] $name: start ${resume[*]}"
    python3 -m unweather.cli train video --images "$CORPUS_META/train/images" --val-images "$CORPUS_META/valid/clean" \
        --init "$init" -o "$out" --run-dir "$dir" --crop 96 --batch 4 --threads 1 "$@" "${resume[@]}" \
        >>"$dir/train.log" 2>&1
    echo "[$(date -u +%H:%M:%S)] $name: finished"
}
# 8 frames per clip: the input memory needs a few frames to show what stays.
video_memory() {
    video_run video_memory "$VIDEO_FRAME" --steps "$VIDEO_STEPS" --frames 8
}
# Continued on longer clips (12 frames), more of them clean, a stronger consistency term: flicker on
# still cameras and clean pans are what it is for.
VIDEO_REFIT=(--clean-share 0.3 --consistency 1.0 --val-every 150)
video_long() {
    [[ -f "$MODELS/video_memory.safetensors" ]] || video_memory
    video_run video_long "$MODELS/video_memory.safetensors" --steps "$VIDEO_LONG_STEPS" --lr 3e-4 --frames 12 \
        "${VIDEO_REFIT[@]}"
}
# The memory starts from the frame student's estimate after a reset (it started from the input, whose
# streaks the next frames then trusted: -4 dB after a cut); video_long refitted to that on 8-frame clips.
video_reset() {
    [[ -f "$MODELS/video_long.safetensors" ]] || video_long
    video_run video_reset "$MODELS/video_long.safetensors" --steps "$VIDEO_RESET_STEPS" --lr 3e-4 --frames 8 \
        "${VIDEO_REFIT[@]}"
}
# Then on 12-frame clips: time for the memory to move from the frame estimate to the input's median.
video_reset_long() {
    [[ -f "$MODELS/video_reset.safetensors" ]] || video_reset
    video_run video_reset_long "$MODELS/video_reset.safetensors" --steps "$VIDEO_RESET_LONG_STEPS" --lr 2e-4 \
        --frames 12 "${VIDEO_REFIT[@]}"
}
# Flicker on still cameras (2-5 levels, the clean clip's is 0): 16-frame clips, the consistency term 3x stronger.
VIDEO_STEADY_STEPS=${VIDEO_STEADY_STEPS:-300}
video_steady() {
    [[ -f "$MODELS/video_reset_long.safetensors" ]] || video_reset_long
    video_run video_steady "$MODELS/video_reset_long.safetensors" --steps "$VIDEO_STEADY_STEPS" --lr 1e-4 \
        --frames 16 --clean-share 0.3 --consistency 3.0 --val-every 100
}
# Still-camera flicker was 1.7-4.2 levels after video_steady (the clean clip's: 0): 24-frame clips, the consistency
# term 8x its default, from the shipped video.
VIDEO_CALM_STEPS=${VIDEO_CALM_STEPS:-300}
video_calm() {
    video_run video_calm unweather/weights/video.safetensors --steps "$VIDEO_CALM_STEPS" --lr 1e-4 \
        --frames 24 --clean-share 0.3 --consistency 4.0 --val-every 100
}
# The larger variant (GPUs, offline work): quality's frame network in video_reset_long's fusion, refitted.
VIDEO_QUALITY_STEPS=${VIDEO_QUALITY_STEPS:-300}
video_quality() {
    [[ -f "$MODELS/video_reset_long.safetensors" ]] || video_reset_long
    video_run video_quality "$MODELS/video_reset_long.safetensors" --model video_base \
        --frame unweather/weights/quality.safetensors --steps "$VIDEO_QUALITY_STEPS" --lr 1e-4 --frames 12 \
        "${VIDEO_REFIT[@]}"
}
# video_quality then on 16-frame clips with the stronger consistency term, as video_steady: its snow flickered.
video_quality_steady() {
    [[ -f "$MODELS/video_quality.safetensors" ]] || video_quality
    video_run video_quality_steady "$MODELS/video_quality.safetensors" --model video_base \
        --steps "$VIDEO_STEADY_STEPS" --lr 1e-4 --frames 16 --clean-share 0.3 --consistency 3.0 --val-every 100
}
corpus_lanes() {
    corpus_data
    fast_corpus &
    local one=$!
    quality_corpus &
    wait "$one" $!
}

ship() {
    python3 scripts/ship_default_models.py --models "$MODELS" --runs "$RUNS"
}

lanes() {
    # Lane 1 and lane 2 run side by side; each step of a lane waits only for what it needs.
    (teacher_rain && direct_fast && wait_for teacher_snow teacher_haze && student_fast && nomcr_fast && fast_wide \
        && fast_full && fast_recolour) &
    local one=$!
    (teacher_snow && teacher_haze && wait_for teacher_rain && student_quality && student_quality_more && student_quality_polish \
        && quality_wide && quality_haze) &
    local two=$!
    wait "$one" "$two"
}

# wait_for NAME...: block until those outputs exist (they are made by the other lane).
wait_for() {
    local name
    for name in "$@"; do
        while [[ ! -f "$MODELS/$name.safetensors" ]]; do sleep 20; done
    done
}

target=${1:-lanes}
shift || true
case "$target" in
    all) teacher_rain; teacher_snow; teacher_haze; student_fast; student_quality; student_quality_more
         student_quality_polish; quality_wide; quality_haze; direct_fast; nomcr_fast; fast_wide; fast_full
         fast_recolour; ship ;;
    lanes) lanes; ship ;;
    corpus) corpus_lanes ;;
    teachers) teacher_rain; teacher_snow; teacher_haze ;;
    fast) nomcr_fast; fast_wide; fast_full; fast_recolour ;;
    quality) student_quality; student_quality_more; student_quality_polish; quality_wide; quality_haze ;;
    ablations) fast_haze; fast_resynth; fast_balanced ;;
    baselines) student_fast; direct_fast ;;
    ship) ship ;;
    *) for name in "$target" "$@"; do "$name"; done ;;
esac
