#!/bin/bash
# Entrypoint of the Ascend image: the environment an interactive shell of the
# CANN / vllm-ascend base image gets (its set_env.sh files, vllm-ascend's
# jemalloc preload), for a non-root process started without a shell, then the
# command (`ascend-llm-gateway` by default).
#
# The base images set this up in root's ~/.bashrc and their own entrypoint;
# neither runs for `ascend-llm-gateway` as uid 1000 under Kubernetes, and
# without it the toolkit, ATB and triton-ascend/bisheng are not found.

# The toolkit first (CANN < 8.5 and >= 8.5 layouts), then every other
# component's set_env.sh (nnal/atb, ascendnpu-ir, ...), each once.
sourced=" "
ascend="${ASCEND_ROOT:-/usr/local/Ascend}"  # another root only in tests
for f in "$ascend"/ascend-toolkit/set_env.sh "$ascend"/cann/set_env.sh \
         "$ascend"/nnal/*/set_env.sh "$ascend"/*/set_env.sh; do
  if [ -f "$f" ] && [ "${sourced#* $f }" = "$sourced" ]; then
    # shellcheck disable=SC1090
    . "$f" >/dev/null 2>&1 || echo "ascend-entrypoint: $f returned non-zero" >&2
    sourced="$sourced$f "
  fi
done

# vllm-ascend's images preload jemalloc (its memory behaviour under many threads).
jemalloc="/usr/lib/$(uname -m)-linux-gnu/libjemalloc.so.2"
if [ -f "$jemalloc" ]; then
  export LD_PRELOAD="$jemalloc${LD_PRELOAD:+:$LD_PRELOAD}"
fi

# CANN writes kernel_meta/ and fusion_result.json to the working directory
# unless ASCEND_WORK_PATH is set (vllm-ascend #433); both point at the
# writable cache volume (the root filesystem is read-only under the chart).
mkdir -p "${ASCEND_WORK_PATH:?}" "${ASCEND_CACHE_PATH:?}" 2>/dev/null || true
cd "${ASCEND_WORK_PATH}" 2>/dev/null || true

exec "$@"
