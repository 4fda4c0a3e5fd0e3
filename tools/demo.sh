#!/usr/bin/env bash
# shelbyfs end to end on a fresh Debian 12 machine, run from the repo root as root:
#   install deps -> build -> Fashion-MNIST to PNG ImageFolder -> pack -> serve with
#   nginx on loopback (range GET + WebDAV PUT) -> mount the manifest URL -> train a
#   small CNN from the mount, checkpointing into <mnt>/checkpoints -> check the
#   checkpoint on the server -> remount as a fresh machine and resume training.
#
# usage: bash tools/demo.sh [WORK_DIR]        (default /tmp/shelbyfs-demo)
# environment:
#   SHELBYFS_DEMO_DIR    work dir (same as the argument)
#   DEMO_COUNT           images to convert (default 10000)
#   DEMO_EPOCHS          training epochs (default 1)
#   DEMO_SAVE_EVERY      steps between checkpoints (default 50)
#   DEMO_RESUME_STEPS    steps trained after the resume (default 50)
#   DEMO_SKIP_DEPS=1     do not run tools/deps.sh
#   DEMO_MOUNT_OPTS      extra -o options for the mount (e.g. cache_size=256MiB)
# Everything started here (nginx, the mount) is stopped by the EXIT trap, even on failure.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${1:-${SHELBYFS_DEMO_DIR:-/tmp/shelbyfs-demo}}
COUNT=${DEMO_COUNT:-10000}
EPOCHS=${DEMO_EPOCHS:-1}
SAVE_EVERY=${DEMO_SAVE_EVERY:-50}
RESUME_STEPS=${DEMO_RESUME_STEPS:-50}
PY=/usr/bin/python3               # Debian's python, which has torch and torchvision
BUILD=$REPO/build
SHELBYFS=$BUILD/src/shelbyfs

IMAGES=$WORK/images
PACKED=$WORK/packed
MNT=$WORK/mnt
LOG=$WORK/shelbyfs.log
SPOOL=$WORK/spool
TRAIN_LOG=$WORK/train.log
URL_FILE=$WORK/server.url

SERVE_PID=
MOUNTED=0

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# PIDs of shelbyfs daemons serving $MNT (the daemon is our grandchild, so scan /proc).
daemon_pids() {
    local p
    for p in /proc/[0-9]*; do
        [[ -r $p/cmdline ]] || continue
        if tr '\0' '\n' <"$p/cmdline" 2>/dev/null | head -n1 | grep -q 'shelbyfs$' &&
           tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF "$MNT"; then
            echo "${p#/proc/}"
        fi
    done
}

is_mounted() { mountpoint -q "$MNT" 2>/dev/null; }

unmount() {
    local pids i
    pids=$(daemon_pids)
    if is_mounted; then
        fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -u -z "$MNT"
    fi
    for pid in $pids; do
        for ((i = 0; i < 100; i++)); do
            [[ -d /proc/$pid ]] || break
            sleep 0.1
        done
        [[ -d /proc/$pid ]] && { echo "demo: shelbyfs daemon $pid did not exit; killing it" >&2; kill -9 "$pid"; }
    done
    MOUNTED=0
}

stop_server() {
    if [[ -n $SERVE_PID ]]; then
        kill -TERM "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
        SERVE_PID=
    fi
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if ((MOUNTED)) || is_mounted; then unmount; fi
    stop_server
    if ((rc != 0)); then
        echo "demo: FAILED (exit $rc); work dir kept at $WORK" >&2
        [[ -s $LOG ]] && { echo "--- last lines of $LOG ---" >&2; tail -n 20 "$LOG" >&2; }
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- steps -------------------------------------------------------------------

deps() {
    if [[ ${DEMO_SKIP_DEPS:-0} == 1 ]]; then
        echo "skipped (DEMO_SKIP_DEPS=1)"
    else
        [[ -f $REPO/tools/deps.sh ]] || die "tools/deps.sh is missing"
        bash "$REPO/tools/deps.sh"
    fi
}

build() {
    [[ -f $BUILD/build.ninja ]] || meson setup "$BUILD" "$REPO"
    meson compile -C "$BUILD"
    "$SHELBYFS" --help >/dev/null 2>&1 || die "$SHELBYFS --help failed"
    echo "built $SHELBYFS"
}

dataset() {
    rm -rf -- "$IMAGES"
    "$PY" "$REPO/tools/fmnist_to_imagefolder.py" --count "$COUNT" --split train "$IMAGES"
    du -sh "$IMAGES" | awk '{print "images on disk: " $1}'
}

pack() {
    rm -rf -- "$PACKED"
    local t0=$SECONDS
    "$SHELBYFS" pack "$IMAGES" "$PACKED"
    echo "manifest (pack took $((SECONDS - t0))s):"
    "$PY" - "$PACKED/manifest.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
shard_bytes = sum(s['size'] for s in m['shards'])
print(f"  {len(m['samples'])} samples, {len(m['shards'])} shards, {shard_bytes / 2**20:.1f} MiB, "
      f"block size {m['block_size'] // 1024} KiB")
for s in m['shards'][:3]:
    print(f"  {s['name']}: {s['size'] / 2**20:.1f} MiB, {len(s['blocks'])} blocks")
if len(m['shards']) > 3:
    print(f"  ... and {len(m['shards']) - 3} more")
EOF
}

serve() {
    rm -f -- "$URL_FILE"
    "$PY" "$REPO/tools/serve.py" "$PACKED" --url-file "$URL_FILE" &
    SERVE_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $URL_FILE ]] && break
        kill -0 "$SERVE_PID" 2>/dev/null || die "nginx failed to start"
        sleep 0.1
    done
    [[ -s $URL_FILE ]] || die "nginx did not come up within 10s"
    BASE_URL=$(<"$URL_FILE")
    MANIFEST_URL=${BASE_URL}manifest.json
}

