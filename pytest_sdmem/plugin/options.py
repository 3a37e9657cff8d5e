"""The plugin's options as data: each is a command-line flag and an ini key of the same name.

Keeping the table here (not spread over ``addoption`` calls) is what lets every option be set
in ``[tool.pytest.ini_options]`` too: the command line wins, then the ini file, then the default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_sdmem.base.units import UnitError, check_number, parse_size
from pytest_sdmem.gate.settings import SettingsError
from pytest_sdmem.gate.tolerances import DEFAULT_TOLERANCE_SPEC, METRICS


@dataclass(frozen=True)
class Option:
    """One option: ``--flag`` on the command line, ``ini`` key in the config file."""

    flag: str
    help: str
    kind: str = "string"  # "bool" | "string" | "int" | "float" | "size" | "path"
    default: Any = None
    metavar: str | None = None

    def argparse_help(self) -> str:
        """The help text as argparse wants it: argparse %-formats help strings (for
        ``%(default)s``), so a literal ``%`` such as the tolerance's "5%" must be doubled or
        ``pytest --help`` fails with "unsupported format character"."""
        return self.help.replace("%", "%%")

    def convert(self, value: Any) -> Any:
        """``value`` (the command line's or the ini file's text, or the table's default) as
        this option's kind: a bool; a positive finite int or float; a size in bytes (an empty one
        is the default); a path (``~`` expanded; an empty one is unset, None); a string as
        given. None stays None
        (unset). A value that is not of its kind raises ``SettingsError`` naming the option,
        the value and what is accepted."""
        if value is None:
            return None
        if self.kind == "bool":
            return bool(value)
        if self.kind in ("int", "float"):
            return self._positive(value)
        if self.kind == "size":
            try:  # an empty size is the default, as an empty path is unset
                return parse_size(value or self.default)
            except UnitError as exc:
                raise SettingsError(f"{self.flag}: {exc}") from exc
        if self.kind == "path":
            return Path(value).expanduser() if value else None
        return value

    def _positive(self, value: Any) -> int | float:
        """``value`` converted, and checked finite and positive (``--sdmem-max-time nan`` or
        ``inf`` would otherwise be accepted here and fail every speed test later)."""
        try:
            number = int(value) if self.kind == "int" else float(value)
            check_number(number, self.flag, positive=True)
        except (TypeError, ValueError, OverflowError):
            raise SettingsError(f"{self.flag}={value!r} is not valid: expected a positive "
                                "finite number") from None
        return number

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def ini(self) -> str:
        name = self.dest
        return name if name.startswith("sdmem_") else f"sdmem_{name}"


OPTIONS: tuple[Option, ...] = (
    Option("--gpu", "run on CUDA: run @pytest.mark.gpu tests, fail if no GPU is visible", "bool"),
    Option("--sdmem-device", "device to measure: cuda, cuda:N or cpu "
           "(default: cuda:0 with --gpu, else cpu)", metavar="DEVICE"),
    Option("--sdmem-json", "write the session's results as JSON to PATH", "path",
           metavar="PATH"),
    Option("--sdmem-model", "pipeline for sd_pipe: a synthetic model (tiny, tiny-sdxl, "
           "tiny-sd3, tiny-flux, sd15, sd21, sd21-base, sdxl, sd3, flux-dev, flux-schnell; "
           "docs/models.md), or a local path / hub id of an SD 1.x/2.x, SDXL, SD 3 or Flux "
           "pipeline (default: tiny on the CPU, sd15 with --gpu)", metavar="MODEL"),
    Option("--sdmem-cache-dir", "where synthetic pipelines are saved "
           "(default: inside pytest's cache directory)", "path", metavar="DIR"),
    Option("--sdmem-steps", "default inference steps of sd_pipe (default: 2 for the tiny "
           "models, 25 for SD 1.x/2.x, the family's for SDXL, SD 3 and Flux)", "int",
           metavar="N"),
    Option("--sdmem-size", "default image height and width of sd_pipe "
           "(default: 64 for the tiny models, the family's otherwise: 512 for SD 1.5, 768 for "
           "SD 2.1, 1024 for SDXL, SD 3 and Flux)", "int", metavar="PX"),
    Option("--sdmem-max-time", "time budget in seconds of one latency or speed-up measurement",
           "float", 30.0, metavar="SECONDS"),
    Option("--sdmem-leak-threshold", "device memory a test may leave behind before it is "
           "reported as a leak", "size", "4MB", metavar="SIZE"),
    Option("--sdmem-strict-leaks", "fail tests that leave device memory behind", "bool"),
    Option("--sdmem-budgets", "TOML file of named budgets per GPU model, for "
           "max_vram(budget=KEY) and min_speedup(budget=KEY) (default: none)", "path",
           metavar="PATH"),
    Option("--sdmem-save", "write this run's results as a baseline to PATH (atomically)", "path",
           metavar="PATH"),
    Option("--sdmem-compare", "compare each measured test against the baseline at PATH and "
           "fail the tests that regressed beyond the tolerance", "path",
           metavar="PATH"),
    Option("--sdmem-tolerance", "per-metric tolerances of --sdmem-compare, e.g. "
           f"'vram=200MB,startup=50%' (METRIC one of {', '.join(METRICS)}; VALUE a percentage, "
           f"an absolute change or 'off'; default: '{DEFAULT_TOLERANCE_SPEC}')",
           metavar="SPEC"),
    Option("--sdmem-share-gpu", "let several pytest-xdist workers share a GPU (memory budgets "
           "are then refused: a shared card's peak is not the test's)", "bool"),
    Option("--sdmem-exclusive", "with --gpu: refuse to start when NVML shows another process "
           "on the device (without it, a warning names them), or when that cannot be checked",
           "bool"),
    Option("--sdmem-snapshot-dir", "record allocations during budgeted tests and, when a "
           "max_vram budget fails, dump a memory snapshot into DIR", "path",
           metavar="DIR"),
    Option("--sdmem-estimate", "estimate the CUDA peak of sd_pipe generations on the meta "
           "device, without a GPU (sd15 by default)", "bool"),
    Option("--sdmem-estimate-for", "with --sdmem-estimate: the GPU model the estimate stands "
           "for, as torch.cuda.get_device_name() names it; its kernels (compute capability: "
           "SDPA backend, cuBLAS workspace, tensor cores) are those of the card table "
           "(docs/estimate-evidence.md), its budgets and calibrated overhead in the budgets file "
           "apply (default: NVIDIA A100-SXM4-80GB's kernels, [default] budgets, no overhead)",
           metavar="GPU_NAME"),
    Option("--sdmem-no-safety-checker", "load pipelines without their safety checker (sd15 "
           "and real models include it by default, as diffusers' own thresholds were measured "
           "with it; tiny never has one)", "bool"),
)


def add_options(parser: Any) -> None:
    """Register every option with pytest's parser (flag and ini key)."""
    group = parser.getgroup("sdmem", "pytest-sdmem: memory and speed budgets")
    for opt in OPTIONS:
        if opt.kind == "bool":
            group.addoption(opt.flag, action="store_true", default=None, dest=opt.dest,
                            help=opt.argparse_help())
            parser.addini(opt.ini, opt.help, type="bool", default=False)
        else:
            group.addoption(opt.flag, action="store", default=None, dest=opt.dest,
                            metavar=opt.metavar, help=opt.argparse_help())
            parser.addini(opt.ini, opt.help, type="string", default="")


