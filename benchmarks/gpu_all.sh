#!/usr/bin/env bash
# Every benchmark on a GPU in one call, within a wall-time budget (docs/performance.md, "GPU").
#
#   bash benchmarks/gpu_all.sh [BUDGET_S]      # default 500 s; results in $W (default .gpu/), packed to
#                                              # $OUT/gpu_results.tgz when $OUT is set
#   QUICK=1 CAP_SCALE=8 JAX_PLATFORMS=cpu bash benchmarks/gpu_all.sh 3000   # smoke run of the same commands, CPU
#
# Sections run in order of priority, each under its own time cap cut to what is left of the budget, so a slow or
# hung one costs its cap and the rest still run; each writes $W/NAME.log, and $W/summary.md gets one row each.
# A section past its cap gets SIGTERM, then SIGKILL 15 s later (batch-fit releases its job lock on SIGTERM once the
# main thread leaves XLA; 5 s was too short in session 21).
# SKIP="a b" / ONLY="a b": leave out / run only the named sections (e.g. to rerun the ones that failed).
# Dataset section (when .ds/harmonics.cxi is carried): DS_CHUNK (patterns per chunk, default 16), DS_CHUNKS /
# DS_CAP (cold pass: chunks, cap s), DS2_CHUNKS / DS2_CAP (the warm pass, a fresh process resuming: its own
# chunks). LC_OVERRIDE, LS_CAP: chunk and cap of the 128^2 lockstep SH batch.
# A machine goes back 30 s after a call ends: a second call on the same warm machine (and its compilation
# cache) must be sent at once; session 23 lost its second call's budget to a fresh start.
# Carried wheels (.whl/: beartype, miepython, pinned equinox/optax/jaxtyping) are installed when present.
# AUTOTUNE=1: XLA's GEMM/conv autotuning on (off by default: shorter compilations; see below). Compiled
# programs go to jax's persistent cache (JAX_COMPILATION_CACHE_DIR, default /tmp/diffscat-jax-cache), so a
# rerun on the same machine (ONLY=...) skips most compilation.
set -u
BUDGET=${1:-500}
W=${W:-$PWD/.gpu}
PY=${PY:-python3}
QUICK=${QUICK:-0}
T0=$(date +%s)
mkdir -p "$W"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export XLA_PYTHON_CLIENT_PREALLOCATE=false # peak-memory readings; no 75 % grab at start
# compiled programs shared between sections and with a rerun on the same machine (XLA:GPU compiles ~6 s each)
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/diffscat-jax-cache}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
        export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
# AUTOTUNE=0 (default): XLA's GEMM/conv autotuning off (--xla_gpu_autotune_level=0), which shortens every
# compilation; kept only when a probe with it runs (an unknown flag aborts XLA). AUTOTUNE=1: XLA's default.
if [ "${AUTOTUNE:-0}" = 0 ] && [ "${JAX_PLATFORMS:-}" != cpu ]; then
    if XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" $PY -c 'import jax; print(jax.numpy.ones(3).sum())' \
        >/dev/null 2>&1; then
        export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"
    fi
fi
echo "XLA_FLAGS=${XLA_FLAGS:-}" >"$W/xla_flags.txt"
echo "| section | exit | seconds (cap) |" >"$W/summary.md"
echo "| --- | --- | --- |" >>"$W/summary.md"

sec() { # sec NAME CAP_S COMMAND...: run with a cap cut to the budget left; log to $W/NAME.log
    local name=$1 cap=$(($2 * ${CAP_SCALE:-1}))
    shift 2
    if [[ " ${SKIP:-} " == *" $name "* ]] || [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then
        echo "| $name | skipped: SKIP / ONLY | 0 |" >>"$W/summary.md"
        return
    fi
    local left=$((BUDGET - ($(date +%s) - T0)))
    ((cap > left)) && cap=$left
    if ((cap < 10)); then
        echo "| $name | skipped: budget spent | 0 |" >>"$W/summary.md"
        return
    fi
    local s=$(date +%s)
    timeout -k 15 "$cap" "$@" >"$W/$name.log" 2>&1
    local rc=$?
    echo "| $name | $rc$( ((rc == 124)) && echo ' (cap)') | $(($(date +%s) - s)) ($cap) |" >>"$W/summary.md"
    echo "===== $name: exit $rc, $(($(date +%s) - s)) s"
    tail -n "${TAIL:-14}" "$W/$name.log"
}

if ((QUICK)); then
    S=64 SF=48 SB=32 NB=4 NS=8 FMAXN=256 HN=2 HC=1 NE=4 LC=2
else
    S=128 SF=512 SB=64 NB=128 NS=512 FMAXN=1024 HN=3 HC=1 NE=12 LC=8
fi
LC=${LC_OVERRIDE:-$LC} # lockstep chunk of the 128^2 SH batch (bench_batch --chunk; it fits two chunks)

sec env 25 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1;
    $PY -c 'import jax, equinox, optax, jaxtyping; print(jax.__version__, jax.devices(), equinox.__version__,
    optax.__version__, jaxtyping.__version__)'; cat $W/xla_flags.txt"
