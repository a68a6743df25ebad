#!/usr/bin/env bash
# Builds, on a machine with pip and a registry, what an offline GPU node (x86-64, Python 3.12,
# torch 2.11 + CUDA 13, transformers, triton) lacks to run rlstack with Ray 2.60 and the chosen
# engines: LMDeploy 0.18 (PyTorch engine) and/or vLLM 0.26 (Hopper). Nothing it carries
# replaces a package the node has (torch, transformers, numpy, triton stay the node's own).
#
#   bash deploy/gpu-wheelhouse.sh [--with lmdeploy,vllm] [--out .gpu-wheelhouse] [--part-mib N]
#
# It writes OUT/part-1 ... OUT/part-N, each a folder of at most --part-mib MiB, and puts OUT in
# .git/info/exclude. A device call carries at most 64 MiB, the project's working tree included,
# so N defaults to 60 or, where the tree is larger than 3 MiB, to what the tree leaves less 1 MiB.
# Each part has an install.sh: it installs the part's wheels into /tmp/site and keeps its
# pieces of the stripped packages under /tmp, which stays between back-to-back calls. So the
# parts go over one call each, in order:
#
#   call 1, carry [".gpu-wheelhouse/part-1"]:  bash .gpu-wheelhouse/part-1/install.sh
#   call 2, carry [".gpu-wheelhouse/part-2"]:  bash .gpu-wheelhouse/part-2/install.sh
#   ...
#   call N, carry [".gpu-wheelhouse/part-N"]:  bash .gpu-wheelhouse/part-N/install.sh &&
#       export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH && <the run>
#
# part-1 empties /tmp/site; each later part checks that the parts before it were installed on
# this machine (a call that found no warm machine starts a fresh one: then start again at
# part-1). The last part joins the pieces of each archive (Ray, LMDeploy, vLLM), checks its
# sha256 and unpacks it into /tmp/site. Later calls on the same warm machine need only the export.
#
# What goes in:
# - Ray without its Java jar and the libraries an RL run does not import (rllib, tune, train,
#   data, serve, llm);
# - LMDeploy's pure-Python part (the PyTorch engine uses none of the TurboMind binaries);
# - vLLM without FlashAttention-2 (Hopper runs FA3, which stays), the MoE, MLA and FP4 kernels,
#   the Rust front end, DeepGEMM and the SM100 attention headers, and the API server's web page,
#   packed with xz and cut into pieces where one would not fit a part;
# - the wheels that these import and the node lacks (its package list: KINDS.md of the device
#   tool, read 2026-11-17). No flashinfer: runs set VLLM_USE_FLASHINFER_SAMPLER=0.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit "${1:-0}"
}

with=lmdeploy,vllm
out=.gpu-wheelhouse
part_mib=""
while [ $# -gt 0 ]; do
  case $1 in
    --with) with=${2:?--with needs a list, e.g. lmdeploy,vllm}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --part-mib) part_mib=${2:?--part-mib needs a number}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument '$1' (expected --with, --out or --part-mib)" >&2; usage 2 >&2 ;;
  esac
done
want_lmdeploy=0 want_vllm=0
for stack in ${with//,/ }; do
  case $stack in
    lmdeploy) want_lmdeploy=1 ;;
    vllm) want_vllm=1 ;;
    *) echo "--with: unknown stack '$stack' (expected lmdeploy and/or vllm)" >&2; exit 2 ;;
  esac
done
# A call carries the working tree too: a part gets what is left of 64 MiB, less 1 MiB to spare.
tree_bytes=0
if top=$(git rev-parse --show-toplevel 2>/dev/null); then
  tree_bytes=$(cd "$top" && git ls-files -z --cached --others --exclude-standard \
               | xargs -0 -r stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }') || true
fi
room_mib=$(( (64 * 1024 * 1024 - tree_bytes) / 1024 / 1024 - 1 ))
if [ -z "$part_mib" ]; then
  part_mib=$(( room_mib < 60 ? room_mib : 60 ))