def resolve(config: Any, dest: str) -> Any:
    """The value of option ``dest``: command line, else ini, else the table's default, converted
    once, by the option's kind (see ``Option.convert``).

    A relative path from the ini file is made relative to that file's directory (as pytest does
    for its own ``paths`` ini keys), so a project's config names the same file from any working
    directory; on the command line it stays relative to the working directory.
    """
    opt = next(o for o in OPTIONS if o.dest == dest)
    value = config.getoption(dest)
    if value is not None:
        return opt.convert(value)
    ini = config.getini(opt.ini)
    if opt.kind == "bool":
        return bool(ini)
    if ini == "":
        return opt.convert(opt.default)
    if opt.kind == "path":
        base = (config.inipath.parent if config.inipath is not None
                else config.invocation_params.dir)
        return opt.convert(str(base / Path(ini).expanduser()))
    return opt.convert(ini)


def option_values(config: Any) -> dict[str, Any]:
    """Every option's value (``dest`` -> value, of its kind), as ``build_settings`` takes them.

    ``--sdmem-estimate-for`` in the ini file is a default for the runs that estimate; only the
    command-line flag without ``--sdmem-estimate`` is an error (``build_settings``).
    """
    values = {opt.dest: resolve(config, opt.dest) for opt in OPTIONS}
    if not values["sdmem_estimate"] and config.getoption("sdmem_estimate_for") is None:
        values["sdmem_estimate_for"] = None
    return values


def default_cache_dir(config: Any) -> Path:
    """Where synthetic pipelines are saved unless ``--sdmem-cache-dir`` says otherwise.

    ``sdmem/models`` inside pytest's cache directory (its ``cache_dir`` ini key, resolved as
    pytest resolves it: ``~`` and ``$VARS`` expanded, relative to the rootdir), so a project's
    cache location and ``--cache-clear`` apply to the models too. Without pytest's cache plugin
    (``-p no:cacheprovider``, often chosen so that nothing is written into the project) the
    user's cache directory instead: ``$XDG_CACHE_HOME/pytest-sdmem/models``, or
    ``~/.cache/pytest-sdmem/models`` when that variable is unset. Nothing is created here: the
    directory is made when a model is first built.
    """
    if getattr(config, "cache", None) is not None:
        cache_dir = Path(os.path.expandvars(os.path.expanduser(config.getini("cache_dir"))))
        return config.rootpath / cache_dir / "sdmem" / "models"
    user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(user_cache) / "pytest-sdmem" / "models"
