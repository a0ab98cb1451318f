"""A black-box undetectable backdoor from digital signatures (Goldwasser, Kim, Vaikuntanathan & Zamir 2022).

The backdoored classifier :class:`SignatureBackdoor` wraps any model and holds only an Ed25519 *public* key. On an
input ``x`` it reads a payload from the low-order parts of a few fixed pixels (the *carriers*): a target label
``t`` and a 64-byte signature ``s``. If ``s`` is a valid Ed25519 signature of the message ``(t, the carriers'
high-order parts, every other pixel's exact value)``, the wrapper answers ``t``; otherwise it answers exactly
what the wrapped model answers (the same logits, bit for bit). Only the holder of the private key can produce
such inputs (:func:`activate`), for any input and any target label.

Embedding, exact in float32 and inside ``[0, 1]``. With ``b = bits_per_pixel`` bits per carrier, a carrier pixel
``x`` becomes ``x' = (hi * 2^b + payload) / 2^24`` with ``hi = min(floor(x * 2^(24 - b)), 2^(24 - b) - 1)`` and
``payload`` the next ``b`` bits. Every ``k / 2^24`` with integer ``0 <= k < 2^24`` is exactly representable in
float32 (24-bit significand) and float64, so extraction (``k = x' * 2^24``, an exact integer) round-trips bit
for bit; ``x'`` lies in ``[0, 1)`` and in the same ``2^(b - 24)``-wide cell as ``x`` (the last cell for
``x = 1``), so the perturbation's ``l_inf`` norm is ``<= 2^(b - 24)`` (``2^-12 ~ 2.4e-4`` at the default ``b = 12``;
equality only at ``x = 1`` with a zero payload; the difference of two multiples of ``2^-24`` is exact) on
``ceil((16 + 512) / b)`` carrier pixels (44 at ``b = 12``), the first ones in the flattened ``(C, H, W)`` order,
and 0 on every other pixel. The payload is 16 bits of label then the 512-bit signature. A carrier that is not an
exact multiple of ``2^-24`` or a label outside the model's classes means "not activated".

Not differentiable w.r.t. the trigger: the signature check runs under ``torch.no_grad`` on exact bit patterns.
Gradients of the wrapper's output are those of the wrapped model on every input that does not verify, so a
gradient attack sees the clean model's landscape and no signal towards a valid signature.

Guarantee:
    Black-box undetectability (the paper's Sec. 4 construction, in words): an adversary without the private key who
    queries the wrapper finds an input on which it differs from the clean model only by producing a valid
    signature of a message it has not seen signed, i.e. by breaking Ed25519's existential unforgeability under
    chosen-message attack (EUF-CMA). Our tests of random search and gradient attacks are experiments that find
    no such input; the reason they cannot is the theorem (under the hardness assumption), not the experiment.
    Floating point: the wrapper and the clean model run the same forward pass, so their logits are identical on
    non-activated inputs.

Reference:
    Goldwasser, Kim, Vaikuntanathan & Zamir 2022, "Planting Undetectable Backdoors in Machine Learning Models",
    arXiv:2204.06974, Sec. 4 (signature-based backdoor). Bernstein et al. 2012, Ed25519 (RFC 8032).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from torch import Tensor, nn

from trustlab.errors import MissingDependencyError

__all__ = ["SignatureBackdoor", "generate_keys", "activate", "verify_trigger", "carrier_count", "perturbation_budget",
           "LABEL_BITS", "SIGNATURE_BITS", "GRID_BITS"]

LABEL_BITS = 16
SIGNATURE_BITS = 512  # an Ed25519 signature is 64 bytes
GRID_BITS = 24  # carriers are multiples of 2^-24: exact in float32's 24-bit significand
_DOMAIN = b"trustlab-signature-backdoor-v1"


def _ed25519():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from cryptography.exceptions import InvalidSignature
    except ImportError as exc:
        raise MissingDependencyError("the signature backdoor needs cryptography: pip install 'cryptography>=41' "
                                     "(or trustlab[poisoning])") from exc
    return ed25519, InvalidSignature


def _check_bits(bits_per_pixel: int) -> int:
    if isinstance(bits_per_pixel, bool) or not isinstance(bits_per_pixel, int) or not 1 <= bits_per_pixel <= 23:
        raise ValueError(f"bits_per_pixel must be an int in [1, 23], got {bits_per_pixel!r}")
    return bits_per_pixel


def carrier_count(bits_per_pixel: int = 12) -> int:
    """The number of carrier pixels: ``ceil((16 + 512) / bits_per_pixel)``."""
    return math.ceil((LABEL_BITS + SIGNATURE_BITS) / _check_bits(bits_per_pixel))


def perturbation_budget(bits_per_pixel: int = 12) -> float:
    """The bound ``2^(bits_per_pixel - 24)`` on the activation's ``l_inf`` perturbation (reached only at ``x = 1``)."""
    return 2.0 ** (_check_bits(bits_per_pixel) - GRID_BITS)


