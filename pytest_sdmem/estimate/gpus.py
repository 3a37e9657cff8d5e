"""The GPU an estimate stands for: the properties PyTorch's kernel choices depend on.

Which SDPA kernel runs (flash needs sm80+, cuDNN attention is preferred on sm90), how big the
cuBLAS workspace is (32 MiB on sm90, 8.125 MiB elsewhere) and whether a convolution runs on
tensor cores (fp16 from sm70, bf16 and TF32 from sm80) all depend on the card's compute
capability, so an estimate is made for one card. ``--sdmem-estimate-for`` names it as
``torch.cuda.get_device_name()`` does; :func:`gpu_for` maps such a name to a row of
:data:`GPUS`. Without a name the estimate stands for :data:`DEFAULT_GPU`, and says so.

Memory is ``total_memory`` as the driver reports it (nvidia-smi's MiB), SM counts are the
multiprocessor counts of the shipped product; both are the vendor's data sheets', not measured
here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIB = 2**20


@dataclass(frozen=True)
class Gpu:
    """One card: its ``get_device_name()``, compute capability, memory (bytes) and SM count.

    ``known`` is False for a name the table does not have: the estimate then uses the default
    card's properties under the given name, and its report says so.
    """

    name: str
    capability: tuple[int, int]
    memory: int
    sm_count: int
    known: bool = True

    @property
    def sm(self) -> int:
        """The compute capability as one number, e.g. 80 for 8.0, 90 for 9.0."""
        return self.capability[0] * 10 + self.capability[1]

    def describe(self) -> str:
        major, minor = self.capability
        text = f"{self.name} (sm{major}{minor}, {self.memory / 2**30:.0f} GiB, {self.sm_count} SMs)"
        if not self.known:
            text += f"; not in the card table: kernels chosen as on {DEFAULT_GPU}"
        return text


def _card(name: str, capability: tuple[int, int], memory_mib: int, sm_count: int) -> Gpu:
    return Gpu(name, capability, memory_mib * MIB, sm_count)


#: Cards by ``torch.cuda.get_device_name()``, most specific name first within a family.
GPUS: tuple[Gpu, ...] = (
    _card("Tesla V100-SXM2-16GB", (7, 0), 16_160, 80),
    _card("Tesla V100-SXM2-32GB", (7, 0), 32_510, 80),
    _card("Tesla V100-PCIE-16GB", (7, 0), 16_160, 80),
    _card("Tesla V100-PCIE-32GB", (7, 0), 32_510, 80),
    _card("Tesla T4", (7, 5), 15_360, 40),
    _card("NVIDIA A10", (8, 6), 23_028, 72),
    _card("NVIDIA A100-SXM4-40GB", (8, 0), 40_960, 108),
    _card("NVIDIA A100-SXM4-80GB", (8, 0), 81_920, 108),
    _card("NVIDIA A100-PCIE-40GB", (8, 0), 40_960, 108),
    _card("NVIDIA A100 80GB PCIe", (8, 0), 81_920, 108),
    _card("NVIDIA L4", (8, 9), 23_034, 58),
    _card("NVIDIA L40S", (8, 9), 46_068, 142),
    _card("NVIDIA H100 80GB HBM3", (9, 0), 81_559, 132),
    _card("NVIDIA H100 PCIe", (9, 0), 81_559, 114),
    _card("NVIDIA H100 NVL", (9, 0), 95_830, 132),
    _card("NVIDIA H200", (9, 0), 143_771, 132),
    _card("NVIDIA H200 NVL", (9, 0), 143_771, 132),
    _card("NVIDIA GeForce RTX 3090", (8, 6), 24_576, 82),
    _card("NVIDIA GeForce RTX 4090", (8, 9), 24_564, 128),
)

#: The card of an estimate made without ``--sdmem-estimate-for``.
DEFAULT_GPU = "NVIDIA A100-SXM4-80GB"

_VENDOR_WORDS = frozenset({"nvidia", "tesla", "geforce"})


def _words(name: str) -> tuple[str, ...]:
    """A card name as lower-case words without the vendor's brand words: "NVIDIA GeForce RTX
    4090" and "RTX 4090" are the same card, "A100-SXM4-80GB" is ("a100", "sxm4", "80gb")."""
    return tuple(w for w in re.split(r"[^a-z0-9]+", name.lower()) if w and w not in _VENDOR_WORDS)


def _model(words: tuple[str, ...]) -> str:
    """The model word of a row: "a100", "h100", "t4", "4090" (after "rtx")."""
    return words[1] if words[0] == "rtx" else words[0]


def gpu_for(name: str | None) -> Gpu:
    """The card named ``name`` (``get_device_name()`` spelling, or the same words without the
    brand words, any case); :data:`DEFAULT_GPU` for None.

    A name whose words equal a row's is that row. Otherwise the row whose words all occur in
    the name, the longest such, is taken ("NVIDIA L40S vGPU" is the L40S); then the first
    row of the family the name's model word names ("H100" is the H100 80GB HBM3). A name
    matching no row keeps its name with the default card's properties (``known`` False), so
    that a card with its own budgets table can still be estimated.
    """
    if name is None:
        name = DEFAULT_GPU
    words = _words(name)
    by_words = {_words(gpu.name): gpu for gpu in GPUS}
    if words in by_words:
        return by_words[words]
    contained = [gpu for key, gpu in by_words.items() if set(key) <= set(words)]
    if contained:
        return max(contained, key=lambda gpu: len(_words(gpu.name)))
    family = [gpu for key, gpu in by_words.items() if _model(key) in words]
    if family:  # "NVIDIA H100": the family's first row (the same compute capability)
        return family[0]
    default = by_words[_words(DEFAULT_GPU)]
    return Gpu(name.strip(), default.capability, default.memory, default.sm_count, known=False)