# order: what no GPU run has measured yet first: issue 14's harmonic dataset on the GPU path (lockstep,
# started by the shipped network's harmonic head; session 21 timed only its first chunk), the GPU checks,
# issue 13's compiled SH lmax 6 at 512^2, training and inference of the 9-class network (issue 17), the SH
# batch at 128^2; then the rest.
# issue 14's harmonic dataset (when carried: DS=.ds holding harmonics.cxi from `diffscat simulate
# configs/dataset-harmonics.toml`, see docs/batch.md) through batch-fit as a user runs it, network-started, on
# the GPU path (lockstep "auto"); parts land in $W/ds and a capped run is finished elsewhere with --resume
DS=${DS:-.ds}
if [ -f "$DS/harmonics.cxi" ]; then
    mkdir -p "$W/ds"
    DSFIT=($PY -m diffscat batch-fit configs/batch-harmonics.toml --data "$DS/harmonics.cxi"
        -o "$W/ds/harmonics-results.h5" --set 'init.network="default"' --set "batch.chunk_size=${DS_CHUNK:-16}")
    resume() { [ -d "$W/ds/harmonics-results.h5.parts" ] && echo --resume; } # what an earlier pass left
    # cold: the first chunks compile (session 23: a chunk of 64 took 271 s on a cold cache); then a FRESH
    # process on the compilation cache the first left, as a long run's later processes (or a --resume) are:
    # its chunks are the steady-state rate (tracing included, XLA compilation mostly loaded from the cache)
    sec ds_harmonics ${DS_CAP:-300} "${DSFIT[@]}" --max-chunks "${DS_CHUNKS:-1}" $(resume)
    sec ds_harmonics_warm ${DS2_CAP:-200} "${DSFIT[@]}" --max-chunks "${DS2_CHUNKS:-2}" $(resume)
fi
sec test_gpu 120 env JAX_PLATFORMS="${JAX_PLATFORMS:-cuda,cpu}" $PY -m pytest -q -m gpu tests/test_gpu.py
sec fit_sh6_512 150 $PY benchmarks/bench_fit.py --size $SF --cases sh6 --patterns 3 --profile 40
TRAIN_S=$((QUICK ? 60 : 90))
rm -f "$W/gpu.eqx" "$W/gpu.eqx.json" "$W/gpu.eqx.state"
sec train $((TRAIN_S + 15)) $PY benchmarks/bench_train.py --out "$W/gpu.eqx" --budget $TRAIN_S \
    $( ((QUICK)) && echo --config configs/train-default.toml)
sec network_infer ${NI_CAP:-90} $PY benchmarks/bench_network.py --n-sim 0 --n-mie 4 --n-eval 0 --n-fit 0 \
    --out benchmarks/results/bench_network_gpu.json
# the lockstep path (fitting.lockstep_map, [batch] lockstep = "auto" is on on a GPU): a chunk's patterns fitted
# together, their fits merged into vmapped batches; the first chunk compiles, the second is the rate
sec batch_harmonics_ls ${LS_CAP:-170} $PY benchmarks/bench_batch.py --model harmonics --lmax 4 --init default --n $((2 * LC)) \
    --size $S --chunk $LC --lockstep on
sec batch_ellipsoid_ls 90 $PY benchmarks/bench_batch.py --model ellipsoid-auto --init default --n $((2 * LC)) \
    --size $SB --chunk $LC --lockstep on
sec fit_128 90 $PY benchmarks/bench_fit.py --size $S --cases ellipsoid,sh3
sec batch_harmonics 100 $PY benchmarks/bench_batch.py --model harmonics --lmax 4 --n $HN --size $S --chunk $HC \
    --lockstep off
# the shipped ellipsoid batch path (batch-fit configs/batch-ellipsoid.toml: fit_auto started by the network)
sec batch_ellipsoid_net 60 $PY benchmarks/bench_batch.py --model ellipsoid-auto --init default --n $NE --size $SB \
    --chunk $((NE / 4)) --lockstep off
sec forward 60 $PY benchmarks/bench_forward.py --sections grad memory batch --max-n $FMAXN \
    --repeats 3 $( ((QUICK)) && echo --quick)
sec propagating 25 $PY benchmarks/bench_propagating.py --radii 3,7 --n $((S * 2)) --repeats 3
sec batch_sphere 30 $PY benchmarks/bench_batch.py --model sphere --n $NS --size $S --chunk $((NS / 4))
sec fit_batch 40 $PY benchmarks/bench_fit_batch.py --size $SB --n $((NB / 2))
sec batch_ellipsoid 60 $PY benchmarks/bench_batch.py --model ellipsoid --n $((NB / 2)) --size $SB --chunk $((NB / 4))
# issue 17's A/B (network-started against multi-start fits, pattern by pattern, true class); resumable, so a
# capped pass leaves its rows in $W/network_ab.jsonl for a later pass (or a CPU run) to extend
sec network_ab ${AB_CAP:-120} env DIFFSCAT_MEMORY_BUDGET=12GiB $PY benchmarks/bench_network_ab.py \
    --n-harmonics $((QUICK ? 2 : 60)) --n-ellipsoids $((QUICK ? 1 : 20)) --poly-orientations $((QUICK ? 0 : 3)) \
    --out "$W/network_ab.jsonl" --cache-dir "$W/evalset-cache"

cp -r benchmarks/results "$W/results" 2>/dev/null
echo "total $(($(date +%s) - T0)) s of $BUDGET" >>"$W/summary.md"
if [ -n "${OUT:-}" ]; then
    rm -f "$W/gpu.eqx.state" # optimiser state: not needed to evaluate the model
    tar -czf "$OUT/gpu_results.tgz" -C "$W" . && cp "$W/summary.md" "$OUT/summary.md"
fi
cat "$W/summary.md"
