# shellcheck shell=bash
# Sourced by the GPU scripts (gpu_acceptance.sh, estimate_vs_gpu.sh), from the project root:
# an offline machine's environment for this checkout. Sets $python (PYTHON, default python3),
# forbids hub access, and puts the checkout and the wheels carried in .whl/ (diffusers,
# xformers, ...: see ../shared/gpu/fetch-wheels.sh) on PYTHONPATH. The wheels go into a
# temporary directory, removed on exit, so the machine's own packages stay untouched.
# Then checks the machine before anything runs (python -m pytest_sdmem.doctor --gpu, see
# docs/gpu.md): every runtime requirement of the project and of what it needs (diffusers'
# requests, Pillow, safetensors, ...), that they import, and that a GPU is visible. A machine
# that lacks any of them stops here (exit 1) with the list, before any model is built.
python=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

# The project from this checkout, whether or not it is installed.
pythonpath=$PWD
shopt -s nullglob
wheels=(.whl/*.whl)
shopt -u nullglob
if [ -n "${SDMEM_WHEELS_SITE:-}" ] && [ -d "$SDMEM_WHEELS_SITE" ]; then
  # A calling script installed them already (gpu_first_contact.sh runs several of these).
  pythonpath=$pythonpath:$SDMEM_WHEELS_SITE
elif [ "${#wheels[@]}" -gt 0 ]; then
  site=$(mktemp -d)
  trap 'rm -rf "$site"' EXIT
  echo "installing ${#wheels[@]} wheel(s) from .whl/ into $site" >&2
  "$python" -m pip install -q --no-index --no-deps --target "$site" "${wheels[@]}"
  pythonpath=$pythonpath:$site
  export SDMEM_WHEELS_SITE=$site
fi
export PYTHONPATH=$pythonpath${PYTHONPATH:+:$PYTHONPATH}

if ! "$python" -m pytest_sdmem.doctor --gpu; then
  echo "$0: this machine cannot run the GPU tier (the list is above): nothing was run" >&2
  exit 1
fi
