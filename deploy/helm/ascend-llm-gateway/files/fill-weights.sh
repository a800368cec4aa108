# Runs the operator's filler command ("$@") once per weights volume, whatever
# the number of replicas starting at once: the first takes the lock (an
# atomic mkdir in the volume, which NFS and CephFS keep atomic too), runs the
# command and leaves a marker; the others wait for the marker and exit 0. A
# lock older than FILL_LOCK_TIMEOUT seconds (a filler killed with its node)
# is taken over. Needs only sh (busybox's will do).
set -eu
mark="$MODEL_DIR/.ascend-llm-gateway-filled"
lock="$MODEL_DIR/.ascend-llm-gateway-fill.lock"
if [ -f "$mark" ]; then echo "fill-weights: already filled"; exit 0; fi
waited=0
until mkdir "$lock" 2>/dev/null; do
  if [ -f "$mark" ]; then echo "fill-weights: filled by another replica"; exit 0; fi
  if [ "$waited" -ge "${FILL_LOCK_TIMEOUT:-3600}" ]; then
    echo "fill-weights: taking over a lock held for ${waited}s"; break
  fi
  sleep 2; waited=$((waited + 2))
done
trap 'rmdir "$lock" 2>/dev/null || true' EXIT
if [ -f "$mark" ]; then exit 0; fi
"$@"
touch "$mark"
echo "fill-weights: done"
