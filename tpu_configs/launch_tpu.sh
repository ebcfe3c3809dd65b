#!/usr/bin/env bash
# Run `janusflow train` on every worker of a Cloud TPU VM slice.
#
#   tpu_configs/launch_tpu.sh [options] TPU_NAME ZONE PROJECT PLATFORM_FILE EXPERIMENT_SPEC GS_WORKDIR [--set k=v ...]
#
# e.g. tpu_configs/launch_tpu.sh my-v5p us-east5-a my-proj tpu_configs/v5p_64.py \
#          experiments/janusflow_1_3b.py:stage=2 gs://my-bucket/jf13b/stage2 \
#          --set train.init_from=gs://my-bucket/jf13b/stage1
#
# Steps (each a gcloud command on all workers, --worker=all):
#   1. sync  : this repo's files (git-tracked + untracked-not-ignored) as a tarball -> every worker
#              (or, with --ref REF, `git clone/fetch + checkout REF` on every worker)
#   2. install: pip install jax[tpu]==<local jax version> and `pip install -e '.[gcs]'` (gs:// workdirs)
#   3. train : the same `janusflow train --config SPEC --platform FILE --workdir GS_WORKDIR` on
#              every worker with the platform's flags (LIBTPU_INIT_ARGS ...) exported and
#              JANUSFLOW_DISTRIBUTED=1 when the slice has several hosts (parallel/mesh.py calls
#              jax.distributed.initialize(), which on TPU VMs needs no arguments). Each worker
#              logs to ~/janusflow_logs/<hostname>.log; this script logs to --log-dir.
#
# Options (anywhere on the line):
#   --dry-run          print the commands instead of running them
#   --ref REF          check out REF from --repo-url (default: this repo's `origin`) instead of
#                      copying the working tree
#   --repo-url URL     git URL for --ref
#   --jax-spec SPEC    pip requirement for JAX on the workers (default "jax[tpu]==<local version>")
#   --skip-sync, --skip-install   for relaunches
#   --detach           start training under nohup and return (default: stay attached, stream output)
#   --log-dir DIR      local logs (default logs/launch/<TPU_NAME>-<time>)
#   --remote-dir DIR   checkout on the workers (default ~/janusflow)
set -euo pipefail

usage() {
  sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

DRY_RUN=0; REF=""; REPO_URL=""; JAX_SPEC=""; SKIP_SYNC=0; SKIP_INSTALL=0; DETACH=0
LOG_DIR=""; REMOTE_DIR="~/janusflow"
POS=(); TRAIN_EXTRA=()
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --ref) REF="${2:?--ref needs a value}"; shift ;;
    --repo-url) REPO_URL="${2:?--repo-url needs a value}"; shift ;;
    --jax-spec) JAX_SPEC="${2:?--jax-spec needs a value}"; shift ;;
    --skip-sync) SKIP_SYNC=1 ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --detach) DETACH=1 ;;
    --log-dir) LOG_DIR="${2:?--log-dir needs a value}"; shift ;;
    --remote-dir) REMOTE_DIR="${2:?--remote-dir needs a value}"; shift ;;
    --set) TRAIN_EXTRA+=(--set "${2:?--set needs key=value}"); shift ;;
    -h|--help) usage 0 ;;
    --*) echo "launch_tpu.sh: unknown option $1" >&2; usage 2 ;;
    *) POS+=("$1") ;;
  esac
  shift