mount_fs() {
    if is_mounted; then
        echo "unmounting a leftover mount at $MNT"
        unmount
    fi
    mkdir -p "$MNT"
    # A spool of its own per mount: the second mount plays another machine.
    local spool=$SPOOL-$1
    rm -rf -- "$spool"
    local opts="log_file=$LOG,spool_dir=$spool${DEMO_MOUNT_OPTS:+,$DEMO_MOUNT_OPTS}"
    "$SHELBYFS" mount "$MANIFEST_URL" "$MNT" -o "$opts"
    MOUNTED=1
    is_mounted || die "mount returned but $MNT is not mounted"
    echo "mounted $MANIFEST_URL at $MNT (daemon pid $(daemon_pids | xargs)), checkpoints at ${BASE_URL}checkpoints/"
    ls "$MNT"
    echo "samples/: $(find "$MNT/samples" -mindepth 1 -maxdepth 1 | wc -l) class dirs;" \
         "shards/: $(find "$MNT/shards" -mindepth 1 -maxdepth 1 | wc -l) shards"
}

train() {
    "$PY" "$REPO/examples/train_fmnist.py" --data "$MNT/samples" --epochs "$EPOCHS" \
        --batch-size 64 --workers 2 --checkpoint-dir "$MNT/checkpoints/run1" \
        --save-every "$SAVE_EVERY" | tee "$TRAIN_LOG"
}

# The checkpoint as the server stores it: an object named by its XXH3-128.
show_checkpoint() {
    local ckpt=$MNT/checkpoints/run1/latest.pt hash object
    hash=$(getfattr --absolute-names --only-values -n user.shelbyfs.hash "$ckpt")
    object=$PACKED/checkpoints/objects/$hash
    [[ -f $object ]] || die "no object $object on the server"
    [[ $(xxhsum -H2 "$object" | cut -d' ' -f1) == "$hash" ]] || die "object $object does not hash to its name"
    cmp -s "$ckpt" "$object" || die "$ckpt differs from $object"
    echo "run1/latest.pt: $(stat -c %s "$ckpt") bytes, user.shelbyfs.hash=$hash," \
         "step $(getfattr --absolute-names --only-values -n user.step "$ckpt")"
    echo "on the server: ${BASE_URL}checkpoints/objects/$hash (xxhsum -H2 agrees, bytes equal)"
    echo "versions kept: $(ls "$MNT/checkpoints/.versions/run1/latest.pt" | wc -l) under checkpoints/.versions/run1/latest.pt/"
}

# A fresh mount (new spool: another machine) sees the checkpoint and resumes.
resume() {
    local last steps
    last=$(getfattr --absolute-names --only-values -n user.step "$MNT/checkpoints/run1/latest.pt")
    unmount
    mount_fs second
    steps=$((last + RESUME_STEPS))
    "$PY" "$REPO/examples/train_fmnist.py" --data "$MNT/samples" --batch-size 64 --workers 2 \
        --checkpoint-dir "$MNT/checkpoints/run1" --save-every "$SAVE_EVERY" --max-steps "$steps" |
        tee -a "$TRAIN_LOG"
    grep -q "^resumed from step=$last " "$TRAIN_LOG" || die "training did not resume from step $last"
    [[ $(getfattr --absolute-names --only-values -n user.step "$MNT/checkpoints/run1/latest.pt") == "$steps" ]] ||
        die "the resumed run did not save step $steps"
}

teardown() {
    unmount
    stop_server
    if grep -q 'ERROR' "$LOG" 2>/dev/null; then
        echo "errors in the daemon log:"; grep 'ERROR' "$LOG"
        return 1
    fi
    echo "unmounted $MNT and stopped nginx"
    # The daemon logs its cache and fetch counters when it unmounts.
    grep -o 'unmounted .*' "$LOG" 2>/dev/null | tail -n 1 | sed 's/^/daemon: /' || true
}

main() {
    [[ $(id -u) == 0 ]] || die "run as root (mounting and deps.sh need it)"
    cd "$REPO"
    mkdir -p "$WORK"
    local t0=$SECONDS
    step "1/9 install dependencies (tools/deps.sh)"; deps
    step "2/9 build (meson)";                         build
    step "3/9 Fashion-MNIST -> $COUNT PNGs";           dataset
    step "4/9 shelbyfs pack";                          pack
    step "5/9 serve $PACKED with nginx";               serve
    step "6/9 mount $MANIFEST_URL";                    mount_fs first
    step "7/9 train on $MNT/samples, checkpointing into $MNT/checkpoints/run1"; train
    step "8/9 the checkpoint on the server";           show_checkpoint
    step "9/9 remount as a fresh machine and resume";  resume
    step "teardown";                                    teardown
    step "done in $((SECONDS - t0))s (work dir: $WORK)"
}

main "$@"