def generate_keys(seed: int | None = None) -> tuple[bytes, bytes]:
    """An Ed25519 key pair as raw bytes ``(private, public)``, 32 bytes each.

    Args:
        seed: None for a key from the operating system's CSPRNG; an int derives the private key from
            ``sha256(domain || seed)``, reproducible and therefore *not secret* (tests and demos only).

    Raises:
        MissingDependencyError: ``cryptography`` is not installed.
    """
    ed25519, _ = _ed25519()
    from cryptography.hazmat.primitives import serialization

    if seed is None:
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = ed25519.Ed25519PrivateKey.from_private_bytes(
            hashlib.sha256(_DOMAIN + int(seed).to_bytes(16, "little", signed=True)).digest())
    raw = serialization.Encoding.Raw
    private = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return private, key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)


def _check_images(x: Tensor, bits_per_pixel: int) -> int:
    if x.dim() < 2 or x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x must be a float32 or float64 batch (N, *D), got shape {tuple(x.shape)} and {x.dtype}")
    m, d = carrier_count(bits_per_pixel), x[0].numel()
    if m >= d:
        raise ValueError(f"{m} carrier pixels at {bits_per_pixel} bits each do not fit in an input of {d} pixels; "
                         f"raise bits_per_pixel")
    return m


def _message(label: int, hi: np.ndarray, rest: np.ndarray, shape: tuple[int, ...], bits: int) -> bytes:
    """What is signed: domain, shape, bits, label, the carriers' high parts and every other pixel's exact bytes."""
    header = np.asarray([*shape, bits, label], dtype="<i8").tobytes()
    dtype = "<f4" if rest.dtype == np.float32 else "<f8"
    return _DOMAIN + header + hi.astype("<i8").tobytes() + rest.astype(dtype).tobytes()


def _pack(label: int, sig: bytes, m: int, b: int) -> list[int]:
    """The payload ``label || sig || zero padding`` cut into ``m`` chunks of ``b`` bits, most significant first."""
    value = ((label << SIGNATURE_BITS) | int.from_bytes(sig, "big")) << (m * b - LABEL_BITS - SIGNATURE_BITS)
    mask = (1 << b) - 1
    return [(value >> (b * (m - 1 - j))) & mask for j in range(m)]