done
if ((${#POS[@]} != 6)); then
  echo "launch_tpu.sh: expected 6 arguments (TPU_NAME ZONE PROJECT PLATFORM_FILE EXPERIMENT_SPEC GS_WORKDIR), got ${#POS[@]}" >&2
  usage 2
fi
TPU_NAME=${POS[0]}; ZONE=${POS[1]}; PROJECT=${POS[2]}; PLATFORM=${POS[3]}; SPEC=${POS[4]}; WORKDIR=${POS[5]}

case "$WORKDIR" in
  gs://*) ;;
  *) echo "launch_tpu.sh: GS_WORKDIR must be a gs:// path (every host writes the same checkpoints), got $WORKDIR" >&2
     exit 2 ;;
esac
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PLATFORM_PATH=${PLATFORM%%:*}
PLATFORM_OPTS=""
[[ "$PLATFORM" == *:* ]] && PLATFORM_OPTS=":${PLATFORM#*:}"       # e.g. :micro_batch=8
if [[ ! -f "$PLATFORM_PATH" && -f "$REPO_ROOT/$PLATFORM_PATH" ]]; then PLATFORM_PATH="$REPO_ROOT/$PLATFORM_PATH"; fi
[[ -f "$PLATFORM_PATH" ]] || { echo "launch_tpu.sh: no platform file $PLATFORM_PATH" >&2; exit 2; }
PLATFORM_ABS=$(cd "$(dirname "$PLATFORM_PATH")" && pwd)/$(basename "$PLATFORM_PATH")
case "$PLATFORM_ABS" in
  "$REPO_ROOT"/*) PLATFORM_REL=${PLATFORM_ABS#"$REPO_ROOT"/} ;;  # the workers run from their checkout
  *) echo "launch_tpu.sh: the platform file must be inside the repo ($REPO_ROOT), got $PLATFORM_ABS" >&2; exit 2 ;;
esac

# The platform's flags and host count, read by the package itself (local python + janusflow).
read_platform() {
  PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" python3 - "$PLATFORM_ABS$PLATFORM_OPTS" <<'EOF'
import shlex, sys
from janusflow.perf.platforms import load_platform, shell_exports
p = load_platform(sys.argv[1])
print(f"HOSTS={p.hosts}")
print(f"PLATFORM_NAME={shlex.quote(p.name)}")
print(f"EXPORTS={shlex.quote(shell_exports(p).replace(chr(10), '; '))}")
EOF
}
PLATFORM_VARS=$(read_platform) || { echo "launch_tpu.sh: cannot load the platform $PLATFORM (see above)" >&2; exit 2; }
eval "$PLATFORM_VARS"
if [[ -z "$JAX_SPEC" ]]; then
  JAX_VERSION=$(python3 -c 'import jax; print(jax.__version__)' 2>/dev/null || true)
  JAX_SPEC="jax[tpu]${JAX_VERSION:+==$JAX_VERSION}"
fi
STAMP=$(date +%Y%m%d-%H%M%S)
LOG_DIR=${LOG_DIR:-logs/launch/$TPU_NAME-$STAMP}

GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE" --project="$PROJECT" --worker=all)

run() {  # run (or print) one command; output also goes to $LOG_DIR/<name>.log
  local name=$1; shift
  if ((DRY_RUN)); then
    local a out=""
    for a in "$@"; do
      if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+="$a "; else out+="${a@Q} "; fi
    done
    echo "${out% }"
    return 0
  fi
  mkdir -p "$LOG_DIR"
  echo ">>> $name: $*" | tee -a "$LOG_DIR/$name.log"
  "$@" 2>&1 | tee -a "$LOG_DIR/$name.log"
  return "${PIPESTATUS[0]}"
}

on_all() {  # a shell command on every worker
  local name=$1 cmd=$2
  run "$name" "${GCLOUD_TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --command="$cmd"
}

echo "# $PLATFORM_NAME ($HOSTS host(s)) <- $SPEC, workdir $WORKDIR" >&2

# 1. sync
if ((!SKIP_SYNC)); then
  if [[ -n "$REF" ]]; then
    REPO_URL=${REPO_URL:-$(git -C "$REPO_ROOT" remote get-url origin 2>/dev/null || true)}
    [[ -n "$REPO_URL" ]] || { echo "launch_tpu.sh: --ref needs --repo-url (no git origin)" >&2; exit 2; }
    on_all sync "set -e; if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR fetch --all --tags; \
else git clone $(printf %q "$REPO_URL") $REMOTE_DIR; fi; git -C $REMOTE_DIR checkout --force $(printf %q "$REF")"
  else
    TARBALL=${TMPDIR:-/tmp}/janusflow-src-$STAMP.tar.gz
    if ((DRY_RUN)); then
      echo "(cd $(printf %q "$REPO_ROOT") && git ls-files -z --cached --others --exclude-standard | tar -czf $TARBALL --null -T -)"
    else
      (cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard | tar -czf "$TARBALL" --null -T -)
    fi
    run sync "${GCLOUD_TPU[@]}" scp "$TARBALL" "$TPU_NAME:~/janusflow-src.tar.gz" "${WHERE[@]}"
    on_all sync "set -e; rm -rf $REMOTE_DIR; mkdir -p $REMOTE_DIR; tar -xzf ~/janusflow-src.tar.gz -C $REMOTE_DIR"
  fi
fi

# 2. install
if ((!SKIP_INSTALL)); then
  on_all install "set -e; cd $REMOTE_DIR; python3 -m pip install -q -U pip; \
python3 -m pip install -q $(printf %q "$JAX_SPEC") -f https://storage.googleapis.com/jax-releases/libtpu_releases.html; \
python3 -m pip install -q -e '.[gcs]'"
fi

# 3. train: the same command on every worker
TRAIN=(python3 -m janusflow.cli train --config "$SPEC" --platform "$PLATFORM_REL$PLATFORM_OPTS" --workdir "$WORKDIR"
       ${TRAIN_EXTRA[@]+"${TRAIN_EXTRA[@]}"})
TRAIN_Q=$(printf '%q ' "${TRAIN[@]}")
DIST=""
((HOSTS > 1)) && DIST="export JANUSFLOW_DISTRIBUTED=1; "
WORKER_LOG='~/janusflow_logs/$(hostname).log'
if ((DETACH)); then
  BODY="nohup $TRAIN_Q > $WORKER_LOG 2>&1 < /dev/null & echo started on \$(hostname)"
else
  BODY="$TRAIN_Q 2>&1 | tee $WORKER_LOG"
fi
ENV_PART=""
[[ -n "$EXPORTS" ]] && ENV_PART="$EXPORTS; "
on_all train "set -o pipefail; mkdir -p ~/janusflow_logs; cd $REMOTE_DIR; ${ENV_PART}${DIST}$BODY"
((DETACH)) && echo "# follow: ${GCLOUD_TPU[*]} ssh $TPU_NAME ${WHERE[*]} --command='tail -n 5 $WORKER_LOG'" >&2
exit 0