elif ! [[ $part_mib =~ ^[0-9]+$ ]] || [ "$part_mib" -lt 8 ]; then
  echo "--part-mib: expected a whole number of MiB, at least 8, got '$part_mib'" >&2; exit 2
elif [ "$part_mib" -gt "$room_mib" ]; then
  echo "warning: the working tree is $((tree_bytes / 1024)) KiB, so a part of $part_mib MiB and the tree" \
       "exceed the 64 MiB of one call; --part-mib $room_mib would fit" >&2
fi
out=${out%/}
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ] && [ ! -e "$out/part-1/install.sh" ]; then
  echo "--out: '$out' exists and holds no wheelhouse; name a new folder" >&2; exit 2
fi

RAY=2.60.0
LMDEPLOY=0.18.0
VLLM=0.26.0
plat=(--platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" "$@"; }

# What the node lacks for Ray (and what the two engines share with it).
ray_wheels=(pydantic==2.14.4 pydantic_core==2.50.5 annotated-types typing-inspection
            jsonschema jsonschema-specifications referencing rpds-py)
lmdeploy_wheels=(mmengine-lite==0.10.7 addict termcolor yapf platformdirs pybase64 pyzmq shortuuid
                 partial-json-parser fire xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2)
# vLLM 0.26.0's Requires-Dist that the node lacks, and their own needs, at versions that need
# nothing newer than the node has. Left out: flashinfer-python, tilelang, nvidia-cutlass-dsl,
# quack-kernels, tokenspeed-mla, humming-kernels, fastsafetensors, torchcodec, PyNvVideoCodec and
# nvidia-cudnn-frontend (kernels for other GPUs, models or loaders, each imported only when used);
# fastapi's CLI extras. apache-tvm-ffi stays at xgrammar's 0.1.15.post2 (vLLM pins 0.1.10 for
# flashinfer and tilelang); mistral_common declares numpy<2.4 and runs on the node's numpy.
vllm_wheels=(
  # shared with LMDeploy
  pybase64==1.5.1 pyzmq==27.3.0 partial-json-parser==0.2.1.1.post7 xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2
  # engine core, hashing, metrics, logging
  blake3==1.0.11 cachetools==8.0.2 cbor2==6.3.0 msgspec==0.23.0 ijson==3.6.0 setproctitle==1.3.8
  nvtx==0.2.15 watchfiles==1.3.0 python-json-logger==4.2.0
  # structured output
  llguidance==1.7.6 outlines_core==0.2.14 lark==1.2.2 lm-format-enforcer==0.11.3 interegular==0.3.3
  # tokenizers and checkpoint formats
  mistral_common==1.13.1 pydantic-extra-types==2.11.1 pycountry==26.2.16 compressed-tensors==0.17.0 loguru==0.7.3
  # torch.compile
  depyf==0.20.0 astor==0.8.1 dill==0.4.1
  # the API server's modules, whose request types the engine imports (fastapi, openai, openai-harmony),
  # and the rest of what vLLM's server needs
  fastapi==0.136.3 starlette==1.10.0 python-multipart==0.0.34 email-validator==2.4.0 dnspython==2.9.2
  uvicorn==0.54.0 prometheus-fastapi-instrumentator==8.1.0 openai==3.57.0 jiter==0.19.0 httpx2==2.16.2
  httpcore2==2.16.2 truststore==0.10.5 sniffio==1.3.1 anthropic==2.14.0 docstring_parser==0.18.0
  openai-harmony==0.0.8 model-hosting-container-standards==0.1.16 jmespath==1.1.0 supervisor==4.3.0
  mcp==2.3.0 mcp-types==2.3.0 sse-starlette==3.7.0 pydantic-settings==2.16.3 python-dotenv==1.2.4 PyJWT==2.15.1
  # tracing
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-exporter-otlp==1.45.2 opentelemetry-exporter-otlp-proto-grpc==1.45.2
  opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-exporter-otlp-proto-common==1.45.2
  opentelemetry-exporter-otlp-common==0.66b2 opentelemetry-exporter-http-transport==0.66b2
  opentelemetry-proto==1.45.2 opentelemetry-semantic-conventions-ai==0.5.1 googleapis-common-protos==1.76.0
)

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/archives" "$tmp/items/whl"   # items: everything that goes into the parts, one file each
rm -rf "$out"
mkdir -p "$out"
if [[ $out != /* ]] && git rev-parse --git-dir >/dev/null 2>&1 \
   && ! grep -qx "/$out/" "$(git rev-parse --git-dir)/info/exclude" 2>/dev/null; then
  echo "/$out/" >> "$(git rev-parse --git-dir)/info/exclude"
fi

dl -d "$tmp/ray" "ray==$RAY"
(cd "$tmp/ray" && unzip -q ray-*.whl -x 'ray/jars/*' 'ray/dashboard/client/build/static/js/*.map' \
   'ray/rllib/*' 'ray/tune/*' 'ray/train/*' 'ray/data/*' 'ray/serve/*' 'ray/llm/*' && rm ray-*.whl \
   && tar czf "$tmp/archives/ray_slim.tgz" ray ray-*.dist-info)
specs=("${ray_wheels[@]}")

if [ $want_lmdeploy = 1 ]; then
  mkdir -p "$tmp/lmd"
  python3 -m pip download -q --no-deps -d "$tmp/lmd" "lmdeploy==$LMDEPLOY"
  (cd "$tmp/lmd" && unzip -q lmdeploy-*.whl -x 'lmdeploy/turbomind/*.so' 'lmdeploy/turbomind/lib64/*' 'lmdeploy/lib/*' \
     && rm lmdeploy-*.whl && tar czf "$tmp/archives/lmdeploy_slim.tgz" lmdeploy lmdeploy-*.dist-info)
  specs+=("${lmdeploy_wheels[@]}")
fi

if [ $want_vllm = 1 ]; then
  dl -d "$tmp/vllm" "vllm==$VLLM"
  (cd "$tmp/vllm" && unzip -q vllm-*.whl -x 'vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so' \
     'vllm/_moe_C_stable_libtorch.abi3.so' 'vllm/_flashmla_C.abi3.so' 'vllm/_flashmla_extension_C.abi3.so' \
     'vllm/_qutlass_C.abi3.so' 'vllm/vllm-rs' 'vllm/third_party/deep_gemm/*' 'vllm/third_party/fmha_sm100/*' \
     'vllm/entrypoints/serve/instrumentator/static/*' && rm vllm-*.whl \
     && tar cf - vllm vllm-*.dist-info | xz -9 -T0 > "$tmp/archives/vllm_slim.tar.xz")
  specs+=("${vllm_wheels[@]}")
fi

dl -d "$tmp/items/whl" "${specs[@]}"
dups=$(find "$tmp/items/whl" -name '*.whl' -printf '%f\n' | cut -d- -f1 | tr 'A-Z.' 'a-z_' | sort | uniq -d)
if [ -n "$dups" ]; then echo "more than one version of: $dups" >&2; exit 1; fi

# Each archive goes in NAME.00, NAME.01, ... of at most a part each; the last part joins them.
part_bytes=$((part_mib * 1024 * 1024 - 64 * 1024))   # room for install.sh and the folders
archives=""
for a in "$tmp"/archives/*; do
  size=$(stat -c %s "$a")
  pieces=$(( (size + part_bytes - 1) / part_bytes ))
  split -b $(( (size + pieces - 1) / pieces )) -d -a 2 "$a" "$tmp/items/${a##*/}."
  archives+="$(sha256sum "$a" | cut -d' ' -f1) ${a##*/} $pieces"$'\n'
done

# First fit, largest first: each item into the first part that still has room for it.
declare -a fill=()
while read -r size path; do
  [ "$size" -le "$part_bytes" ] || { echo "${path##*/} ($size bytes) does not fit a part of $part_mib MiB" >&2; exit 1; }
  k=0
  while [ $k -lt ${#fill[@]} ] && [ $((fill[k] + size)) -gt $part_bytes ]; do k=$((k + 1)); done
  fill[k]=$(( ${fill[k]:-0} + size ))
  dest=$out/part-$((k + 1))
  case $path in */whl/*) dest=$dest/whl ;; esac
  mkdir -p "$dest"
  mv "$path" "$dest/"
done < <(find "$tmp/items" -type f -printf '%s %p\n' | sort -rn)

parts=${#fill[@]}
build=$(date -u +%Y%m%dT%H%M%SZ)
for k in $(seq 1 "$parts"); do
  {
    echo '#!/usr/bin/env bash'
    echo "# Part $k of $parts of the GPU wheelhouse built $build by deploy/gpu-wheelhouse.sh (--with $with)."
    if [ "$k" = 1 ]; then echo "# Run on the GPU machine first: it empties /tmp/site."
    else echo "# Run on the GPU machine after parts 1 to $((k - 1)), on the same warm machine."; fi
    echo "part=$k parts=$parts build=$build"
    printf 'archives="%s"  # sha256, name, pieces\n' "$archives"
    cat <<'INSTALL'
set -euo pipefail
shopt -s nullglob
export PIP_ROOT_USER_ACTION=ignore
here=$(cd "$(dirname "$0")" && pwd)
site=/tmp/site stage=/tmp/gpu-wheelhouse   # stage: the pieces that wait for the last part
if [ "$part" = 1 ]; then rm -rf "$site" "$stage"; mkdir -p "$site" "$stage"; fi
for k in $(seq 1 $((part - 1))); do
  if [ "$(cat "$stage/part-$k.done" 2>/dev/null)" != "$build" ]; then
    echo "part-$k of this wheelhouse ($build) is not installed on this machine; start again at part-1" >&2
    exit 1
  fi
done
wheels=("$here"/whl/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  # Into a folder of its own first: pip --target replaces, not merges, folders such as
  # opentelemetry/ or bin/ that an earlier part installed.
  rm -rf "$stage/new"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$stage/new" "${wheels[@]}"
  cp -a "$stage/new/." "$site/"
  rm -rf "$stage/new"
fi
for p in "$here"/*.[0-9][0-9]; do cp "$p" "$stage/"; done
echo "$build" > "$stage/part-$part.done"
if [ "$part" != "$parts" ]; then
  echo "part $part of $parts installed; next: part-$((part + 1))"
  exit 0
fi
while read -r sha name pieces; do
  [ -n "$name" ] || continue
  got=("$stage/$name".[0-9][0-9])
  if [ ${#got[@]} != "$pieces" ]; then
    echo "found ${#got[@]} of the $pieces pieces of $name in $stage" >&2; exit 1
  fi
  cat "${got[@]}" > "$stage/$name"
  rm "${got[@]}"
  echo "$sha  $stage/$name" | sha256sum -c --quiet
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' "$stage/$name" "$site"
  rm "$stage/$name"
done <<< "$archives"
echo "installed into $site: export PYTHONPATH=$site:\$PWD PATH=$site/bin:\$PATH"
INSTALL
  } > "$out/part-$k/install.sh"
  chmod +x "$out/part-$k/install.sh"
done

echo "$out (--with $with), parts of at most $part_mib MiB:"
for k in $(seq 1 "$parts"); do
  d=$out/part-$k
  n=$(find "$d" -name '*.whl' | wc -l)
  others=$(find "$d" -maxdepth 1 -type f ! -name install.sh -printf '%f ')
  printf '  part-%d  %6.1f MiB  %s%s wheels\n' "$k" "$(du -sb "$d" | awk '{print $1 / 1048576}')" "$others" "$n"
done
echo "in call k, carry [\"$out/part-k\"] and run: bash $out/part-k/install.sh (k = 1 .. $parts, in order);"
echo "in the last, go on with: && export PYTHONPATH=/tmp/site:\$PWD PATH=/tmp/site/bin:\$PATH && <the run>"