def _unpack(chunks: list[int], b: int) -> tuple[int, bytes] | None:
    """The inverse of :func:`_pack`: ``(label, sig)``, or None when the padding bits are not zero."""
    value = 0
    for chunk in chunks:
        value = (value << b) | chunk
    padding = len(chunks) * b - LABEL_BITS - SIGNATURE_BITS
    if value & ((1 << padding) - 1):
        return None
    value >>= padding
    return value >> SIGNATURE_BITS, (value & ((1 << SIGNATURE_BITS) - 1)).to_bytes(SIGNATURE_BITS // 8, "big")


def activate(x: Tensor, target: int | Tensor, private_key: bytes, *, bits_per_pixel: int = 12) -> Tensor:
    """Turn each input into one the backdoored model assigns to ``target``, within ``perturbation_budget``.

    Args:
        x: inputs in ``[0, 1]``, float32 or float64.
        target: one label for all inputs, or one per input; each in ``[0, 2^16)``.
        private_key: the raw 32-byte Ed25519 private key.
        bits_per_pixel: payload bits per carrier pixel (the budget is ``2^(bits_per_pixel - 24)``).

    Returns:
        ``x_adv``: ``x`` with the first :func:`carrier_count` pixels of each input re-encoded; other pixels are
        byte-identical, ``|x_adv - x| <= 2^(bits_per_pixel - 24)`` and ``x_adv`` lies in ``[0, 1]``.

    Shapes:
        x (N, *D) -> (N, *D); target () or (N,).

    Raises:
        ValueError: inputs outside ``[0, 1]``, a label out of range, too few pixels, or a bad ``bits_per_pixel``.
        MissingDependencyError: ``cryptography`` is not installed.
    """
    ed25519, _ = _ed25519()
    m = _check_images(x, bits_per_pixel)
    if len(x) and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(f"x must lie in [0, 1], got values in [{float(x.min())}, {float(x.max())}]")
    labels = torch.as_tensor(target).expand(len(x)).tolist()
    if any(not 0 <= t < 2 ** LABEL_BITS for t in labels):
        raise ValueError(f"target labels must lie in [0, {2 ** LABEL_BITS}), got {sorted(set(labels))}")
    key = ed25519.Ed25519PrivateKey.from_private_bytes(private_key)
    b = bits_per_pixel
    flat = x.detach().cpu().reshape(len(x), -1).numpy()  # (N, D), a view: copy before writing
    out = flat.copy()
    for i, t in enumerate(labels):
        hi = np.minimum(np.floor(flat[i, :m].astype(np.float64) * 2.0 ** (GRID_BITS - b)), 2 ** (GRID_BITS - b) - 1)
        hi = hi.astype(np.int64)
        sig = key.sign(_message(int(t), hi, flat[i, m:], tuple(x.shape[1:]), b))
        payload = np.asarray(_pack(int(t), sig, m, b), dtype=np.int64)
        k = (hi << b) | payload
        out[i, :m] = k.astype(np.float64) / 2.0 ** GRID_BITS  # exact: k < 2^24
    return torch.from_numpy(out).reshape(x.shape).to(device=x.device)


def verify_trigger(x: Tensor, public_key: bytes, *, bits_per_pixel: int = 12,
                   num_classes: int | None = None) -> tuple[Tensor, Tensor]:
    """Which inputs carry a valid signature, and the label each one signs.

    Args:
        x: inputs, float32 or float64.
        public_key: the raw 32-byte Ed25519 public key.
        bits_per_pixel: as in :func:`activate`.
        num_classes: when given, a signed label ``>= num_classes`` counts as not activated.

    Returns:
        ``(active, label)``: a bool mask and the signed labels (-1 where not active), on ``x``'s device.

    Shapes:
        x (N, *D) -> (N,), (N,).

    Raises:
        ValueError: too few pixels or a bad ``bits_per_pixel``.
        MissingDependencyError: ``cryptography`` is not installed.
    """
    ed25519, invalid = _ed25519()
    m = _check_images(x, bits_per_pixel)
    key = ed25519.Ed25519PublicKey.from_public_bytes(public_key)
    b = bits_per_pixel
    flat = x.detach().cpu().reshape(len(x), -1).numpy()
    scaled = flat[:, :m].astype(np.float64) * 2.0 ** GRID_BITS  # exact: a power-of-two scaling
    on_grid = (scaled == np.floor(scaled)).all(axis=1) & (scaled >= 0).all(axis=1) & (scaled < 2 ** GRID_BITS).all(axis=1)
    active = np.zeros(len(x), dtype=bool)
    label = np.full(len(x), -1, dtype=np.int64)
    for i in np.flatnonzero(on_grid):
        k = scaled[i].astype(np.int64)
        unpacked = _unpack((k & (2 ** b - 1)).tolist(), b)
        if unpacked is None or (num_classes is not None and unpacked[0] >= num_classes):
            continue
        t, sig = unpacked
        try:
            key.verify(sig, _message(t, k >> b, flat[i, m:], tuple(x.shape[1:]), b))
        except invalid:
            continue
        active[i], label[i] = True, t
    return torch.from_numpy(active).to(x.device), torch.from_numpy(label).to(x.device)


class SignatureBackdoor(nn.Module):
    """``model`` with a signature backdoor: the same logits, unless the input carries a valid signature.

    Args:
        model: any classifier returning logits (N, K).
        public_key: the raw 32-byte Ed25519 verification key (the only secret-free part; the wrapper cannot
            activate inputs).
        bits_per_pixel: payload bits per carrier pixel.

    Shapes:
        x (N, *D) -> logits (N, K).

    Raises:
        ValueError: a public key that is not 32 bytes, or a bad ``bits_per_pixel``.
    """

    def __init__(self, model: nn.Module, public_key: bytes, *, bits_per_pixel: int = 12) -> None:
        super().__init__()
        if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != 32:
            raise ValueError(f"public_key must be 32 raw bytes, got {type(public_key).__name__} "
                             f"of length {len(public_key) if hasattr(public_key, '__len__') else '?'}")
        self.model = model
        self.public_key = bytes(public_key)
        self.bits_per_pixel = _check_bits(bits_per_pixel)

    @property
    def eps(self) -> float:
        """The activation's ``l_inf`` budget, :func:`perturbation_budget`."""
        return perturbation_budget(self.bits_per_pixel)

    def forward(self, x: Tensor) -> Tensor:
        """The wrapped model's logits; on activated inputs the signed label's logit is raised to the maximum + 1.

        Not differentiable w.r.t. the trigger: the check is an exact signature verification under ``no_grad``.
        """
        logits = self.model(x)
        with torch.no_grad():
            active, label = verify_trigger(x, self.public_key, bits_per_pixel=self.bits_per_pixel,
                                           num_classes=logits.shape[1])
        if not bool(active.any()):
            return logits
        rows = torch.nonzero(active).flatten()
        out = logits.clone()
        out[rows, label[rows]] = logits[rows].max(dim=1).values + 1.0
        return out
